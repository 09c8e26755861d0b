"""ACDC: recovers tracr's ground truth, finds the induction circuit, and batched equals sequential."""

import math

import pytest
import torch

from mechpatch import zoo
from mechpatch.circuit.components import as_edge
from mechpatch.circuit.discovery import DISCOVERY, acdc, discover
from mechpatch.circuit.edges import EdgeError, edge_patch
from mechpatch.patching import Zero
from mechpatch.patching.metrics import KLDivergence
from mechpatch.tasks import make_task


def _auc(scores, truth):
    """Edge-level ROC AUC by counting ordered pairs (unevaluated edges rank lowest)."""
    val = {e: (-math.inf if math.isnan(s) else s) for e, s in scores.items()}
    pos = [v for e, v in val.items() if e in truth]
    neg = [v for e, v in val.items() if e not in truth]
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


@pytest.mark.parametrize("name", ["tracr-reverse", "tracr-xproportion"])
@pytest.mark.parametrize("search", ["batched", "sequential", "units of 3 rows"])
def test_acdc_recovers_tracr_ground_truth(name, search):
    from mechpatch.zoo.tracr import ground_truth_edges

    model = zoo.load(name)
    task = make_task(name, model)
    (b,) = task.batches
    truth = {as_edge(e) for e in ground_truth_edges(name)}
    kw = {"search": search} if search != "units of 3 rows" else {"rows_per_unit": 3}
    res = acdc(model, b.clean, metric=task.metric, intervention=Zero(), tau=1e-4, progress=False, **kw)
    assert set(res.edges) == truth
    assert _auc(res.scores, truth) == 1.0  # ACDC's published edge AUC for both: 1.000
    assert res.final_metric < 1e-4
    # the circuit alone reproduces the outputs: ablate every other edge
    others = [e for e in res.layout.edges if e not in truth]
    run = edge_patch(model, b.clean, [others], metric=task.metric, intervention=Zero())
    assert float(run.values.max()) < 1e-6


def test_acdc_finds_the_induction_circuit():
    model = zoo.load("induction-2l")
    task = make_task("induction", model, n=16, block=10, seed=0)
    (b,) = task.batches
    res = acdc(model, b.clean, metric=task.metric, source=b.corrupted, tau=0.05, progress=False)
    assert as_edge("L0H2->L1H0.k") in res.edges  # previous-token head -> induction head, via keys
    assert as_edge("L1H0->logits") in res.edges
    assert len(res.edges) < res.layout.n_edges
    assert res.final_metric > res.full_metric - 0.5  # the circuit keeps most of the behaviour


@pytest.mark.parametrize("fixture", ["gpt2", "gqa"])
def test_batched_equals_sequential(fixture, request):
    model = request.getfixturevalue(fixture)
    g = torch.Generator().manual_seed(4)
    base = torch.randint(1, 100, (3, 6), generator=g)
    src = torch.randint(1, 100, (3, 6), generator=g)
    kw = dict(source=src, tau=0.02, progress=False)
    a = acdc(model, base, metric=KLDivergence(positions=None), search="batched", batch_size=16, **kw)
    b = acdc(model, base, metric=KLDivergence(positions=None), search="sequential", **kw)
    # each forward cut into units of 5 rows (what an executor shares out): the same search, more forwards
    c = acdc(model, base, metric=KLDivergence(positions=None), search="batched", batch_size=16, rows_per_unit=5, **kw)
    assert a.edges == b.edges == c.edges and 0 < len(a.edges) < a.layout.n_edges
    assert a.forwards < c.forwards < b.forwards and a.evaluations == c.evaluations
    for e, s in b.scores.items():
        assert (math.isnan(s) and math.isnan(a.scores[e])) or abs(s - a.scores[e]) < 1e-5
        assert (math.isnan(s) and math.isnan(c.scores[e])) or abs(s - c.scores[e]) < 1e-5


def test_registry_and_errors(attn_only):
    base = torch.randint(1, 100, (2, 5))
    assert "acdc" in DISCOVERY
    res = discover("acdc", attn_only, base, metric="kl_div", intervention=Zero(), tau=0.5, progress=False)
    assert res.method == "acdc-batched"
    with pytest.raises(EdgeError, match="valid: 'acdc'"):
        discover("magic", attn_only, base, metric="kl_div")
    with pytest.raises(EdgeError, match="unknown ACDC search 'fast'; valid: 'batched', 'sequential'"):
        acdc(attn_only, base, metric="kl_div", intervention=Zero(), search="fast")
    res = discover("acdc", attn_only, base, metric="kl_div", intervention=Zero(), tau=0.5, search="sequential",
                   progress=False)
    assert res.method == "acdc-sequential"
    with pytest.raises(EdgeError, match="tau"):
        acdc(attn_only, base, metric="kl_div", intervention=Zero(), tau=float("nan"))


def test_result_as_component_graph_keeps_scores_and_circuit(tmp_path):
    from mechpatch.circuit import ComponentGraph
    from mechpatch.zoo.tracr import ground_truth_edges

    model = zoo.load("tracr-xproportion")
    task = make_task("tracr-xproportion", model)
    (b,) = task.batches
    res = acdc(model, b.clean, metric=task.metric, intervention=Zero(), tau=1e-4, progress=False)
    graph = res.to_graph()
    truth = [(e["sender"], e["receiver"]) for e in ground_truth_edges("tracr-xproportion")]
    assert graph.roc_auc(truth) == 1.0
    assert graph.meta["method"] == "acdc-batched" and graph.meta["tau"] == 1e-4
    graph.to_json(str(tmp_path / "g.json"))
    back = ComponentGraph.from_json(str(tmp_path / "g.json"))
    assert back == graph
