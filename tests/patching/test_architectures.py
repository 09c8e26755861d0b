"""The fast path on every architecture of the zoo's random-weight models (GPT-2, Llama 3, Pythia, GPT-J, Gemma 2 and 3,
Qwen 2.5 and 3, Mistral, OLMo 2): the functional forward against the bridge, the engine against the one-patch-per-
forward reference and TransformerLens's own patching functions, fused attention against the explicit softmax, low
precision against float32, and edge-level methods against their hand-rebuilt reference."""

import os
import random

import pytest
import torch

from mechpatch.circuit.components import graph_layout
from mechpatch.circuit.edges import edge_patch
from mechpatch.circuit.reference import edge_patch_reference
from mechpatch.circuit.components import CircuitError
from mechpatch.errors import UnsupportedSiteError
from mechpatch.model import BRIDGE_IGNORES_WRITES
from mechpatch.patching import Zero, sweep
from mechpatch.patching import fast
from mechpatch.patching import functional as F_
from mechpatch.sites import Resid
from mechpatch.zoo.architectures import ARCHITECTURES, random_model

from patching.test_engine import make_test_pair
from patching.test_functional import assert_forward_matches_the_bridge

os.environ.setdefault("TQDM_DISABLE", "1")
tlp = pytest.importorskip("transformer_lens.patching")  # a hard dependency: never actually skipped

TOL = dict(atol=1e-5, rtol=1e-5)
NAMES = sorted(ARCHITECTURES)
#: architectures with a norm between sublayer outputs and the residual stream (edges recompute it per receiver)
POST_NORM = ("gemma2", "gemma3", "olmo2")
_models: dict = {}


def model_of(name: str, dtype: str = "float32"):
    if (name, dtype) not in _models:
        _models[(name, dtype)] = random_model(name, seed=3, dtype=dtype)
    return _models[(name, dtype)]


@pytest.fixture(params=NAMES)
def arch(request):
    return model_of(request.param)


def _tokens(model, n=2, seq=12, seed=0):
    return torch.randint(1, model.spec.d_vocab, (n, seq), generator=torch.Generator().manual_seed(seed))


def test_every_architecture_takes_the_fast_path(arch):
    reason, _ = fast.resolve(arch)
    assert reason is None, reason


def test_logits_and_every_hook_match_the_bridge(arch):
    # 12 tokens: longer than the tiny models' sliding window of 4
    assert assert_forward_matches_the_bridge(arch, _tokens(arch)) >= 11 * arch.spec.n_layers


def test_resuming_at_any_layer_and_position_reuses_the_cache(arch):
    """Past keys/values for positions < p (beyond the sliding window too) give the same logits as a full run."""
    fm = fast.weights(arch)
    tokens = _tokens(arch)
    with torch.inference_mode():
        ref_logits, ref = arch.bridge.run_with_cache(tokens)
        _, kv = F_.forward(fm, tokens, return_kv=True)
        for layer in range(arch.spec.n_layers):
            resid = ref[f"blocks.{layer}.hook_resid_pre"]
            for p in (1, 5, 9, 11):
                out = F_.run_blocks(fm, resid[:, p:], start_layer=layer, pos_offset=p, past_kv=F_.slice_kv(kv, p))
                torch.testing.assert_close(F_.unembed(fm, out), ref_logits[:, p:], **TOL)


def test_fused_attention_equals_the_explicit_softmax(arch, monkeypatch):
    """Fused attention (no pattern read or written) against the explicit softmax: full runs and runs resumed after
    a cached prefix (the mask then is not square)."""
    fm = fast.weights(arch)
    tokens = _tokens(arch)

    def runs():
        with torch.inference_mode():
            logits, kv = F_.forward(fm, tokens, return_kv=True)
            resid = F_.embed(fm, tokens[:, 7:], 7)
            resumed = F_.unembed(fm, F_.run_blocks(fm, resid, pos_offset=7, past_kv=F_.slice_kv(kv, 7)))
        return logits, resumed

    fused = runs()
    monkeypatch.setattr(F_, "FUSED", False)
    explicit = runs()
    for a, b in zip(fused, explicit):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(fused[1], fused[0][:, 7:], **TOL)


def _kinds(model):
    kinds = ["head", "q", "k", "v", "pattern", "attn_out", "mlp_out", "resid_pre", "resid_post"]
    return kinds + ([] if model.spec.parallel else ["resid_mid"])


