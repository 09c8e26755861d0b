"""One argument convention for every entry point that runs the model, and one intervention vocabulary.

``f(model, prompts, what, *, metric, source=None, intervention=Replace(), ...)``: the metric is a required keyword
everywhere, ``source`` and ``intervention`` are keywords, and interventions are the objects of
:mod:`mechpatch.patching.interventions` in node and edge patching alike (names only at the config edge).
"""

import ast
import inspect
from pathlib import Path

import pytest
import torch

import mechpatch.circuit.discovery as discovery_module
import mechpatch.circuit.eap as eap_module
import mechpatch.circuit.edges as edges_module
import mechpatch.circuit.faithfulness as faithfulness_module
from mechpatch.attribution import AttributionError, atp, atp_star, attribute, edge_attribution
from mechpatch.circuit import acdc, discover, edge_patch, faithfulness_curve
from mechpatch.circuit.components import graph_layout
from mechpatch.circuit.eap import eap, eap_ig
from mechpatch.circuit.edges import EdgeError, EdgeRunner, make_runner
from mechpatch.circuit.faithfulness import circuit_metric
from mechpatch.circuit.reference import edge_patch_reference
from mechpatch.errors import InvalidArgumentError
from mechpatch.interactions import evaluate_masks, exhaustive_interactions, find_interactions
from mechpatch.interactions.tokens import token_interactions
from mechpatch.patching import Interpolate, Mean, Replace, Resample, Zero, fast, run_patches, sweep
from mechpatch.probes import probe_effects
from mechpatch.patching.interventions import BY_NAME, describe, from_name
from mechpatch.patching.metrics import LogitDiff
from mechpatch.patching.paths import path_patch, path_patch_reference
from mechpatch.prompts import PromptPair
from mechpatch.sites import Head
from tests.conftest import edge_pair as _pair

#: every entry point that runs the model: its positional parameters and its default intervention (None: it takes no
#: ``intervention``, or passes it on through ``**kwargs``)
ENTRY_POINTS = [
    (run_patches, ("model", "base", "variants"), Replace()),
    (sweep, ("model", "pair", "grid"), Replace()),
    (path_patch, ("model", "base", "senders"), None),
    (path_patch_reference, ("model", "base", "senders"), None),
    (atp, ("model", "base", "variants"), Replace()),
    (atp_star, ("model", "base", "variants"), None),
    (attribute, ("model", "pair", "grid"), Replace()),
    (edge_attribution, ("model", "base"), Replace()),
    (edge_patch, ("model", "base", "edge_sets"), Replace()),
    (make_runner, ("model", "base"), Replace()),
    (edge_patch_reference, ("model", "base", "edge_sets"), Replace()),
    (acdc, ("model", "base"), Replace()),
    (discover, ("name", "model", "base"), None),
    (eap, ("model", "base"), Replace()),
    (eap_ig, ("model", "base"), Replace()),
    (faithfulness_curve, ("model", "base", "scores"), Replace()),
    (circuit_metric, ("model", "base", "circuits"), Replace()),
    (evaluate_masks, ("model", "base", "components"), Zero()),
    (find_interactions, ("model", "base", "components"), Zero()),
    (exhaustive_interactions, ("model", "base", "components"), Zero()),
    (probe_effects, ("model", "base", "sweep"), Zero()),
    # the ablated tokens' baseline has no default: filler=, source= or intervention= (refused when none is given)
    (token_interactions, ("model", "prompt", "positions"), None),
]
#: public functions with a ``metric`` parameter that do not run the model on prompts
#: run_chunk: the fast engine's inner loop; mask_chunk: one chunk of interaction masks, an executor's unit of work;
#: bind_clean: binds a metric to the clean run's logits (the engine and AtP share it; it runs nothing);
#: bind_prompts: binds a metric to the prompts' answers and tokens, checked (every entry point's; it runs nothing)
#: the data-interaction functions retrain models on groups of data: ``metric`` names the trainer's measurement, and
#: their own convention (``trainer, groups[, masks | terms], *, metric``) is tested in tests/interactions/test_data.py
NOT_ENTRY_POINTS = {"as_metric", "readout_positions", "run_chunk", "mask_chunk", "bind_clean", "bind_prompts",
                    "data_interactions", "exhaustive_data_interactions", "retrain_masks", "retrained_effects"}
