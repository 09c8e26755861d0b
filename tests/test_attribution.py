"""Attribution (AtP, AtP*, EAP, EAP-IG) held to the exact engine, to finite differences, and to TransformerLens."""

import math
import random

import pytest
import torch

from mechpatch import zoo
from mechpatch.attribution import AttributionError, agreement, atp, attribute, edge_attribution, verify
from mechpatch.attribution.verify import binomial_upper_bound
from mechpatch.circuit.discovery import DISCOVERY, discover
from mechpatch.circuit.components import as_edge, graph_layout
from mechpatch.circuit.edges import edge_patch
from mechpatch.errors import SiteOutOfRangeError
from mechpatch.model import load_model
from mechpatch.patching import Interpolate, Mean, Replace, Resample, Zero, run_patches, sweep
from mechpatch.patching.interventions import from_name
from mechpatch.patching.metrics import KLDivergence
from mechpatch.prompts import PromptPair
from mechpatch.sites import Attn, Embed, Head, HeadResult, Key, Mlp, Neuron, Pattern, PosEmbed, Query, Resid, Value
from mechpatch.tasks import make_task
from tests.conftest import _gpt2_hf, native_config, perturb


def _f64(name, tokenizer=None):
    if name == "gpt2":
        return load_model(_gpt2_hf(), tokenizer=tokenizer, device="cpu", dtype="float64", name="gpt2-f64")
    kw = {"attn_only": dict(attn_only=True),
          "gqa": dict(attn_only=False, d_mlp=128, n_key_value_heads=2, act_fn="gelu",
                      positional_embedding_type="rotary", normalization_type="RMS")}[name]
    model = load_model(native_config(**kw), device="cpu", dtype="float64", name=f"{name}-f64")
    perturb(model.bridge, 11)
    return model


@pytest.fixture(scope="module", params=["gpt2", "gqa", "attn_only"])
def f64(request, tokenizer):
    return _f64(request.param, tokenizer)


@pytest.fixture(scope="module")
def induction():
    model = zoo.load("induction-2l")
    (batch,) = make_task("induction", model, n=16, block=10, seed=0).batches
    return model, batch, make_task("induction", model, n=16, block=10, seed=0).metric


def _data(seed=0, n=3, seq=7):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(1, 100, (n, seq), generator=g)
    src = torch.randint(1, 100, (n, seq), generator=g)
    return base, src, torch.randint(1, 100, (n, 2), generator=g)


def _sites(model):
    s = model.spec
    sites = [Head(0, 1), Head(1, 2, pos=3), Query(1, 0), Query(0, 3, pos=[2, 5]), Key(1, s.n_kv_heads - 1, pos=2),
             Value(0, 0), Pattern(1, 3), Attn(0), Resid(0, "pre", pos=2), Resid(1, "post"), Embed(pos=1),
             (Head(0, 0), Key(1, 0, pos=4))]
    if s.has_mlp:
        sites += [Mlp(1, pos=[4, 6]), Resid(1, "mid"), Neuron(0, 5)]
    if s.has_pos_embed:
        sites.append(PosEmbed(pos=[0, 3]))
    if s.architecture == "GPT2LMHeadModel":
        sites.append(HeadResult(1, 2))
    return sites


# ----------------------------------------------------------------------------- AtP: the first-order term


def test_atp_is_the_derivative_of_exact_patching(f64):
    """Every site kind: the estimate equals the engine's metric change under Interpolate(eps), per unit eps
    (central difference), i.e. the gradient matches finite differences and the estimate is the first-order term."""
    base, src, answers = _data()
    sites = _sites(f64)
    est = atp(f64, base, sites, metric="logit_diff", source=src, answers=answers).estimates
    eps = 1e-3
    up = run_patches(f64, base, sites, metric="logit_diff", source=src, answers=answers, intervention=Interpolate(eps))
    down = run_patches(f64, base, sites, metric="logit_diff", source=src, answers=answers,
                       intervention=Interpolate(-eps, extrapolate=True))
    fd = (up.values.double() - down.values.double()) / (2 * eps)
    scale = float(fd.abs().max())
    assert scale > 0.1
    torch.testing.assert_close(est.double(), fd, atol=2e-4 * max(1.0, scale), rtol=1e-3)