@pytest.mark.slow
def test_every_sweep_kind_equals_the_reference(arch):
    pair = make_test_pair(arch, seq=8)
    for kind in _kinds(arch):
        if kind in BRIDGE_IGNORES_WRITES.get(arch.spec.architecture, ()):
            continue  # no bridge reference: test_gptj_pattern_patches_are_applied_not_dropped
        for by_position in (False, True):
            ref = sweep(arch, pair, kind, metric="logit_diff", by_position=by_position, method="reference",
                        progress=False)
            got = sweep(arch, pair, kind, metric="logit_diff", by_position=by_position, method="fast", batch_size=5)
            assert got.meta["method"] == "fast"
            torch.testing.assert_close(got.values, ref.values, **TOL, msg=f"{kind} by_position={by_position}")


CASES = {  # TransformerLens function -> (our kind, by_position, permutation of TL's axes into ours)
    "get_act_patch_resid_pre": ("resid_pre", True, None),
    "get_act_patch_attn_out": ("attn_out", True, None),
    "get_act_patch_mlp_out": ("mlp_out", True, None),
    "get_act_patch_attn_head_out_all_pos": ("head", False, None),
    "get_act_patch_attn_head_out_by_pos": ("head", True, (0, 2, 1)),
    "get_act_patch_attn_head_pattern_all_pos": ("pattern", False, None),
}


def test_equal_to_transformer_lens(arch):
    pair = make_test_pair(arch)
    _, clean_cache = arch.bridge.run_with_cache(pair.clean)

    def metric(logits):
        last = logits[:, -1]
        return (last.gather(1, pair.answers[:, :1]) - last.gather(1, pair.answers[:, 1:])).mean()

    for function, (kind, by_position, perm) in CASES.items():
        if kind in BRIDGE_IGNORES_WRITES.get(arch.spec.architecture, ()):
            continue  # TransformerLens patches nothing there: test_gptj_pattern_patches_are_applied_not_dropped
        with torch.inference_mode():
            expected = getattr(tlp, function)(arch.bridge, pair.corrupted, clean_cache, metric)
        got = sweep(arch, pair, kind, metric="logit_diff", by_position=by_position, method="fast").mean()
        got = got if perm is None else got.permute(*perm)
        torch.testing.assert_close(got, expected.float(), **TOL, msg=function)


#: low precision against float32, relative to the float32 values' largest magnitude (the formats' resolution,
#: 2^-8 for bfloat16 and 2^-11 for float16, compounded over the forward). Measured on these tiny models, every method
#: (2026-12-01): at most 0.070 in bfloat16 (Gemma 3) and 0.0043 in float16 (Llama 3, Pythia).
LOW_TOL = {"bfloat16": 0.1, "float16": 0.01}


@pytest.mark.parametrize("dtype", sorted(LOW_TOL))
def test_low_precision_sweeps_stay_near_float32(arch, dtype):
    name = next(n for n, a in ARCHITECTURES.items() if a.model == arch.spec.architecture and model_of(n) is arch)
    low = model_of(name, dtype)
    assert fast.resolve(low)[0] is None
    pair32, pair_low = make_test_pair(arch), make_test_pair(low)
    ref = sweep(arch, pair32, "head", metric="logit_diff", method="fast").values
    got = sweep(low, pair_low, "head", metric="logit_diff", method="fast")
    hooks = sweep(low, pair_low, "head", metric="logit_diff", method="hooks").values
    assert got.values.dtype == torch.float32  # metrics are accumulated in float32
    scale = float(ref.abs().max())
    assert float((got.values - ref).abs().max()) <= LOW_TOL[dtype] * scale
    assert float((got.values - hooks).abs().max()) <= LOW_TOL[dtype] * scale


def _edge_sets(lay, k, seed, n_pos=None):
    """The empty set, ``k`` random sets of 1-6 edges, and (with ``n_pos``) ``k`` sets of position-resolved edges."""
    rng = random.Random(seed)
    edges = list(lay.edges)
    sets = [[]] + [rng.sample(edges, rng.randint(1, 6)) for _ in range(k)]
    if n_pos is not None:
        sets += [[e.at(rng.randrange(n_pos)) for e in rng.sample(edges, rng.randint(1, 6))] for _ in range(k)]
    return sets