KW = inspect.Parameter.KEYWORD_ONLY
EMPTY = inspect.Parameter.empty


@pytest.mark.parametrize("fn, positional, intervention", ENTRY_POINTS, ids=[f.__name__ for f, _, _ in ENTRY_POINTS])
def test_entry_point_signature(fn, positional, intervention):
    """``model`` first (after the algorithm's name for ``discover``), the prompts and what is patched positional, a
    keyword-only ``metric`` without default, and keyword-only ``source`` / ``intervention``. The default
    intervention is ``Replace()`` (the other run of the pair), except in the interaction searches: they ablate
    components of one run and need no pair, so they keep ``Zero()``."""
    params = inspect.signature(fn).parameters
    assert tuple(n for n, p in params.items() if p.kind == p.POSITIONAL_OR_KEYWORD) == positional
    assert positional[0] == "model" or (fn is discover and positional[1] == "model")
    assert params["metric"].kind == KW and params["metric"].default is EMPTY
    assert not {"ablation", "alpha", "runner"} & set(params)  # the old spellings are gone
    if "source" in params:
        assert params["source"].kind == KW
        assert params["source"].default is (EMPTY if fn in (path_patch, path_patch_reference) else None)
    if intervention is not None:
        assert params["intervention"].kind == KW and params["intervention"].default == intervention
    if fn in (path_patch, path_patch_reference):
        assert params["receivers"].kind == KW and params["receivers"].default is EMPTY
    if fn in (edge_patch, circuit_metric):
        assert params["prepared"].kind == KW and params["prepared"].default is None


def test_inventory_is_complete():
    """Every public function of the package with a ``metric`` parameter is in the inventory above (or is known not to
    run the model), so a new entry point cannot slip past the convention."""
    listed = {fn.__name__ for fn, _, _ in ENTRY_POINTS}
    root = Path(__file__).resolve().parents[1] / "mechpatch"
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                a = node.args
                if "metric" in [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]:
                    found.add(node.name)
    assert found - NOT_ENTRY_POINTS == listed


# ----------------------------------------------------------------------------- interventions at the edge level


def _sets(model):
    lay = graph_layout(model.spec)
    edges = lay.edges
    return [[], [edges[3]], edges[5:40:3], [e for e in edges if e.receiver_label == "logits"]]


@pytest.mark.parametrize("intervention", [Replace(), Zero(), Mean(), Interpolate(0.5), Resample(seed=1)],
                         ids=describe)
def test_edge_interventions_equal_the_reference(gpt2, intervention):
    """Each intervention object means the same in the batched edge patching as in the slow oracle (which writes each
    kind out by hand): Replace() the sender's output on source, Zero(), Mean() over the base prompts, Interpolate(a)
    a of the way to the source value, Resample() a donor prompt's source output."""
    base, src, answers = _pair()
    sets, metric = _sets(gpt2), LogitDiff(answers=answers)
    run = edge_patch(gpt2, base, sets, metric=metric, source=src, intervention=intervention, batch_size=2)
    ref = edge_patch_reference(gpt2, base, sets, metric=metric, source=src, intervention=intervention)
    torch.testing.assert_close(run.values, ref, atol=1e-5, rtol=1e-5)
    assert (run.values[1:] - run.base_values).abs().amax() > 1e-3  # the edges do something


def test_old_ablations_are_interventions(gpt2):
    """The three old ``ablation=`` strings are Replace(), Zero(), Mean(): the names results and ACDC checkpoints
    record are unchanged; Interpolate(1.0) is Replace() exactly (no partial step)."""
    assert [describe(from_name(n)) for n in ("corrupted", "zero", "mean")] == ["corrupted", "zero", "mean"]
    base, src, answers = _pair(seed=5)
    sets, metric = _sets(gpt2), LogitDiff(answers=answers)
    full = edge_patch(gpt2, base, sets, metric=metric, source=src)
    assert torch.equal(edge_patch(gpt2, base, sets, metric=metric, source=src, intervention=Interpolate(1.0)).values,
                       full.values)