def test_backends_agree(gpt2, llama):
    """The TransformerBridge's own hooks give the functional forward's gradients (GradDrop included)."""
    base, src, answers = _data(seed=2)
    for model in (gpt2, llama):
        sites = [s for s in _sites(model) if not isinstance(s, HeadResult)]
        a = atp(model, base, sites, metric="logit_diff", source=src, answers=answers, grad_drop=True,
                backend="functional")
        b = atp(model, base, sites, metric="logit_diff", source=src, answers=answers, grad_drop=True, backend="bridge")
        torch.testing.assert_close(a.estimates, b.estimates, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.dropped, b.dropped, atol=1e-4, rtol=1e-4)
        assert a.backend == "functional" and b.backend == "bridge"


def test_interventions_and_batching(gpt2):
    base, src, answers = _data(seed=3, n=4)
    sites = [Head(0, 1), Mlp(1), Resid(1, "pre", pos=2)]
    full = atp(gpt2, base, sites, metric="logit_diff", source=src, answers=answers)
    # linear in the intervention's fraction
    half = atp(gpt2, base, sites, metric="logit_diff", source=src, answers=answers, intervention=Interpolate(0.5))
    torch.testing.assert_close(half.estimates, 0.5 * full.estimates, atol=1e-6, rtol=1e-5)
    # one prompt per pass changes nothing
    one = atp(gpt2, base, sites, metric="logit_diff", source=src, answers=answers, batch_size=1)
    torch.testing.assert_close(one.estimates, full.estimates, atol=1e-6, rtol=1e-5)
    assert one.passes == 4
    # interventions that need no pair; Mean with itself as reference, Resample donors from the pair
    for iv in (Zero(), Mean(), Resample(seed=1), Mean(reference=src)):
        r = atp(gpt2, base, sites, metric="logit_diff", source=src, answers=answers, intervention=iv)
        assert r.estimates.shape == (3, 4) and torch.isfinite(r.estimates).all()
    # a patch whose source equals the base run estimates exactly zero
    same = atp(gpt2, base, sites, metric="logit_diff", source=base, answers=answers)
    assert float(same.estimates.abs().max()) == 0.0


def test_agrees_with_transformer_lens(gpt2):
    """TransformerLens 4.3's transformer_lens.tools.analysis attribution_patch (node and edge granularity, denoising:
    gradient on the corrupted run) gives the same numbers on the same inputs."""
    tap = pytest.importorskip("transformer_lens.tools.analysis.attribution_patching")
    g = torch.Generator().manual_seed(0)
    clean, corr = torch.randint(1, 100, (2, 6), generator=g), torch.randint(1, 100, (2, 6), generator=g)
    a, b = 5, 9
    answers = torch.tensor([[a, b]] * 2)

    def fn(logits):
        return logits[0, -1, a] - logits[0, -1, b]

    nodes = tap.attribution_patch(gpt2.bridge, clean, corr, fn, tap.EdgeAttributionConfig(granularity="node"))
    keys = list(nodes.node_scores)

    def site(n):
        if n.kind == "embed":
            return Embed(pos=n.position)
        if n.kind == "attn_head_out":
            return Head(n.layer, n.head, pos=n.position)
        return Mlp(n.layer, pos=n.position)

    ours = atp(gpt2, corr, [site(n) for n in keys], metric="logit_diff", source=clean,
               answers=answers).estimates.mean(1)
    theirs = torch.tensor([nodes.node_scores[n] for n in keys], dtype=torch.float32)
    assert float(theirs.abs().max()) > 0.1
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)

    edges = tap.attribution_patch(gpt2.bridge, clean, corr, fn, tap.EdgeAttributionConfig(granularity="edge"))
    sender = {"embed": "input", "attn_head_out": "L{layer}H{head}", "mlp_out": "L{layer}.mlp"}
    totals: dict = {}
    for (w, r), v in edges.edge_scores.items():  # TransformerLens scores each position's edge: sum them
        rec = ("logits" if r.kind == "logits" else f"L{r.layer}.mlp" if r.kind == "mlp_in"
               else f"L{r.layer}H{r.head}.{r.kind[0]}")
        key = (sender[w.kind].format(layer=w.layer, head=w.head), rec)
        totals[key] = totals.get(key, 0.0) + v
    eap = _by_labels(edge_attribution(gpt2, corr, metric="logit_diff", source=clean, answers=answers).edge_scores())
    assert set(totals) == set(eap)
    for e, v in eap.items():
        assert math.isclose(v, totals[e], rel_tol=1e-4, abs_tol=2e-5), (e, v, totals[e])