@pytest.mark.parametrize("name", NAMES)
def test_edge_patching_equals_the_hand_rebuilt_reference(name):
    model = model_of(name)
    pair = make_test_pair(model, seq=6)
    lay = graph_layout(model.spec)
    # plus every head of layer 0 into one receiver together (behind a post-norm: one renormalised sum of ablated heads)
    sets = _edge_sets(lay, 8, seed=1, n_pos=6) + [[e for e in lay.edges if e.sender.label.startswith("L0H")
                                                   and e.receiver_label == "logits"]]
    for iv in (None, Zero()):
        kw = dict(source=pair.corrupted) if iv is None else dict(intervention=iv)
        run = edge_patch(model, pair.clean, sets, metric="logit_diff", answers=pair.answers, **kw)
        ref = edge_patch_reference(model, pair.clean, sets, metric="logit_diff", answers=pair.answers, **kw)
        torch.testing.assert_close(run.values, ref, **TOL)
        assert (run.values[1:] - run.base_values).abs().amax() > 1e-3


@pytest.mark.parametrize("name", POST_NORM)
def test_post_norm_edges_agree_with_the_bridge(name):
    """Behind post-norms, edges are checked against the bridge itself (hooks, not mechpatch's forward): every edge out
    of a head (or of two heads of one layer) ablated = that head's output patched; every edge ablated = the corrupted
    run."""
    from mechpatch.patching import run_patches
    from mechpatch.sites import Head

    model = model_of(name)
    pair = make_test_pair(model, seq=6)
    kw = dict(metric="logit_diff", source=pair.corrupted, answers=pair.answers)
    lay = graph_layout(model.spec)
    out_of = lambda *names: [e for e in lay.edges if e.sender.label in names]  # noqa: E731
    run = edge_patch(model, pair.clean, [out_of("L0H1"), out_of("L1H0", "L1H2"), list(lay.edges)], **kw)
    node = run_patches(model, pair.clean, [[Head(0, 1)], [Head(1, 0), Head(1, 2)]], method="hooks", **kw)
    torch.testing.assert_close(run.values[:2], node.values, **TOL)
    corrupted = run_patches(model, pair.clean, [[Head(0, 0)]], method="hooks", **kw).source_values
    torch.testing.assert_close(run.values[2], corrupted, **TOL)
    assert (node.values - node.base_values).abs().amax() > 1e-3


@pytest.mark.parametrize("name", POST_NORM)
def test_eap_is_the_first_order_term_of_edge_patching_behind_post_norms(name):
    """float64: EAP with the source moved eps of the way, per unit eps, equals edge patching's finite difference, edge
    by edge (the input change goes through the post-attention norm)."""
    from mechpatch.attribution import edge_attribution
    from mechpatch.patching import Interpolate

    model = random_model(name, seed=3, dtype="float64")
    pair = make_test_pair(model, seq=6)
    kw = dict(metric="logit_diff", source=pair.corrupted, answers=pair.answers)
    edges = random.Random(0).sample(list(graph_layout(model.spec).edges), 16)
    eps = 1e-3
    eap = edge_attribution(model, pair.clean, intervention=Interpolate(eps), **kw).edge_scores()
    values = [edge_patch(model, pair.clean, [[e] for e in edges], intervention=Interpolate(sign * eps, extrapolate=True),
                         **kw).values.double().mean(1) for sign in (1, -1)]
    fd = (values[0] - values[1]) / (2 * eps)
    est = torch.tensor([eap[e] for e in edges], dtype=torch.float64) / eps
    assert float(fd.abs().max()) > 0.01
    torch.testing.assert_close(est, fd, atol=5e-4, rtol=1e-3)


@pytest.mark.parametrize("name", ["pythia", "gptj"])
def test_parallel_blocks_have_no_resid_mid_and_no_head_to_own_mlp_edge(name):
    model = model_of(name)
    assert model.spec.parallel
    with pytest.raises(UnsupportedSiteError, match="parallel"):
        model.hook_point(Resid(0, "mid"))
    lay = graph_layout(model.spec)
    assert "L0H1->L0.mlp" not in {e.label for e in lay.edges}
    assert "L0H1->L1.mlp" in {e.label for e in lay.edges}
    with pytest.raises(CircuitError, match="parallel"):
        lay.locate("L0H1->L0.mlp")


