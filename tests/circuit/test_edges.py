"""Edge patching: batched, layer-resumed rows equal a by-hand rebuild of every receiver input."""

import random

import pytest
import torch

from mechpatch.circuit.components import graph_layout
from mechpatch.circuit.edges import EdgeError, edge_masks, edge_patch
from mechpatch.circuit.reference import edge_patch_reference
from mechpatch.errors import InvalidArgumentError
from mechpatch.patching import Interpolate, Zero, run_patches
from mechpatch.patching.interventions import from_name
from mechpatch.patching.metrics import KLDivergence, LogitDiff
from tests.conftest import edge_pair as _pair


def layout(model):
    return graph_layout(model.spec)


def _pairs(lay):
    """Every edge as a (sender label, receiver label) pair, one of the forms edge_patch takes."""
    return [(e.sender.label, e.receiver_label) for e in lay.edges]


def _random_sets(lay, k, seed):
    rng = random.Random(seed)
    edges = lay.edges
    sets = [[], [rng.choice(edges)]]
    sets += [rng.sample(edges, rng.randint(2, 12)) for _ in range(k)]
    sets.append([e for e in edges if e.receiver_label == "logits"])
    return sets


def test_layout_counts(gpt2, gqa, attn_only):
    for model in (gpt2, gqa, attn_only):
        s = model.spec
        lay = layout(model)
        kv = s.n_kv_heads
        mlp = 0 if s.attn_only else 1
        assert len(lay.sender_labels) == 1 + s.n_layers * (s.n_heads + mlp)
        assert len(lay.receiver_labels) == s.n_layers * (s.n_heads + 2 * kv + mlp) + 1
        # independent count: each receiver's senders
        count = 0
        for layer in range(s.n_layers):
            before = 1 + layer * (s.n_heads + mlp)
            count += before * (s.n_heads + 2 * kv) + (before + s.n_heads) * mlp
        count += len(lay.senders)
        assert lay.n_edges == count == len(lay.edges)
    assert "L1G0.k" in layout(gqa).receiver_labels and "L1H3.k" in layout(gpt2).receiver_labels


@pytest.mark.parametrize("ablation", ["corrupted", "zero", "mean"])
def test_equals_hand_rebuilt_reference(any_model, ablation):
    base, src, answers = _pair()
    lay = layout(any_model)
    sets = _random_sets(lay, 10, seed=["corrupted", "zero", "mean"].index(ablation))
    metric = LogitDiff(answers=answers)
    iv = from_name(ablation)  # "corrupted" is Replace()
    run = edge_patch(any_model, base, sets, metric=metric, source=src, intervention=iv, batch_size=4)
    ref = edge_patch_reference(any_model, base, sets, metric=metric, source=src, intervention=iv)
    torch.testing.assert_close(run.values, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run.values[0], run.base_values, atol=1e-5, rtol=1e-5)
    assert (run.values[2:] - run.base_values).abs().amax() > 1e-3


def test_unablated_reference_is_the_bridge(any_model):
    """The by-hand reference itself reproduces the model (KL to the bridge's own logits ~ 0)."""
    base, _, _ = _pair()
    ref = edge_patch_reference(any_model, base, [[]], metric=KLDivergence(positions=None), intervention=Zero())
    assert float(ref.abs().max()) < 1e-6
    run = edge_patch(any_model, base, [[("input", "logits")]], metric=KLDivergence(positions=None), intervention=Zero())
    assert float(run.values.min()) > 1e-3


def test_all_outgoing_edges_equal_node_patching(gpt2):
    """Ablating every edge out of a head with corrupted outputs = patching its output (engine, another mechanism)."""
    from mechpatch.sites import Head, Mlp

    base, src, answers = _pair(seed=5)
    lay = layout(gpt2)
    metric = LogitDiff(answers=answers)
    sets = [[e for e in lay.edges if e.sender.label == name] for name in ("L0H1", "L1H3", "L0.mlp")]
    run = edge_patch(gpt2, base, sets, metric=metric, source=src)
    node = run_patches(gpt2, base, [Head(0, 1), Head(1, 3), Mlp(0)], metric=metric, source=src, method="reference")
    torch.testing.assert_close(run.values, node.values, atol=1e-5, rtol=1e-5)


def test_batch_size_and_masks_do_not_change_values(llama):
    base, src, answers = _pair(seed=7)
    lay = layout(llama)
    sets = _random_sets(lay, 6, seed=1)
    metric = LogitDiff(answers=answers)
    a = edge_patch(llama, base, sets, metric=metric, source=src, batch_size=1)
    b = edge_patch(llama, base, torch.stack([lay.mask(s) for s in sets]), metric=metric, source=src, batch_size=50)
    torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-5)
    assert a.forwards == len(sets) and b.forwards == 1