def test_mean_over_reference_prompts(gpt2):
    """Mean(reference=tokens): every sender's ablated output is the mean of its outputs on an unablated run of the
    reference prompts (computed here from another runner's base run), the same in the oracle; over a single
    reference prompt it is Replace() with that prompt as every prompt's source."""
    base, src, answers = _pair(seed=7)
    g = torch.Generator().manual_seed(8)
    reference = torch.randint(1, 100, (4, base.shape[1]), generator=g)
    sets, metric = _sets(gpt2), LogitDiff(answers=answers)
    iv = Mean(reference=reference)
    prepared = make_runner(gpt2, base, metric=metric, intervention=iv)
    on_reference = make_runner(gpt2, reference, metric="loss", intervention=Zero())
    for ablated, outputs in zip(prepared.src_out, on_reference.base_out):
        torch.testing.assert_close(ablated, outputs.mean(0, keepdim=True).expand_as(ablated))
    run = edge_patch(gpt2, base, sets, metric=metric, prepared=prepared)
    ref = edge_patch_reference(gpt2, base, sets, metric=metric, intervention=iv)
    torch.testing.assert_close(run.values, ref, atol=1e-5, rtol=1e-5)
    one = edge_patch(gpt2, base, sets, metric=metric, intervention=Mean(reference=reference[:1]))
    swapped = edge_patch(gpt2, base, sets, metric=metric, source=reference[:1].expand_as(base))
    torch.testing.assert_close(one.values, swapped.values, atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception, match="positions must align"):
        edge_patch(gpt2, base, sets, metric=metric, intervention=Mean(reference=reference[:, :4]))


def test_prepared_runner_is_reused(gpt2, unchecked):
    """make_runner's EdgeRunner (public: edge_patch's and circuit_metric's ``prepared=``) gives what a fresh run gives,
    and a prepared run is refused where it is not an EdgeRunner."""
    base, src, answers = _pair(seed=9)
    sets, metric = _sets(gpt2), LogitDiff(answers=answers)
    prepared = make_runner(gpt2, base, metric=metric, source=src, intervention=Zero())
    assert isinstance(prepared, EdgeRunner) and prepared.intervention == Zero()
    again = edge_patch(gpt2, base, sets, metric=metric, prepared=prepared)
    fresh = edge_patch(gpt2, base, sets, metric=metric, intervention=Zero())
    torch.testing.assert_close(again.values, fresh.values)
    kept = circuit_metric(gpt2, base, [sets[2]], metric=metric, prepared=prepared)
    torch.testing.assert_close(kept, circuit_metric(gpt2, base, [sets[2]], metric=metric, intervention=Zero()))
    with unchecked(), pytest.raises(EdgeError, match="EdgeRunner"):
        edge_patch(gpt2, base, sets, metric=metric, prepared=object())


# ----------------------------------------------------------------------------- refusals


def _fail(*args, **kwargs):
    raise AssertionError("a forward ran before the intervention was checked")