def test_gptj_pattern_patches_are_applied_not_dropped():
    """TransformerLens's GPT-J bridge drops writes to hook_pattern (its patching function returns the unpatched value
    for every head); mechpatch's hook-based methods refuse such sites and the fast path applies them, equal to one
    functional forward per patch."""
    model = model_of("gptj")
    pair = make_test_pair(model)
    _, clean_cache = model.bridge.run_with_cache(pair.clean)

    def metric(logits):
        last = logits[:, -1]
        return (last.gather(1, pair.answers[:, :1]) - last.gather(1, pair.answers[:, 1:])).mean()

    with torch.inference_mode():
        tl = tlp.get_act_patch_attn_head_pattern_all_pos(model.bridge, pair.corrupted, clean_cache, metric)
    got = sweep(model, pair, "pattern", metric="logit_diff", method="fast")
    assert torch.allclose(tl, tl.flatten()[0]) and float((got.mean() - tl).abs().max()) > 1e-3
    with pytest.raises(UnsupportedSiteError, match="ignores writes"):
        sweep(model, pair, "pattern", metric="logit_diff", method="hooks")
    fm = fast.weights(model)
    cache: dict = {}
    with torch.inference_mode():
        F_.forward(fm, pair.clean, cache=cache)
        for layer in range(model.spec.n_layers):
            for head in range(model.spec.n_heads):
                name = f"blocks.{layer}.attn.hook_pattern"

                def patch(t, head=head, name=name):
                    t = t.clone()
                    t[:, head] = cache[name][:, head]
                    return t

                logits = F_.forward(fm, pair.corrupted, hooks={name: patch})[:, -1]
                want = (logits.gather(1, pair.answers[:, :1]) - logits.gather(1, pair.answers[:, 1:]))[:, 0]
                torch.testing.assert_close(got.values[layer, head], want, **TOL)


def test_eap_is_the_first_order_term_of_edge_patching_in_a_parallel_block():
    """On Pythia (float64): edge patching moved eps of the way to the source, per unit eps, equals EAP's score edge by
    edge, including edges into a parallel block's MLP (which reads the residual its own heads read)."""
    from mechpatch.attribution import edge_attribution
    from mechpatch.patching import Interpolate

    model = random_model("pythia", seed=3, dtype="float64")
    assert fast.resolve(model)[0] is None
    pair = make_test_pair(model, seq=6)
    eap = edge_attribution(model, pair.clean, metric="logit_diff", source=pair.corrupted,
                           answers=pair.answers).edge_scores()
    lay = graph_layout(model.spec)
    into_mlp = [e for e in lay.edges if e.receiver_label == "L1.mlp"]
    edges = random.Random(0).sample([e for e in lay.edges if e not in into_mlp], 10) + into_mlp[:6]
    eps = 1e-3
    values = []
    for sign in (1, -1):
        run = edge_patch(model, pair.clean, [[e] for e in edges], metric="logit_diff", source=pair.corrupted,
                         answers=pair.answers, intervention=Interpolate(sign * eps, extrapolate=True))
        values.append(run.values.double().mean(1))
    fd = (values[0] - values[1]) / (2 * eps)
    est = torch.tensor([eap[e] for e in edges], dtype=torch.float64)
    assert float(fd.abs().max()) > 0.01
    torch.testing.assert_close(est, fd, atol=3e-4, rtol=1e-3)


def test_atp_qk_fix_rebuilds_each_layers_pattern_from_its_queries_and_keys(arch):
    """AtP*'s query/key fix recomputes patterns from hook_q/hook_k: through q/k norms, per-layer RoPE, sliding windows
    and soft-capping it must give the forward's own pattern."""
    from mechpatch.attribution.nodes import _pattern

    fm = fast.weights(arch)
    cache: dict = {}
    with torch.inference_mode():
        F_.forward(fm, _tokens(arch), cache=cache)
        for layer in range(arch.spec.n_layers):
            pre = f"blocks.{layer}.attn."
            got = _pattern(fm, layer, cache[pre + "hook_q"], cache[pre + "hook_k"])
            torch.testing.assert_close(got, cache[pre + "hook_pattern"], **TOL)