# ----------------------------------------------------------------------------- AtP*: query/key fix and GradDrop


def _softmax_only_model(rotary):
    """One attention-only layer without any norm: the metric (logit difference) is linear in the attention
    pattern, so the query/key fix, which recomputes the pattern exactly, must be exact."""
    from transformer_lens.config import TransformerBridgeConfig

    cfg = TransformerBridgeConfig(d_model=32, d_head=8, n_heads=4, n_layers=1, n_ctx=16, d_vocab=50, attn_only=True,
                                  seed=0, normalization_type=None,
                                  positional_embedding_type="rotary" if rotary else "standard",
                                  n_key_value_heads=2 if rotary else None)
    model = load_model(cfg, device="cpu", dtype="float64")
    perturb(model.bridge, 3)
    with torch.no_grad():  # sharp (saturating) attention, where linearising the softmax is poor
        model.bridge.blocks[0].attn.W_Q.mul_(6)
        model.bridge.blocks[0].attn.W_V.mul_(20)  # (and large effects)
    return model


@pytest.mark.parametrize("rotary", [False, True])
def test_qk_fix_is_exact_where_the_softmax_is_the_only_nonlinearity(rotary):
    model = _softmax_only_model(rotary)
    g = torch.Generator().manual_seed(0)
    base, src = torch.randint(1, 50, (3, 6), generator=g), torch.randint(1, 50, (3, 6), generator=g)
    answers = torch.randint(1, 50, (3, 2), generator=g)
    G = model.spec.n_kv_heads
    sites = ([Query(0, h) for h in range(4)] + [Key(0, k) for k in range(G)]
             + [Query(0, h, pos=p) for h in range(4) for p in range(6)]
             + [Key(0, k, pos=p) for k in range(G) for p in range(6)]
             + [(Query(0, 1, pos=3), Key(0, 0, pos=1))])
    run = run_patches(model, base, sites, metric="logit_diff", source=src, answers=answers)
    exact = run.values - run.base_values
    plain = atp(model, base, sites, metric="logit_diff", source=src, answers=answers).estimates
    fixed = atp(model, base, sites, metric="logit_diff", source=src, answers=answers, qk_fix=True).estimates
    assert float(exact.abs().max()) > 0.05
    torch.testing.assert_close(fixed, exact, atol=1e-5, rtol=1e-5)
    assert float((plain - exact).abs().max()) > 100 * float((fixed - exact).abs().max())


def test_qk_fix_improves_key_sites_on_the_induction_model(induction):
    """Keys of the induction head are the textbook saturated case: plain AtP misranks them, the fix does not."""
    model, batch, metric = induction
    ex = sweep(model, batch.pair, "k", metric=metric, by_position=True, direction="noise")
    exact = ex.mean() - float(ex.clean.mean())
    plain = agreement(attribute(model, batch.pair, "k", metric=metric, by_position=True, direction="noise",
                                estimator="atp").effects(), exact)
    fixed = agreement(attribute(model, batch.pair, "k", metric=metric, by_position=True, direction="noise",
                                estimator="atp+qk").effects(), exact)
    assert fixed.pearson > 0.9 and fixed.pearson > plain.pearson + 0.1  # measured 0.94 vs 0.69
    assert fixed.top_k_overlap > plain.top_k_overlap  # measured 0.8 vs 0.4