def test_bad_edges(gpt2, unchecked):
    base, src, answers = _pair()
    metric = LogitDiff(answers=answers)
    with pytest.raises(EdgeError, match="not an edge"):
        edge_patch(gpt2, base, [[("L1H0", "L0H1.q")]], metric=metric, source=src)
    with pytest.raises(EdgeError, match="unknown sender"):
        edge_patch(gpt2, base, [[("L9H0", "logits")]], metric=metric, source=src)
    with unchecked(), pytest.raises(EdgeError, match=r"one of Replace\(\), Zero\(\), Mean"):  # a name, not an object
        edge_patch(gpt2, base, [[]], metric=metric, intervention="resample")
    with pytest.raises(EdgeError, match="needs source"):
        edge_patch(gpt2, base, [[]], metric=metric)


def test_partial_ablation_interpolates(gpt2):
    """Interpolate(alpha) moves ablated senders part of the way; alpha=1 is full ablation, and a fully ablated
    receiver (layer-0 inputs read only the embeddings) follows alpha too."""
    base, src, answers = _pair(seed=9)
    metric = LogitDiff(answers=answers)
    sets = [[("input", "L0H1.q")], [("L0H2", "L1H0.k")], [("L1.mlp", "logits")]]
    full = edge_patch(gpt2, base, sets, metric=metric, source=src)
    one = edge_patch(gpt2, base, sets, metric=metric, source=src, intervention=Interpolate(1.0))
    torch.testing.assert_close(full.values, one.values)
    half = edge_patch(gpt2, base, sets, metric=metric, source=src, intervention=Interpolate(0.5))
    assert not torch.allclose(half.values, full.values)
    tiny = edge_patch(gpt2, base, sets, metric=metric, source=src, intervention=Interpolate(1e-4))
    torch.testing.assert_close(tiny.values, tiny.base_values.expand_as(tiny.values), atol=1e-2, rtol=0)
    with pytest.raises(InvalidArgumentError, match="alpha"):  # (Interpolate refuses it, before edge_patch runs)
        edge_patch(gpt2, base, sets, metric=metric, source=src,
                   intervention=Interpolate(float("inf"), extrapolate=True))


def _at(edge, pos):
    s, r = edge if isinstance(edge, tuple) else (edge.sender.label, edge.receiver_label)
    return f"{s}@{pos}->{r}@{pos}"


def _random_positional_sets(lay, k, seq, seed):
    """Edge sets mixing edges at one position, the same edge at several positions, and edges at every position."""
    rng = random.Random(seed)
    edges = lay.edges
    sets = [[_at(rng.choice(edges), rng.randrange(seq))] for _ in range(3)]
    for _ in range(k):
        chosen = rng.sample(edges, rng.randint(2, 10))
        sets.append([_at(e, p) for e in chosen for p in rng.sample(range(seq), rng.randint(1, seq))]
                    + [e.label for e in rng.sample(edges, rng.randint(0, 2))])
    # a receiver with every input ablated at one position (its exact sum there), and at every position
    r = "L1H2.q"
    sets.append([_at(e, 3) for e in edges if e.receiver_label == r])
    sets.append([_at(e, p) for e in edges if e.receiver_label == r for p in range(seq)])
    return sets


@pytest.mark.parametrize("ablation", ["corrupted", "zero", "mean"])
def test_position_resolved_edges_equal_reference(any_model, ablation):
    base, src, answers = _pair(seed=11)
    seq = base.shape[1]
    lay = layout(any_model)
    sets = _random_positional_sets(lay, 8, seq, seed=["corrupted", "zero", "mean"].index(ablation))
    metric = LogitDiff(answers=answers)
    iv = from_name(ablation)  # "corrupted" is Replace()
    run = edge_patch(any_model, base, sets, metric=metric, source=src, intervention=iv, batch_size=3)
    ref = edge_patch_reference(any_model, base, sets, metric=metric, source=src, intervention=iv)
    torch.testing.assert_close(run.values, ref, atol=1e-5, rtol=1e-5)
    assert (run.values - run.base_values).abs().amax(1).gt(1e-4).sum() >= len(sets) // 2