def _methods(model):
    """Each fast method once (tiny arguments): its numbers as float32."""
    from mechpatch.attribution import atp, edge_attribution
    from mechpatch.interactions.run import evaluate_masks
    from mechpatch.patching import run_patches
    from mechpatch.patching.paths import path_patch
    from mechpatch.sites import Head, Mlp

    pair = make_test_pair(model, seq=6)
    kw = dict(metric="logit_diff", source=pair.corrupted, answers=pair.answers)
    heads = [Head(0, 0), Head(1, 1), Head(1, 2)]
    out = {
        "run_patches": run_patches(model, pair.clean, heads, method="fast", **kw).values,
        "path_patch": path_patch(model, pair.clean, [Mlp(0)], receivers="logits", method="fast", **kw).values,
        "atp_star": atp(model, pair.clean, heads, qk_fix=True, **kw).estimates,
        "interaction_masks": evaluate_masks(model, pair.clean, heads[:2], masks=torch.tensor([[True, False], [True, True]]),
                                            method="fast", **kw).values,
    }
    out["edge_patch"] = edge_patch(model, pair.clean, [[("L0H0", "L1H1.q")], [("input", "logits")]], **kw).values
    out["edge_attribution"] = edge_attribution(model, pair.clean, **kw).scores
    return {k: v.float() for k, v in out.items()}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", sorted(LOW_TOL))
def test_every_method_runs_in_low_precision_near_float32(name, dtype):
    ref, got = _methods(model_of(name)), _methods(model_of(name, dtype))
    assert ref.keys() == got.keys()
    for method, values in ref.items():
        scale = float(values.abs().max())
        err = float((got[method] - values).abs().max())
        assert err <= LOW_TOL[dtype] * scale, f"{method}: {err:.3g} vs scale {scale:.3g}"


def test_path_patching_fast_equals_hooks_and_the_literal_reference(arch):
    from mechpatch.patching.paths import path_patch, path_patch_reference
    from mechpatch.sites import Head, Key, Mlp, Query

    pair = make_test_pair(arch, seq=6)
    kw = dict(metric="logit_diff", source=pair.corrupted, answers=pair.answers)
    # heads on post-norm models too (Gemma, OLMo 2): the norm is recomputed (see test_paths_postnorm.py)
    senders = [[Head(0, 0)], [Head(0, 3), Mlp(0)], [Mlp(1)], [Mlp(0), Mlp(1)]]
    for receivers in ("logits", [Query(1, 1)], [Key(1, 0), Query(1, 2)]):
        fast_run = path_patch(arch, pair.clean, senders, receivers=receivers, method="fast", **kw)
        hooks_run = path_patch(arch, pair.clean, senders, receivers=receivers, method="hooks", **kw)
        literal = path_patch_reference(arch, pair.clean, senders, receivers=receivers, **kw)
        torch.testing.assert_close(fast_run.values, hooks_run.values, **TOL, msg=str(receivers))
        torch.testing.assert_close(fast_run.values, literal, **TOL, msg=str(receivers))


def test_layers_with_different_windows_are_each_masked_by_their_own():
    """Qwen 2.5 with sliding-window attention on its second layer only: every method masks each layer by its own
    window (the first run of this test caught the per-receiver forward using layer 0's)."""
    import transformers

    from mechpatch.model import load_model
    from mechpatch.zoo.architectures import hf_config

    cfg = hf_config("qwen2")
    cfg.use_sliding_window, cfg.sliding_window, cfg.layer_types = True, 3, ["full_attention", "sliding_attention"]
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    model = load_model(hf, device="cpu", name="qwen2-mixed-window")
    fm = fast.weights(model)
    assert [lw.window for lw in fm.layers] == [None, 3]
    pair = make_test_pair(model, seq=8)
    sets = _edge_sets(graph_layout(model.spec), 6, seed=2)
    kw = dict(metric="logit_diff", source=pair.corrupted, answers=pair.answers)
    run = edge_patch(model, pair.clean, sets, **kw)
    torch.testing.assert_close(run.values, edge_patch_reference(model, pair.clean, sets, **kw), **TOL)
    ref = sweep(model, pair, "head", metric="logit_diff", by_position=True, method="reference", progress=False)
    got = sweep(model, pair, "head", metric="logit_diff", by_position=True, method="fast")
    torch.testing.assert_close(got.values, ref.values, **TOL)