def test_grad_drop_definition(gpt2, attn_only):
    """GradDrop on 2-layer models: dropping layer 1 leaves a layer-0 head (attention-only model) or MLP only its
    direct path to the logits, which is EAP's score of its edge to the logits (another code path); sites of the
    last layer keep |AtP| (dropping layer 0 does not touch them, dropping their own layer is excluded)."""
    base, src, answers = _data(seed=5)
    r = atp(attn_only, base, [Head(0, h) for h in range(4)], metric="logit_diff", source=src, answers=answers,
            grad_drop=True)
    eap = _by_labels(edge_attribution(attn_only, base, metric="logit_diff", source=src, answers=answers).edge_scores())
    direct = torch.tensor([abs(eap[(f"L0H{h}", "logits")]) for h in range(4)])
    assert float(direct.max()) > 0.05
    torch.testing.assert_close(r.scores, direct, atol=1e-5, rtol=1e-4)
    assert float((r.scores - r.estimates.mean(1).abs()).abs().max()) > 1e-3  # not plain AtP: indirect paths gone

    sites = [Mlp(0), Head(1, 2), Mlp(1), Resid(1, "post")]
    r = atp(gpt2, base, sites, metric="logit_diff", source=src, answers=answers, grad_drop=True)
    eap = _by_labels(edge_attribution(gpt2, base, metric="logit_diff", source=src, answers=answers).edge_scores())
    torch.testing.assert_close(r.scores[0], torch.tensor(abs(eap[("L0.mlp", "logits")])), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(r.scores[1:], r.estimates[1:].mean(1).abs(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(r.dropped[0, 1:], r.estimates[1:].mean(1), atol=1e-6, rtol=1e-5)
    assert r.method == "atp+gd" and r.dropped.shape == (2, 4)


# ----------------------------------------------------------------------------- the verification loop


def _exact_effects(model, pair, kind, metric):
    exact = sweep(model, pair, kind, metric=metric, by_position=True, direction="noise")
    return exact, (exact.mean() - float(exact.clean.mean())).reshape(-1)


def test_verification_finds_the_true_top_site(induction):
    model, batch, metric = induction
    pair = batch.pair
    exact, eff = _exact_effects(model, pair, "k", metric)
    res = attribute(model, pair, "k", metric=metric, by_position=True, direction="noise", estimator="atp*")
    ver = verify(model, pair, res, batch_size=8, n_random=24)
    true_top = int(eff.abs().argmax())
    label, value = ver.top
    assert label == " + ".join(s.label for s in exact.sites[true_top])
    assert math.isclose(value, float(eff[true_top]), rel_tol=1e-4, abs_tol=1e-5)
    assert len(ver.verified) < eff.numel()  # it stopped before verifying everything
    assert 0 <= ver.missed_fraction_bound <= 1 and ver.n_unverified == eff.numel() - len(ver.verified)
    for i, e in zip(ver.verified + ver.sampled, ver.exact + ver.sampled_exact):  # exact values are the sweep's
        assert math.isclose(e, float(eff[i]), rel_tol=1e-4, abs_tol=1e-5)
    assert "verified" in ver.as_dict() and "unverified" in repr(ver)


def test_verification_bound_flags_a_missed_effect(induction):
    """Noising the previous-token head's output at one position changes the induction head's keys through a
    saturated softmax: AtP (and AtP*, whose fixes do not reach upstream of keys) ranks these heads low. The
    verification loop then stops without them, and its random sample says so: its bound on missed cells is >= 1."""
    model, batch, metric = induction
    exact, eff = _exact_effects(model, batch.pair, "head", metric)
    res = attribute(model, batch.pair, "head", metric=metric, by_position=True, direction="noise", estimator="atp*")
    ver = verify(model, batch.pair, res, batch_size=8, n_random=24)
    true_top = int(eff.abs().argmax())
    assert exact.sites[true_top][0].layer == 0 and true_top not in ver.verified
    assert any(abs(e) >= ver.threshold for e in ver.sampled_exact)
    assert ver.missed_count_bound >= 1 and ver.missed_fraction_bound > 0.05


def test_binomial_bound():
    assert math.isclose(binomial_upper_bound(0, 100), 1 - 0.05 ** (1 / 100), rel_tol=1e-6)
    assert binomial_upper_bound(3, 10) > 0.3 and binomial_upper_bound(3, 10, 0.99) > binomial_upper_bound(3, 10)


# ----------------------------------------------------------------------------- EAP and EAP-IG


def layout(model):
    return graph_layout(model.spec)


def _by_labels(scores):
    """Edge -> score as (sender label, receiver label) -> score, the form TransformerLens's and the tests' keys take."""
    return {(e.sender.label, e.receiver_label): v for e, v in scores.items()}


def _edge_sample(lay, k, seed, later_only=True):
    """Random edges; ``later_only`` keeps receivers with more than one sender (layer >= 1, or logits)."""
    edges = [e for e in lay.edges if not later_only or lay.receiver_layer[lay.receiver_index(e.receiver, e.input)] >= 1]
    return random.Random(seed).sample(edges, k)


def test_eap_is_the_first_order_term_of_edge_patching(f64):
    """Edge patching with the ablated outputs moved only eps of the way (source = clean + eps x (corrupted - clean)):
    the exact metric change per unit eps equals the EAP score, edge by edge."""
    base, src, answers = _data(seed=6)
    eap = edge_attribution(f64, base, metric="logit_diff", source=src, answers=answers).edge_scores()
    lay = layout(f64)
    edges = _edge_sample(lay, 16, seed=1)
    eps = 1e-3
    values = []
    for sign in (1, -1):
        run = edge_patch(f64, base, [[e] for e in edges], metric="logit_diff", source=src, answers=answers,
                         intervention=Interpolate(sign * eps, extrapolate=True))
        values.append(run.values.double().mean(1))
    fd = (values[0] - values[1]) / (2 * eps)
    est = torch.tensor([eap[e] for e in edges], dtype=torch.float64)
    assert float(fd.abs().max()) > 0.05
    torch.testing.assert_close(est, fd, atol=3e-4, rtol=1e-3)


@pytest.mark.parametrize("ig", ["inputs", "activations"])
def test_eap_ig_completeness(gqa, ig):
    """Integrated gradients are complete: a stage's scores summed over all its edges approach the exact effect of
    ablating all of them (every edge out of the embeddings; for 'activations' also every edge out of one layer's
    heads) as the path gets finer."""
    base, src, answers = _data(seed=8)
    lay = layout(gqa)
    groups = {"input": [e for e in lay.edges if e.sender.label == "input"]}
    if ig == "activations":
        groups["L0 heads"] = [e for e in lay.edges if e.sender.label.startswith("L0H")]
    exact = edge_patch(gqa, base, list(groups.values()), metric="logit_diff", source=src, answers=answers)
    change = (exact.values - exact.base_values).mean(1)
    errors = []
    for steps in (2, 32):
        s = edge_attribution(gqa, base, metric="logit_diff", source=src, answers=answers, ig=ig,
                             steps=steps).edge_scores()
        total = torch.tensor([sum(s[e] for e in es) for es in groups.values()])
        errors.append(float((total - change).abs().max()))
    assert float(change.abs().min()) > 0.1
    assert errors[1] < 0.05 * float(change.abs().max()) and errors[1] < errors[0]


def test_eap_agrees_with_exact_edges_on_the_induction_model(induction):
    model, batch, metric = induction
    lay = layout(model)
    run = edge_patch(model, batch.clean, [[e] for e in lay.edges], metric=metric, source=batch.corrupted)
    exact = run.values.mean(1) - run.base_values.mean()
    results = {}
    for ig in (None, "inputs", "activations"):
        s = edge_attribution(model, batch.clean, metric=metric, source=batch.corrupted, ig=ig, steps=5).edge_scores()
        results[ig] = agreement(torch.tensor([s[e] for e in lay.edges]), exact, k=10)
    assert results[None].pearson > 0.6  # measured 0.76
    assert results["inputs"].pearson > 0.9 and results["activations"].pearson > 0.9  # 0.97, 0.99
    assert results["inputs"].top_k_overlap >= 0.8  # 0.9


def test_eap_on_gqa_and_attention_only(gqa, attn_only):
    base, src, answers = _data(seed=9)
    for model in (gqa, attn_only):
        for ig in (None, "inputs", "activations"):
            e = edge_attribution(model, base, metric="logit_diff", source=src, answers=answers, ig=ig, steps=3,
                                 batch_size=2)
            assert e.scores.shape == layout(model).valid.shape
            assert bool((e.scores[~e.layout.valid] == 0).all()) and e.scores.abs().sum() > 0
            g = e.graph(model.spec, top_n=5)
            assert len(g.in_circuit_edges()) == 5 and g.meta["method"] == e.method
    assert "L1G1.k" in layout(gqa).receiver_labels


def test_edge_attribution_batching_and_ablations(gpt2):
    base, src, answers = _data(seed=10, n=4)
    a = edge_attribution(gpt2, base, metric="logit_diff", source=src, answers=answers, ig="inputs", steps=3)
    b = edge_attribution(gpt2, base, metric="logit_diff", source=src, answers=answers, ig="inputs", steps=3,
                         batch_size=1)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-4)
    assert b.passes > a.passes
    for ablation in ("zero", "mean"):
        e = edge_attribution(gpt2, base, metric="logit_diff", intervention=from_name(ablation), answers=answers)
        assert e.ablation == ablation and torch.isfinite(e.scores).all()


@pytest.mark.parametrize("ig, per_position", [(None, False), ("activations", True)])
def test_prompt_shards_add_up_to_the_whole_attribution(gpt2, ig, per_position):
    """PreparedAttribution, as a discovery run cuts it by prompts: one shard is edge_attribution bitwise; shards of
    other sizes add up to the same scores (float64 sums in another order); a shard is its prompts' attribution."""
    from mechpatch.attribution.edges import PreparedAttribution

    base, src, answers = _data(seed=12, n=5)
    kw = dict(metric="logit_diff", source=src, answers=answers, ig=ig, steps=2, per_position=per_position,
              batch_size=2)
    whole = edge_attribution(gpt2, base, **kw)
    p = PreparedAttribution(gpt2, base, **kw)
    one = p.result([p.prompt_sums(0, 5)], 0.0)
    assert torch.equal(one.scores, whole.scores) and one.passes == whole.passes and one.method == whole.method
    shards = p.result([p.prompt_sums(lo, hi) for lo, hi in ((0, 2), (2, 3), (3, 5))], 0.0)
    torch.testing.assert_close(shards.scores, whole.scores, atol=1e-6, rtol=1e-5)
    # prompts 3:5 alone: their own attribution, weighted by their share of the prompts
    alone = edge_attribution(gpt2, base[3:], **{**kw, "source": src[3:], "answers": answers[3:]})
    torch.testing.assert_close(p.result([p.prompt_sums(3, 5)], 0.0).scores * 5 / 2, alone.scores, atol=1e-5,
                               rtol=1e-4)
    with pytest.raises(AttributionError, match="prompt range 4:9 is not a non-empty range of the 5 prompts"):
        p.prompt_sums(4, 9)
    # discovery from scores computed elsewhere: checked against its own arguments, then not recomputed
    res = discover("eap", gpt2, base, metric="logit_diff", source=src, answers=answers, top_n=5,
                   attribution=edge_attribution(gpt2, base, metric="logit_diff", source=src, answers=answers))
    assert len(res.edges) == 5
    with pytest.raises(AttributionError, match=f"computed otherwise: method '{whole.method}' "
                                                  r"\(these arguments: 'eap-ig-inputs'\)"):
        discover("eap-ig", gpt2, base, metric="logit_diff", source=src, answers=answers, attribution=whole)


def test_discovery_registry(induction):
    model, batch, metric = induction
    assert {"acdc", "eap", "eap-ig"} <= set(DISCOVERY)
    final = {}
    for name, kw in (("eap", {}), ("eap-ig", {"steps": 3}), ("eap", {"verify": True})):
        res = discover(name, model, batch.clean, metric=metric, source=batch.corrupted, top_n=30, **kw)
        assert len(res.edges) == 30 and len(res.scores) == res.layout.n_edges
        assert as_edge("L0H2->L1H0.k") in res.edges and as_edge("L1H0->logits") in res.edges  # the induction circuit
        final[name + ("+verify" if kw.get("verify") else "")] = res.final_metric
        if kw.get("verify"):
            assert len(res.meta["exact"]) == 60 and res.evaluations == 61
        graph = res.to_graph()
        assert graph.meta["method"] == res.method and len(graph.in_circuit_edges()) == 30
    # measured: full model -1.04, no edges -4.19; 30 edges: EAP -2.12, EAP-IG -1.21, EAP verified -1.24
    assert final["eap-ig"] > res.full_metric - 0.5 and final["eap+verify"] > final["eap"] + 0.3
    # a threshold instead of a count (the runners pass ACDC's tau): every edge whose |score| reaches it
    res = discover("eap-ig", model, batch.clean, metric=metric, source=batch.corrupted, tau=0.05)
    above = {e for e, v in res.scores.items() if abs(v) >= 0.05}
    assert set(res.edges) == above and 0 < len(above) < res.layout.n_edges and res.params["tau"] == 0.05
    # KL divergence to the clean run has no gradient there: plain EAP refuses it, EAP-IG works
    with pytest.raises(AttributionError, match="EAP-IG"):
        discover("eap", model, batch.clean, metric="kl_div", source=batch.corrupted)
    res = discover("eap-ig", model, batch.clean, metric=KLDivergence(positions=(-1,)), source=batch.corrupted, top_n=5)
    assert len(res.edges) == 5


# ----------------------------------------------------------------------------- errors


def test_bad_input(gpt2, induction, unchecked):
    base, src, answers = _data()
    with pytest.raises(AttributionError, match="valid: 'auto', 'functional', 'bridge'"):
        atp(gpt2, base, [Head(0, 0)], metric="logit_diff", source=src, answers=answers, backend="gpu")
    with pytest.raises(AttributionError, match="query/key fix"):
        atp(gpt2, base, [Query(0, 0)], metric="logit_diff", source=src, answers=answers, qk_fix=True, backend="bridge")
    with pytest.raises(AttributionError, match="gradient is zero"):
        atp(gpt2, base, [Head(0, 0)], metric=KLDivergence(), source=src, clean="base")
    with pytest.raises(AttributionError, match="batch_size"):
        atp(gpt2, base, [Head(0, 0)], metric="logit_diff", source=src, answers=answers, batch_size=0)
    with pytest.raises(ValueError, match="needs source"):
        atp(gpt2, base, [Head(0, 0)], metric="logit_diff", answers=answers)
    with pytest.raises(ValueError, match="differ in shape"):  # (tensors: jaxtyping catches it first)
        atp(gpt2, ["When Mary and John went"], [Head(0, 0)], metric="logit_diff", source=["When Mary and"],
            answers=answers[:1])
    with pytest.raises(SiteOutOfRangeError, match="out of range"):
        atp(gpt2, base, [Head(5, 0)], metric="logit_diff", source=src, answers=answers)
    with pytest.raises(AttributionError, match="valid: None"):
        edge_attribution(gpt2, base, metric="logit_diff", source=src, answers=answers, ig="outputs")
    with pytest.raises(AttributionError, match="steps"):
        edge_attribution(gpt2, base, metric="logit_diff", source=src, answers=answers, ig="inputs", steps=0)
    with pytest.raises(AttributionError, match="needs source"):
        edge_attribution(gpt2, base, metric="logit_diff", answers=answers)
    with unchecked(), pytest.raises(AttributionError, match=r"one of Replace\(\), Zero\(\), Mean"):  # a name
        edge_attribution(gpt2, base, metric="logit_diff", intervention="resample", answers=answers)
    pair = PromptPair(src, base, answers)
    with pytest.raises(AttributionError, match="valid: 'atp', 'atp\\+qk', 'atp\\+gd', 'atp\\*'"):
        attribute(gpt2, pair, "head", metric="logit_diff", estimator="atp**")
    res = attribute(gpt2, pair, "head", metric="logit_diff", estimator="atp")
    with pytest.raises(AttributionError, match="batch_size"):
        verify(gpt2, pair, res, batch_size=0)
    with pytest.raises(AttributionError, match="one shape"):
        agreement(torch.zeros(3), torch.zeros(4))
    assert isinstance(res.top(3)[0][0], str) and res.estimate.values.shape == (2, 4, 3)
    _ = Replace  # the default intervention, exported for symmetry with the engine


def test_scatter_figure_and_import_graph():
    import subprocess
    import sys

    from mechpatch.attribution.plot import scatter_figure

    est, exact = torch.tensor([0.1, 2.0, -1.0, 0.0]), torch.tensor([0.2, 1.5, -1.2, 0.1])
    fig = scatter_figure({"AtP": (est, exact, list("abcd")), "EAP": (exact, exact, list("abcd"))}, k=2,
                         groups={"AtP": ["head", "head", "mlp", "mlp"]})
    assert len(fig.data) == 5 and "r=0.978" in fig.layout.annotations[0].text
    code = "import sys, mechpatch.attribution; print('plotly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # figures are a leaf: the attribution package does not import plotly


def test_per_position_eap_is_the_first_order_term_of_position_resolved_edge_patching(f64):
    """Per-position scores sum to the unresolved ones, and each equals the derivative of ablating that edge at
    that position only (central differences of position-resolved edge patching)."""
    base, src, answers = _data(seed=6)
    seq = base.shape[1]
    whole = edge_attribution(f64, base, metric="logit_diff", source=src, answers=answers)
    per = edge_attribution(f64, base, metric="logit_diff", source=src, answers=answers, per_position=True)
    assert per.scores.shape == (seq, *whole.scores.shape) and per.n_pos == seq and whole.n_pos is None
    torch.testing.assert_close(per.scores.sum(0), whole.scores, atol=1e-6, rtol=1e-5)
    scores = per.edge_scores()
    assert len(scores) == seq * layout(f64).n_edges
    rng = random.Random(2)
    edges = [e.at(p) for e in _edge_sample(layout(f64), 12, seed=3) for p in [rng.randrange(seq)]]
    eps = 1e-3
    values = [edge_patch(f64, base, [[e] for e in edges], metric="logit_diff", source=src, answers=answers,
                         intervention=Interpolate(sign * eps,
                                                  extrapolate=True)).values.double().mean(1) for sign in (1, -1)]
    fd = (values[0] - values[1]) / (2 * eps)
    est = torch.tensor([scores[e] for e in edges], dtype=torch.float64)
    assert float(fd.abs().max()) > 0.01
    torch.testing.assert_close(est, fd, atol=3e-4, rtol=1e-3)


def test_position_resolved_discovery(induction):
    """EAP per position keeps edges at positions; the result's graph is position-resolved and its final metric is
    the exact metric of that circuit (every other edge ablated at every position)."""
    from mechpatch.circuit.faithfulness import circuit_metric

    model, batch, metric = induction
    seq = batch.clean.shape[1]
    res = discover("eap", model, batch.clean, metric=metric, source=batch.corrupted, top_n=40, per_position=True)
    assert len(res.edges) == 40 and all("@" in s and "@" in r for s, r in _by_labels(dict.fromkeys(res.edges)))
    assert len(res.scores) == seq * res.layout.n_edges
    again = float(circuit_metric(model, batch.clean, [list(res.edges)], metric=metric, source=batch.corrupted)[0])
    assert res.final_metric == pytest.approx(again, abs=1e-5)
    graph = res.to_graph()
    assert graph.n_pos == seq and len(graph.in_circuit_edges()) == 40
    # the induction head's logits edges at the positions the metric reads are kept; at the others they score 0
    read = set(metric.positions)
    assert {f"L1H0@{p}" for p in read} & {s for s, r in _by_labels(dict.fromkeys(res.edges)) if r.startswith("logits")}
    assert all(v == 0 for (s, r), v in _by_labels(res.scores).items() if r.startswith("logits@") and int(r[7:]) not in read)


def test_edge_attribution_graph_refuses_a_negative_top_n(attn_only, unchecked):
    """graph(top_n=-1) used to keep every edge but the last (a slice from the end)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, attn_only.spec.d_vocab, (2, 5), generator=g)
    src = torch.randint(0, attn_only.spec.d_vocab, (2, 5), generator=g)
    att = edge_attribution(attn_only, base, metric="logit_diff", source=src, answers=torch.tensor([[1, 2], [3, 4]]))
    for bad in (-1, True, 2.0):
        with unchecked(), pytest.raises(AttributionError, match="top_n must be a non-negative int or None"):
            att.graph(attn_only.spec, top_n=bad)
    assert len(att.graph(attn_only.spec, top_n=3).in_circuit) == 3
