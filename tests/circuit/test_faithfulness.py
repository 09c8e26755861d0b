"""Faithfulness (MIB): f = 1 for the full model and for a complete ground-truth circuit; CPR/CMD by hand."""

import pytest
import torch

from mechpatch import zoo
from mechpatch.circuit.components import as_edge, graph_layout
from mechpatch.circuit.edges import EdgeError
from mechpatch.circuit.faithfulness import FaithfulnessCurve, circuit_metric, faithfulness_curve
from mechpatch.patching import Mean, Zero
from mechpatch.tasks import make_task


def test_tracr_ground_truth_circuit_is_fully_faithful():
    from mechpatch.zoo.tracr import ground_truth_edges

    model = zoo.load("tracr-reverse")
    task = make_task("tracr-reverse", model)
    (b,) = task.batches
    truth = [as_edge(e) for e in ground_truth_edges("tracr-reverse")]
    scores = {e: (1.0 if e in truth else 0.01) for e in graph_layout(model.spec).edges}
    curve = faithfulness_curve(model, b.clean, scores, metric=task.metric, intervention=Zero())
    n_all = graph_layout(model.spec).n_edges
    for size, k, f in zip(curve.sizes, curve.n_edges, curve.faithfulness):
        if k >= len(truth):
            assert f == pytest.approx(1.0, abs=1e-6), (size, k)
    assert curve.faithfulness[-1] == pytest.approx(1.0) and curve.n_edges[-1] == n_all
    assert curve.faithfulness[0] < 0.99  # one edge cannot reverse a sequence
    # the metric is a distance: the full model scores 0, the empty circuit more
    assert curve.metric_full == pytest.approx(0.0, abs=1e-9) and curve.metric_empty > 0


def test_cpr_and_cmd_by_trapezoid():
    c = FaithfulnessCurve((0.1, 0.5, 1.0), (1, 5, 10), (0.0, 0.5, 1.0), 1.0, 0.0, (0.0, 0.5, 1.0))
    assert c.cpr == pytest.approx(0.4 * 0.25 + 0.5 * 0.75)
    assert c.cmd == pytest.approx(0.4 * 0.75 + 0.5 * 0.25)
    assert len(c.figure().data) == 1


def test_circuit_metric_matches_single_runs(attn_only):
    base = torch.randint(1, 100, (2, 5), generator=torch.Generator().manual_seed(0))
    lay = graph_layout(attn_only.spec)
    circuits = [lay.edges[:10], lay.edges[5:40] + tuple(e for e in lay.edges if e.receiver_label == "logits"), []]
    both = circuit_metric(attn_only, base, circuits, metric="kl_div", intervention=Mean())
    one = torch.cat([circuit_metric(attn_only, base, [c], metric="kl_div", intervention=Mean()) for c in circuits])
    torch.testing.assert_close(both, one, atol=1e-6, rtol=1e-6)
    assert abs(float(both[-1]) - float(both[1])) > 1e-3 and float(both.min()) >= 0  # KL; the circuits differ


def test_bad_sizes(attn_only):
    base = torch.randint(1, 100, (2, 5))
    with pytest.raises(EdgeError, match="fractions"):
        faithfulness_curve(attn_only, base, {}, metric="kl_div", intervention=Zero(), sizes=(0.5, 0.1))


def test_position_resolved_circuits(attn_only):
    """A circuit holding an edge at every position is the unresolved circuit; at fewer positions, more is ablated."""
    from mechpatch.circuit.faithfulness import faithfulness_curve

    base = torch.randint(1, 100, (2, 5), generator=torch.Generator().manual_seed(1))
    seq = base.shape[1]
    lay = graph_layout(attn_only.spec)
    edges = lay.edges[5:40] + tuple(e for e in lay.edges if e.receiver_label == "logits")  # reaching the logits
    at_all = [e.at(p) for e in edges for p in range(seq)]
    at_last = [e.at(seq - 1) for e in edges]
    values = circuit_metric(attn_only, base, [edges, at_all, at_last], metric="kl_div", intervention=Mean())
    torch.testing.assert_close(values[1], values[0], atol=1e-6, rtol=1e-6)
    assert abs(float(values[2] - values[0])) > 1e-4
    scores = {e.at(p): float(i + p) for i, e in enumerate(lay.edges) for p in range(seq)}
    curve = faithfulness_curve(attn_only, base, scores, metric="kl_div", intervention=Mean(), sizes=(0.1, 0.5, 1.0))
    assert curve.n_edges[-1] == seq * lay.n_edges and curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-5)


def test_scores_as_labels_or_pairs_and_unknown_edges(attn_only):
    """A ComponentGraph's label-keyed scores rank like (sender, receiver) keys; a misspelt edge is an error, not
    a silently unscored one."""
    base = torch.randint(1, 100, (2, 5), generator=torch.Generator().manual_seed(2))
    lay = graph_layout(attn_only.spec)
    pairs = {(e.sender.label, e.receiver_label): float((7 * i) % 11) for i, e in enumerate(lay.edges)}
    labels = {f"{s}->{r}": v for (s, r), v in pairs.items()}
    a = faithfulness_curve(attn_only, base, pairs, metric="kl_div", intervention=Mean(), sizes=(0.2, 0.6))
    b = faithfulness_curve(attn_only, base, labels, metric="kl_div", intervention=Mean(), sizes=(0.2, 0.6))
    c = faithfulness_curve(attn_only, base, {as_edge(e): v for e, v in pairs.items()}, metric="kl_div",
                           intervention=Mean(), sizes=(0.2, 0.6))
    assert a.faithfulness == b.faithfulness == c.faithfulness
    with pytest.raises(EdgeError, match="L0H9->logits"):
        faithfulness_curve(attn_only, base, {**labels, "L0H9->logits": 1.0}, metric="kl_div", intervention=Mean())