def test_string_intervention_is_refused_before_any_forward(gpt2, attn_only, monkeypatch, unchecked):
    """A name where an intervention object belongs (the old ``ablation="zero"``) is refused with the function's own
    typed error, naming the valid objects (and from_name for config files), before anything runs."""
    for module in (edges_module, discovery_module, eap_module, faithfulness_module):
        monkeypatch.setattr(module, "make_runner", _fail)
    monkeypatch.setattr(fast, "resolve", _fail)  # every method's first look at the model (fast path or hooks)
    monkeypatch.setattr(fast, "weights", _fail)
    base, src, answers = _pair()
    pair = PromptPair(src, base, answers)
    edge = graph_layout(gpt2.spec).edges[0]
    calls = [
        (EdgeError, lambda iv: edge_patch(gpt2, base, [[edge]], metric="kl_div", source=src, intervention=iv)),
        (EdgeError, lambda iv: make_runner(gpt2, base, metric="kl_div", source=src, intervention=iv)),
        (EdgeError, lambda iv: edge_patch_reference(gpt2, base, [[edge]], metric="kl_div", intervention=iv)),
        (EdgeError, lambda iv: acdc(gpt2, base, metric="kl_div", source=src, intervention=iv)),
        (EdgeError, lambda iv: discover("acdc", gpt2, base, metric="kl_div", source=src, intervention=iv)),
        (EdgeError, lambda iv: faithfulness_curve(gpt2, base, {edge: 1.0}, metric="kl_div", intervention=iv)),
        (EdgeError, lambda iv: circuit_metric(gpt2, base, [[edge]], metric="kl_div", intervention=iv)),
        (AttributionError, lambda iv: edge_attribution(gpt2, base, metric="logit_diff", answers=answers,
                                                       intervention=iv)),
        (AttributionError, lambda iv: eap(gpt2, base, metric="logit_diff", answers=answers, intervention=iv)),
        (AttributionError, lambda iv: eap_ig(gpt2, base, metric="logit_diff", answers=answers, intervention=iv)),
        (AttributionError, lambda iv: atp(gpt2, base, [Head(0, 0)], metric="logit_diff", source=src,
                                          answers=answers, intervention=iv)),
        (AttributionError, lambda iv: attribute(gpt2, pair, "head", metric="logit_diff", intervention=iv)),
        (InvalidArgumentError, lambda iv: run_patches(gpt2, base, [Head(0, 0)], metric="loss", intervention=iv)),
        (InvalidArgumentError, lambda iv: sweep(gpt2, pair, "head", metric="logit_diff", intervention=iv)),
        (InvalidArgumentError, lambda iv: evaluate_masks(attn_only, base, [Head(0, 0)], masks=torch.ones(1, 1).bool(),
                                                         metric="loss", intervention=iv)),
        (InvalidArgumentError, lambda iv: find_interactions(attn_only, base, [Head(0, 0), Head(0, 1)], metric="loss",
                                                            n_masks=10, intervention=iv)),
        (InvalidArgumentError, lambda iv: exhaustive_interactions(attn_only, base, [Head(0, 0), Head(0, 1)],
                                                                  metric="loss", intervention=iv)),
    ]
    with unchecked():  # as a user calls them: the package's own checks, not the test suite's type checker
        for error, call in calls:
            with pytest.raises(error, match=r"one of Replace\(\), Zero\(\), Mean.*from_name\('zero'\) is Zero\(\)"):
                call("zero")
            with pytest.raises(error, match=r"one of Replace\(\), Zero\(\)"):
                call(Zero)  # the class, not an object


def test_needs_source(gpt2):
    """Replace() and Interpolate() read the source run: without one, a typed error says so; Zero() needs none."""
    base, _, answers = _pair()
    for iv in (Replace(), Interpolate(0.5), Resample()):
        with pytest.raises(EdgeError, match="needs source"):
            edge_patch(gpt2, base, [[]], metric=LogitDiff(answers=answers), intervention=iv)
        with pytest.raises(AttributionError, match="needs source"):
            edge_attribution(gpt2, base, metric=LogitDiff(answers=answers), intervention=iv)
    edge_patch(gpt2, base, [[]], metric=LogitDiff(answers=answers), intervention=Zero())


# ----------------------------------------------------------------------------- the config edge


def test_names_at_the_config_edge():
    """One name -> intervention table (interventions.BY_NAME); each run command's config vocabulary is part of it."""
    from mechpatch.runs.discover import ABLATIONS
    from mechpatch.runs.interactions import INTERVENTIONS
    from mechpatch.runs.sweep import INTERVENTION_KINDS

    for names in (ABLATIONS, INTERVENTIONS, INTERVENTION_KINDS):
        assert set(names) <= set(BY_NAME)
    assert from_name("replace") == from_name("corrupted") == Replace()
    assert from_name("zero") == Zero() and isinstance(from_name("mean"), Mean)
    assert from_name("interpolate", alpha=0.25) == Interpolate(0.25) and from_name("resample", seed=4).seed == 4
    with pytest.raises(InvalidArgumentError, match="valid: 'replace', 'corrupted', 'zero', 'mean'"):
        from_name("ablate")
    with pytest.raises(InvalidArgumentError, match="alpha is only used by 'interpolate'"):
        from_name("zero", alpha=0.5)
    assert describe(Interpolate(0.5)) == "interpolate(0.5)" and describe(Resample(seed=2)) == "resample(seed=2)"
    assert describe(Mean(reference=torch.zeros(1, 3, dtype=torch.long))) == "mean(reference)"