def test_an_edge_at_every_position_is_the_unresolved_edge(gpt2):
    """Position-resolved ablation at all positions equals ablating the edge; at the metric's position only, a
    logits edge carries its whole effect, and at any other position none (the logits read one position)."""
    base, src, answers = _pair(seed=13)
    seq = base.shape[1]
    lay = layout(gpt2)
    metric = LogitDiff(answers=answers)  # reads the last position
    edges = [("L0H1", "L1H2.k"), ("L1.mlp", "logits"), ("input", "L1.mlp")]
    whole = edge_patch(gpt2, base, [[e] for e in edges], metric=metric, source=src)
    every = edge_patch(gpt2, base, [[_at(e, p) for p in range(seq)] for e in edges], metric=metric, source=src)
    torch.testing.assert_close(every.values, whole.values, atol=1e-5, rtol=1e-5)
    last = edge_patch(gpt2, base, [[_at(edges[1], seq - 1)], [_at(edges[1], 0)]], metric=metric, source=src)
    torch.testing.assert_close(last.values[0], whole.values[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last.values[1], last.base_values, atol=1e-6, rtol=0)
    # masks in the dense [variant, pos, sender, receiver] form give the same values
    dense = edge_masks(lay, [[_at(e, p) for p in range(seq)] for e in edges], seq)
    torch.testing.assert_close(edge_patch(gpt2, base, dense, metric=metric, source=src).values, every.values)


def test_bad_position_resolved_edges(gpt2):
    base, src, answers = _pair()
    seq = base.shape[1]
    metric = LogitDiff(answers=answers)
    lay = layout(gpt2)
    with pytest.raises(EdgeError, match="both ends of an edge are at one position"):
        edge_patch(gpt2, base, [["L0H1@2->L1H0.k@3"]], metric=metric, source=src)
    with pytest.raises(EdgeError, match=f"valid: 0..{seq - 1}"):
        edge_patch(gpt2, base, [[f"L0H1@{seq}->L1H0.k@{seq}"]], metric=metric, source=src)
    with pytest.raises(EdgeError, match="non-negative integer"):
        edge_patch(gpt2, base, [["L0H1@x->L1H0.k@x"]], metric=metric, source=src)
    from mechpatch.circuit.components import CircuitError

    with pytest.raises(CircuitError, match="not position-resolved"):  # a dense mask of the graph has no pos axis
        lay.mask(["L0H1@1->L1H0.k@1"])
    from mechpatch.circuit.edges import _as_masks
    from mechpatch.errors import ShapeMismatchError

    # (edge_patch's annotations already tie the mask's pos axis to the prompts' under runtime shape checking;
    # without it, the mask check itself names the shape)
    with pytest.raises(ShapeMismatchError, match=f"{seq} \\(prompt length\\)"):
        _as_masks(lay, torch.zeros(1, seq + 1, *lay.valid.shape, dtype=torch.bool), seq)


def test_no_edge_sets_is_refused_like_run_patches(gpt2, monkeypatch):
    """edge_patch(model, base, []) returned an empty result where run_patches refuses an empty list."""
    from mechpatch.errors import EmptyInputError

    base, src, answers = _pair()
    monkeypatch.setattr("mechpatch.circuit.edges.make_runner", lambda *a, **k: pytest.fail("ran before refusing"))
    with pytest.raises(EmptyInputError, match="no edge sets given"):
        edge_patch(gpt2, base, [], metric=LogitDiff(answers=answers), source=src)
    with pytest.raises(EmptyInputError, match="no edge sets given"):
        edge_patch(gpt2, base, torch.zeros(0, *layout(gpt2).valid.shape, dtype=torch.bool),
                   metric=LogitDiff(answers=answers), source=src)
    # a bad edge is refused before the runner's forward passes too
    with pytest.raises(EdgeError, match=r"position 6 is out of range for prompts of 6 tokens"):
        edge_patch(gpt2, base, [[("L0H1@6", "L1H0.q@6")]], metric=LogitDiff(answers=answers), source=src)


def test_metric_positions_do_not_wrap(gpt2):
    from mechpatch.errors import SiteOutOfRangeError

    base, src, answers = _pair()
    with pytest.raises(SiteOutOfRangeError, match=r"metric 'logit_diff' position 6 is outside the prompt of 6 tokens"):
        edge_patch(gpt2, base, [[]], metric=LogitDiff(answers=answers, positions=(6,)), source=src)
    with pytest.raises(SiteOutOfRangeError, match=r"metric 'logit_diff' position -7"):
        edge_patch_reference(gpt2, base, [[]], metric=LogitDiff(answers=answers, positions=(-7,)), source=src)


def test_float64_models_give_float64_values(tokenizer):
    """Values in the model's precision: float64 stays float64 (it was cast to float32)."""
    from mechpatch.model import load_model
    from tests.conftest import _gpt2_hf

    model = load_model(_gpt2_hf(), tokenizer=tokenizer, device="cpu", dtype="float64")
    base, src, answers = _pair()
    sets = _random_sets(layout(model), 3, seed=1)
    run = edge_patch(model, base, sets, metric=LogitDiff(answers=answers), source=src)
    assert run.values.dtype == run.base_values.dtype == torch.float64
    ref = edge_patch_reference(model, base, sets, metric=LogitDiff(answers=answers), source=src)
    assert ref.dtype == torch.float64
    torch.testing.assert_close(run.values, ref, atol=1e-9, rtol=1e-9)  # far below float32's resolution
