"""The component graph: labels, edge enumeration and dense layout, circuits (selection, pruning, AUC), formats, figure.

Expected values come from independent formulas, hand-built graphs whose answer is known by construction,
or brute force (networkx path search, pairwise AUC counting)."""

import dataclasses
import itertools
import json
import math
import random
import subprocess
import sys

import networkx as nx
import plotly.graph_objects as go
import pytest
import torch

from mechpatch.circuit import CircuitError, ComponentGraph, Edge, Node
from mechpatch.circuit.components import (
    all_edges,
    as_edge,
    edge_mask,
    edges_from_mask,
    graph_layout,
    parse_edge,
    parse_node,
    parse_receiver,
)
from mechpatch.circuit.plot import graph_figure
from mechpatch.errors import MechpatchError, SiteOutOfRangeError, UnknownSiteKindError, UnsupportedSiteError
from mechpatch.sites import ModelSpec
from mechpatch.zoo import tracr

GPT2_SMALL = ModelSpec(n_layers=12, n_heads=12, d_model=768, d_head=64, d_vocab=50257, n_ctx=1024)
SMALL = ModelSpec(n_layers=3, n_heads=2, d_model=8, d_head=4, d_vocab=10, n_ctx=8)
GQA = ModelSpec(n_layers=2, n_heads=4, n_kv_heads=2, d_model=8, d_head=2, d_vocab=10, n_ctx=8)
ATTN_ONLY = ModelSpec(n_layers=2, n_heads=2, d_model=8, d_head=4, d_vocab=10, n_ctx=8, attn_only=True)
SPECS = [SMALL, GQA, ATTN_ONLY]


def _count(spec: ModelSpec) -> int:
    """Edges by counting senders per receiver: a head of layer l sees 1 + l(H+M) senders on each of its
    H + 2G inputs, the MLP of layer l also its own layer's H heads, the logits all 1 + L(H+M)."""
    L, H, G, M = spec.n_layers, spec.n_heads, spec.n_kv_heads, int(spec.has_mlp)
    heads = (H + 2 * G) * sum(1 + l * (H + M) for l in range(L))
    mlps = M * sum(1 + l * (H + M) + H for l in range(L))
    return heads + mlps + 1 + L * (H + M)


def _tracr_spec(name: str) -> ModelSpec:
    a = tracr.get(name).architecture
    return ModelSpec(n_layers=a["n_layers"], n_heads=a["n_heads"], d_model=a["d_model"], d_head=a["d_head"],
                     d_vocab=a["d_vocab"], n_ctx=a["n_ctx"], d_mlp=a["d_mlp"])


# ----------------------------------------------------------------------------- labels and enumeration


def test_labels_round_trip_for_every_edge():
    for spec in SPECS:
        for e in all_edges(spec):
            assert parse_edge(e.label) == e and as_edge((e.sender.label, e.receiver_label)) == e
        for e in all_edges(spec, n_pos=2):
            assert parse_edge(e.label) == e and e.sender.pos == e.receiver.pos
    e = Edge(Node("head", 0, 2), Node("head", 1, 0), "k")
    assert e.label == "L0H2->L1H0.k" and str(e.at(3)) == "L0H2@3->L1H0.k@3"
    assert parse_edge("input->L0.mlp").label == "input->L0.mlp" and parse_edge("L1.mlp->logits").input is None
    assert parse_receiver("L2G1.k") == (Node("group", 2, 1), "k")
    assert parse_node("L3.mlp@4") == Node("mlp", 3, pos=4)


def test_edge_counts_follow_independent_formulas():
    # GPT-2 small: 36 * (12 + 13*66) + (12*13 + 13*66) + 157, as EAP-IG (and so MIB) counts GPT-2 small's edges
    assert _count(GPT2_SMALL) == 32491 == len(all_edges(GPT2_SMALL)) == graph_layout(GPT2_SMALL).n_edges
    for spec in SPECS:
        lay = graph_layout(spec)
        L, H, G, M = spec.n_layers, spec.n_heads, spec.n_kv_heads, int(spec.has_mlp)
        assert lay.shape == (1 + L * (H + M), L * (H + 2 * G + M) + 1)
        assert len(all_edges(spec)) == _count(spec) == int(lay.valid.sum())
        assert len(all_edges(spec, n_pos=3)) == 3 * _count(spec) == graph_layout(spec, 3).n_edges
    assert not any(e.sender.kind == "mlp" or e.receiver.kind == "mlp" for e in all_edges(ATTN_ONLY))
    gqa_kv = {e.receiver_label for e in all_edges(GQA) if e.input in ("k", "v")}
    assert gqa_kv == {f"L{l}G{g}.{i}" for l in range(2) for g in range(2) for i in "kv"}


def test_layout_indices_match_the_documented_formulas():
    for spec in SPECS:
        lay = graph_layout(spec)
        L, H, G, M = spec.n_layers, spec.n_heads, spec.n_kv_heads, int(spec.has_mlp)
        kv = "G" if spec.is_gqa else "H"
        assert lay.sender_index("input") == 0 and lay.receiver_index("logits") == L * (H + 2 * G + M)
        for l in range(L):
            b = l * (H + 2 * G + M)
            for h in range(H):
                assert lay.sender_index(f"L{l}H{h}") == 1 + l * (H + M) + h
                assert lay.receiver_index(f"L{l}H{h}.q") == b + h
            for g in range(G):
                assert lay.receiver_index(f"L{l}{kv}{g}.k") == b + H + g
                assert lay.receiver_index(f"L{l}{kv}{g}.v") == b + H + G + g
            if M:
                assert lay.sender_index(f"L{l}.mlp") == 1 + l * (H + M) + H
                assert lay.receiver_index(f"L{l}.mlp") == b + H + 2 * G


def test_edges_are_in_topological_order():
    for spec in SPECS:
        edges = all_edges(spec)
        first_out, last_in = {}, {}
        for i, e in enumerate(edges):
            first_out.setdefault(e.sender, i)
            fed = [e.receiver] if e.receiver.kind != "group" else [
                Node("head", e.receiver.layer, h) for h in range(spec.n_heads) if h // 2 == e.receiver.unit]
            for node in fed:
                last_in[node] = i
        assert all(last_in[n] < first_out[n] for n in first_out if n in last_in)
        # a layer-l head reads the input and every earlier layer; the layer-l MLP also its own layer's heads
        for e in edges:
            r = e.receiver
            if r.kind == "logits" or e.sender.kind == "input":
                continue
            same_layer_head_to_mlp = e.sender.layer == r.layer and r.kind == "mlp" and e.sender.kind == "head"
            assert e.sender.layer < r.layer or same_layer_head_to_mlp


@pytest.mark.parametrize("name", ["tracr-reverse", "tracr-xproportion"])
def test_tracr_ground_truth_parses_into_edges(name):
    spec = _tracr_spec(name)
    truth = tracr.ground_truth_edges(name)
    edges = [as_edge(d) for d in truth]
    assert [e.sender.label for e in edges] == [d["sender"] for d in truth]
    assert [e.receiver_label for e in edges] == [d["receiver"] for d in truth]
    assert set(edges) <= set(all_edges(spec)) and len(set(edges)) == len(truth) == {"tracr-reverse": 10}.get(name, 5)
    lay = graph_layout(spec)
    assert list(lay.sender_labels) == tracr.senders(spec.n_layers, spec.n_heads)
    assert sorted(lay.receiver_labels) == sorted(tracr.receivers(spec.n_layers, spec.n_heads))
    # tracr's own precedence rule gives the same full edge set
    senders, receivers = tracr.senders(spec.n_layers, spec.n_heads), tracr.receivers(spec.n_layers, spec.n_heads)
    theirs = {(s, r) for r in receivers for s in senders if tracr._precedes(s, r)}
    assert theirs == {(e.sender.label, e.receiver_label) for e in all_edges(spec)}


def test_spans_name_the_inputs_the_forward_reads_and_the_outputs_it_writes():
    """Edge patching and EAP read each layer's receiver inputs and write its senders' outputs by span of the one
    layout (there is no second layout whose order must match): the spans hold exactly the labelled units."""
    for spec in SPECS:
        lay = graph_layout(spec)
        kv = "G" if spec.is_gqa else "H"
        for layer in range(spec.n_layers):
            assert lay.receiver_labels[lay.receiver_span(layer, "q")] == tuple(
                f"L{layer}H{h}.q" for h in range(spec.n_heads))
            for inp in ("k", "v"):
                assert lay.receiver_labels[lay.receiver_span(layer, inp)] == tuple(
                    f"L{layer}{kv}{g}.{inp}" for g in range(spec.n_kv_heads))
            assert lay.sender_labels[lay.sender_span(layer, "head")] == tuple(
                f"L{layer}H{h}" for h in range(spec.n_heads))
            if spec.has_mlp:
                assert lay.receiver_labels[lay.receiver_span(layer, "mlp")] == (f"L{layer}.mlp",)
                assert lay.sender_labels[lay.sender_span(layer, "mlp")] == (f"L{layer}.mlp",)
        assert lay.receiver_labels[lay.receiver_span(spec.n_layers, "logits")] == ("logits",)
        assert lay.sender_layer[0] == -1 and lay.receiver_layer[-1] == spec.n_layers


def test_mask_round_trip():
    rng = random.Random(0)
    for spec in SPECS:
        edges = all_edges(spec)
        for n in (0, 1, 7, len(edges)):
            chosen = rng.sample(edges, n)
            m = edge_mask(chosen, spec)
            assert m.dtype == torch.bool and tuple(m.shape) == graph_layout(spec).shape and int(m.sum()) == n
            assert edges_from_mask(m, spec) == [e for e in edges if e in set(chosen)]
        pos_edges = all_edges(spec, n_pos=3)
        chosen = rng.sample(pos_edges, 9)
        m = edge_mask(chosen, spec, n_pos=3)
        assert m.shape[0] == 3 and edges_from_mask(m, spec) == [e for e in pos_edges if e in set(chosen)]
    m = torch.zeros(graph_layout(SMALL).shape, dtype=torch.bool)
    m[graph_layout(SMALL).sender_index("L2H0"), graph_layout(SMALL).receiver_index("L0H0.q")] = True
    with pytest.raises(CircuitError, match="L2H0 -> L0H0.q, which is not an edge"):
        edges_from_mask(m, SMALL)
    with pytest.raises(CircuitError, match=r"\[10, 22\]"):
        graph_layout(SMALL).edges_of(torch.zeros(3, 3, dtype=torch.bool))


def test_bad_labels_and_edges_raise_typed_errors_naming_valid_choices():
    with pytest.raises(UnknownSiteKindError, match="valid forms: 'input', 'logits', 'L<layer>.mlp'"):
        parse_node("L1.mpl")
    with pytest.raises(UnknownSiteKindError, match="add '.q', '.k' or '.v'"):
        parse_edge("L0H0->L1H0")
    with pytest.raises(UnknownSiteKindError, match="'<sender>-><receiver>'"):
        parse_edge("L0H0 to L1H0.q")
    with pytest.raises(CircuitError, match="not an edge: L1H0 comes after L0.mlp reads"):
        parse_edge("L1H0->L0.mlp")
    with pytest.raises(CircuitError, match="not an edge"):
        parse_edge("L1H0->L1H1.q")  # heads of one layer read the same residual stream
    with pytest.raises(CircuitError, match="one position"):
        Edge(Node("input", pos=1), Node("logits", pos=2))
    with pytest.raises(CircuitError, match="valid: 'k', 'v'"):
        Edge(Node("input"), Node("group", 0, 0), "q")
    with pytest.raises(CircuitError, match="sends nothing"):
        Edge(Node("logits"), Node("mlp", 0))
    lay = graph_layout(SMALL)
    with pytest.raises(SiteOutOfRangeError, match=r"valid: 0..2"):
        lay.index("L3H0->logits")
    with pytest.raises(SiteOutOfRangeError, match=r"valid: 0..1"):
        lay.index("L0H5->logits")
    with pytest.raises(CircuitError, match="no GQA.*'L1H<head>.k'"):
        lay.index("input->L1G0.k")
    with pytest.raises(CircuitError, match="use 'L1G1.k'"):
        graph_layout(GQA).index("input->L1H3.k")
    with pytest.raises(SiteOutOfRangeError, match="valid: 0..1"):
        graph_layout(GQA).index("input->L1G2.v")
    with pytest.raises(UnsupportedSiteError, match="attention-only"):
        graph_layout(ATTN_ONLY).index("input->L0.mlp")
    with pytest.raises(CircuitError, match="add '@<pos>'"):
        graph_layout(SMALL, 2).index("input->logits")
    with pytest.raises(SiteOutOfRangeError, match="valid: 0..1"):
        graph_layout(SMALL, 2).index("input@2->logits@2")
    with pytest.raises(CircuitError, match="not position-resolved"):
        lay.index("input@0->logits@0")
    assert issubclass(CircuitError, MechpatchError) and issubclass(CircuitError, ValueError)


# ----------------------------------------------------------------------------- selection


def _scored(spec=SMALL, seed=0, nan_every=0, n_pos=None):
    g = torch.Generator().manual_seed(seed)
    lay = graph_layout(spec, n_pos)
    scores = torch.randn(lay.shape, generator=g, dtype=torch.float64)
    if nan_every:
        scores.view(-1)[::nan_every] = math.nan
    valid = lay.valid if n_pos is None else lay.valid.expand(lay.shape)
    return ComponentGraph(spec, torch.where(valid, scores, torch.zeros_like(scores)), n_pos=n_pos,
                          meta={"method": "random", "metric": "none"})


def test_threshold_top_k_and_edge_count():
    spec = ATTN_ONLY
    scores = {"input->L0H0.q": 0.9, "input->L0H1.v": -0.8, "L0H0->L1H1.k": 0.5, "L1H1->logits": 0.5,
              "L0H1->logits": -0.1, "input->logits": math.nan}
    g = ComponentGraph(spec, scores)
    assert g.n_in_circuit == g.n_edges == _count(spec) and g.n_scored == 5
    assert {e.label for e in g.threshold(0.5).in_circuit} == {"input->L0H0.q", "input->L0H1.v", "L0H0->L1H1.k",
                                                               "L1H1->logits"}
    assert {e.label for e in g.threshold(0.5, absolute=False).in_circuit} == {"input->L0H0.q", "L0H0->L1H1.k",
                                                                               "L1H1->logits"}
    assert g.threshold(-math.inf, absolute=False).n_in_circuit == 5  # unscored edges never pass
    assert [e.label for e in g.top_k(2).in_circuit_edges()] == ["input->L0H0.q", "input->L0H1.v"]
    # a tie at the cut goes to the edge earlier in canonical order (L1H1.k receives before logits)
    assert {e.label for e in g.top_k(3).in_circuit} == {"input->L0H0.q", "input->L0H1.v", "L0H0->L1H1.k"}
    assert g.top_k(0).n_in_circuit == 0 and g.top_k(5).n_in_circuit == 5
    assert g.edge_count(3, prune=False).in_circuit == g.top_k(3).in_circuit
    # pruned: top-4 has input->L0H1.v dangling (L0H1 reaches no logits until L0H1->logits, the 5th edge)
    four = g.edge_count(4)
    assert {e.label for e in four.in_circuit} == {"input->L0H0.q", "L0H0->L1H1.k", "L1H1->logits"}
    assert {e.label for e in g.edge_count(5).in_circuit} == {e for e, s in scores.items() if not math.isnan(s)}
    assert g.edge_count(2).n_in_circuit == 0  # no top-m prefix prunes to 1 or 2 edges before m=4 gives 3
    for bad in (-1, 6, True):
        with pytest.raises(CircuitError, match=r"0..5"):
            g.top_k(bad)
    with pytest.raises(CircuitError, match=r"0..5"):
        g.edge_count(6)
    with pytest.raises(CircuitError, match="tau must be a number"):
        g.threshold(math.nan)


def test_edge_count_is_the_largest_pruned_prefix():
    g = _scored(SMALL, seed=3)
    pruned = [g.top_k(m).prune() for m in range(g.n_scored + 1)]
    sizes = [p.n_in_circuit for p in pruned]
    assert sizes == sorted(sizes)  # more edges given never prune to fewer
    for n in (0, 5, 20, 60):
        best = max(m for m in range(g.n_scored + 1) if sizes[m] <= n)
        assert g.edge_count(n) == pruned[best] and g.edge_count(n).n_in_circuit <= n


# ----------------------------------------------------------------------------- pruning


def _labels(g):
    return {e.label for e in g.in_circuit}


def test_prune_hand_built():
    spec = SMALL
    path = {"input->L0H0.q", "L0H0->L1H1.v", "L1H1->logits"}
    dangling = {
        "input->L0.mlp",  # L0.mlp sends nothing
        "L0H1->logits",  # nothing reaches L0H1
        "input->L1H0.q", "L1H0->L2H0.k",  # L2H0 sends nothing, so L1H0 reaches no logits: both go (cascade)
        "L2.mlp->logits",  # nothing reaches L2.mlp
    }
    g = ComponentGraph(spec, in_circuit=path | dangling)
    assert _labels(g.prune()) == path
    assert _labels(g.prune().prune()) == path
    assert _labels(ComponentGraph(spec, in_circuit=[]).prune()) == set()
    assert _labels(ComponentGraph(spec, in_circuit=["input->logits"]).prune()) == {"input->logits"}
    full = ComponentGraph(spec)
    assert full.prune().n_in_circuit == full.n_edges  # every edge of the full model is on a path


def test_prune_gqa_group_and_positions():
    # GQA: group 0 of layer 1 serves heads 0 and 1; only head 1 reaches the logits, which keeps the group's key edge
    g = ComponentGraph(GQA, in_circuit=["input->L1G0.k", "input->L1H1.q", "L1H1->logits", "input->L1G1.v"])
    assert _labels(g.prune()) == {"input->L1G0.k", "input->L1H1.q", "L1H1->logits"}
    # positions: keys written at position 1 reach the head at position 2 (causal), keys at 3 do not
    edges = ["input@2->L0H0.q@2", "input@1->L0H0.k@1", "input@3->L0H0.k@3", "L0H0@2->logits@2"]
    causal = ComponentGraph(ATTN_ONLY, in_circuit=edges, n_pos=4)
    assert _labels(causal.prune()) == set(edges) - {"input@3->L0H0.k@3"}
    bidirectional = ComponentGraph(ATTN_ONLY, in_circuit=edges, n_pos=4, causal=False)
    assert _labels(bidirectional.prune()) == set(edges)


def _reference_prune(g):
    """Brute force: keep an edge iff the input reaches its sender and its receiver input reaches the logits,
    in a networkx graph of circuit edges plus receiver-input -> node links."""
    spec = g.spec
    d = nx.DiGraph()
    positions = [None] if g.n_pos is None else range(g.n_pos)
    for e in g.in_circuit:
        d.add_edge(e.sender, (e.receiver, e.input))
    for p in positions:
        for node, inp in graph_layout(spec).receivers:
            port = (node.at(p), inp)
            if node.kind == "logits":
                d.add_edge(port, "LOGITS")
                continue
            heads = [node] if node.kind != "group" else [
                Node("head", node.layer, h) for h in range(spec.n_heads)
                if h // (spec.n_heads // spec.n_kv_heads) == node.unit]
            for q in positions:
                if p is None or q == p or (inp in ("k", "v") and (q >= p or not g.causal)):
                    for h in heads:
                        d.add_edge(port, h.at(q))
        d.add_node(Node("input", pos=p))
        d.add_edge("INPUT", Node("input", pos=p))
    d.add_node("LOGITS")
    reach, alive = nx.descendants(d, "INPUT"), nx.ancestors(d, "LOGITS")
    return {e for e in g.in_circuit if e.sender in reach and (e.receiver, e.input) in alive}


@pytest.mark.parametrize("spec,n_pos,causal", [(SMALL, None, True), (GQA, None, True), (ATTN_ONLY, 3, True),
                                               (GQA, 2, False)])
def test_prune_equals_path_search_on_random_circuits(spec, n_pos, causal):
    rng = random.Random(1)
    edges = all_edges(spec, n_pos)
    for density in (0.05, 0.15, 0.4):
        chosen = [e for e in edges if rng.random() < density]
        g = ComponentGraph(spec, in_circuit=chosen, n_pos=n_pos, causal=causal)
        assert g.prune().in_circuit == _reference_prune(g)


def test_nodes_in_circuit():
    g = ComponentGraph(SMALL, in_circuit=["input->L0H0.q", "L0H0->L1H1.v", "L1H1->logits", "input->L2.mlp"])
    assert [n.label for n in g.nodes_in_circuit] == ["input", "L0H0", "L1H1", "L2.mlp", "logits"]
    assert [n.label for n in g.prune().nodes_in_circuit] == ["input", "L0H0", "L1H1", "logits"]
    gqa = ComponentGraph(GQA, in_circuit=["input->L1G0.k", "L1H1->logits"])
    assert [n.label for n in gqa.nodes_in_circuit] == ["input", "L1H1", "logits"]  # a group is not a node of its own
    pos = ComponentGraph(ATTN_ONLY, in_circuit=["input@1->L0H1.q@1", "L0H1@1->logits@1"], n_pos=2)
    assert [n.label for n in pos.nodes_in_circuit] == ["input@1", "L0H1@1", "logits@1"]


# ----------------------------------------------------------------------------- ROC AUC


def test_roc_auc_known_cases():
    spec = ATTN_ONLY
    edges = all_edges(spec)
    n = len(edges)
    ranked = {e: float(n - i) for i, e in enumerate(edges)}  # strictly decreasing along the canonical order
    g = ComponentGraph(spec, ranked)
    top3, bottom3 = edges[:3], edges[-3:]
    assert g.roc_auc(top3) == 1.0
    assert g.roc_auc(bottom3) == 0.0
    assert ComponentGraph(spec, {e: 1.0 for e in edges}).roc_auc(top3) == 0.5
    assert ComponentGraph(spec).roc_auc(top3) == 0.5  # nothing scored: all tied
    # positives ranked 1st and 3rd of 4 scored (the rest unscored, below all): the first beats all n-2 negatives,
    # the third all but edges[1]
    four = ComponentGraph(spec, {edges[0]: 4.0, edges[1]: 3.0, edges[2]: 2.0, edges[3]: 1.0})
    assert four.roc_auc([edges[0], edges[2]]) == pytest.approx(((n - 2) + (n - 3)) / (2 * (n - 2)), abs=1e-15)
    # absolute: a large negative score ranks first
    neg = ComponentGraph(spec, {edges[0]: -5.0, edges[1]: 1.0})
    assert neg.roc_auc([edges[0]]) == 1.0
    assert neg.roc_auc([edges[0]], absolute=False) == pytest.approx((n - 2) / (n - 1), abs=1e-15)  # below 1.0 only
    with pytest.raises(CircuitError, match="positive and negative"):
        g.roc_auc([])
    with pytest.raises(CircuitError, match="positive and negative"):
        g.roc_auc(edges)


def test_roc_auc_equals_pairwise_count():
    g = _scored(SMALL, seed=5, nan_every=7)
    rng = random.Random(2)
    edges = list(g.edges)
    truth = set(rng.sample(edges, 12))
    vals = {e: abs(g.score(e)) if not math.isnan(g.score(e)) else -math.inf for e in edges}
    # ties among the unscored edges: give a few scored ones equal values too
    pos = [vals[e] for e in edges if e in truth]
    neg = [vals[e] for e in edges if e not in truth]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    assert g.roc_auc(truth) == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12)


# ----------------------------------------------------------------------------- JSON


def test_json_round_trip_is_exact(tmp_path):
    g = _scored(GQA, seed=1, nan_every=5)
    lay = g.layout
    dense = g.scores
    dense[lay.index("input->L0H0.q")] = math.inf
    dense[lay.index("input->L0H1.q")] = -math.inf
    dense[lay.index("input->L0H2.q")] = 1e-300
    dense[lay.index("input->L0H3.q")] = 0.1 + 0.2  # not representable in fewer digits
    g = ComponentGraph(GQA, dense, in_circuit=[e for i, e in enumerate(g.edges) if i % 3 == 0],
                       node_scores={"L1H2": -0.125, "input": math.nan, "L0.mlp": 3.0},
                       meta={"method": "EAP-IG", "metric": "logit_diff", "ablation": "mean",
                             "data": {"task": "ioi", "n": 100, "split": ["train", 0]}, "steps": (1, 2)},
                       model="tiny-gqa")
    text = g.to_json(tmp_path / "g.json")
    back = ComponentGraph.from_json(text)
    assert back == g and ComponentGraph.from_json(tmp_path / "g.json") == g
    assert back.score("input->L0H0.q") == math.inf and back.score("input->L0H3.q") == 0.1 + 0.2
    assert back.meta["steps"] == [1, 2] and math.isnan(back.node_scores[Node("input")])
    data = json.loads(text)  # strict JSON: no NaN/Infinity tokens
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert data["format"] == "mechpatch.ComponentGraph" and data["spec"]["n_kv_heads"] == 2
    pos = ComponentGraph(ATTN_ONLY, {"input@1->L0H0.k@1": 2.0}, in_circuit=["L0H1@0->logits@0"], n_pos=2, causal=False)
    assert ComponentGraph.from_json(pos.to_json()) == pos
    assert ComponentGraph.from_json(pos.to_json()) != ComponentGraph(ATTN_ONLY, {"input@1->L0H0.k@1": 2.0}, n_pos=2)
    with pytest.raises(CircuitError, match="from_mib"):
        ComponentGraph.from_json(json.dumps({"cfg": {}, "edges": {}}))
    with pytest.raises(CircuitError, match="has no 'edges'"):
        ComponentGraph.from_json(json.dumps({"format": "mechpatch.ComponentGraph", "version": 1, "spec": {}}))
    with pytest.raises(CircuitError, match="neither JSON text nor an existing file"):
        ComponentGraph.from_json(tmp_path / "missing.json")


def test_construction_from_other_results_and_bad_input():
    # a DiscoveryResult-style mapping of (sender, receiver) pairs, and the kept edges as pairs
    scores = {("L0H0", "L1H1.v"): 0.5, ("L1H1", "logits"): -1.0}
    g = ComponentGraph(SMALL, scores, in_circuit=list(scores), meta={"method": "ACDC"})
    assert g.edge_scores(circuit_only=True) == {"L0H0->L1H1.v": 0.5, "L1H1->logits": -1.0}
    assert g.with_meta(tau=0.1).meta == {"method": "ACDC", "tau": 0.1} and g.meta == {"method": "ACDC"}
    assert g.with_circuit(torch.zeros(graph_layout(SMALL).shape, dtype=torch.bool)).n_in_circuit == 0
    with pytest.raises(CircuitError, match=r"\[10, 22\]"):
        ComponentGraph(SMALL, torch.zeros(3, 3))
    bad = torch.zeros(graph_layout(SMALL).shape)
    bad[6, 0] = 1.0  # L1.mlp -> L0H0.q
    with pytest.raises(CircuitError, match="L1.mlp -> L0H0.q, which is not an edge"):
        ComponentGraph(SMALL, bad)
    with pytest.raises(CircuitError, match="JSON values only"):
        ComponentGraph(SMALL, meta={"model": object()})
    with pytest.raises(CircuitError, match="sends nothing"):
        ComponentGraph(SMALL, node_scores={"logits": 1.0})


# ----------------------------------------------------------------------------- networkx, DOT, MIB


def test_networkx_export():
    g = ComponentGraph(GQA, {"L0H0->L1H2.q": 1.0, "L0H0->L1G1.k": -2.0, "L0H0->L1G1.v": 0.5, "L1H2->logits": 3.0,
                             "input->L0H0.q": 0.25}, node_scores={"L0H0": 0.7}, meta={"method": "m"}, model="x")
    g = g.threshold(0.1)
    d = g.to_networkx()
    assert isinstance(d, nx.MultiDiGraph) and d.graph["model"] == "x" and d.graph["meta"] == {"method": "m"}
    assert d.number_of_edges() == 5
    assert set(d["L0H0"]["L1G1"]) == {"k", "v"} and d["L0H0"]["L1G1"]["k"]["score"] == -2.0
    assert d["L0H0"]["L1H2"]["q"]["label"] == "L0H0->L1H2.q" and d["L1H2"]["logits"][""]["input"] is None
    assert d.nodes["L1G1"]["heads"] == ["L1H2", "L1H3"] and d.nodes["L0H0"]["score"] == 0.7
    assert nx.has_path(d, "input", "logits")
    full = g.to_networkx(circuit_only=False)
    assert full.number_of_edges() == g.n_edges
    assert sum(1 for *_, c in full.edges(data="in_circuit") if c) == 5


def test_dot_export():
    g = ComponentGraph(SMALL, {"input->L0H0.q": 1.0, "L0H0->L1H1.k": 0.5, "L0H0->L1H1.v": -0.25, "L1H1->logits": 2.0,
                               "L0H1->L1.mlp": math.nan}, in_circuit=["input->L0H0.q", "L0H0->L1H1.k", "L0H0->L1H1.v",
                                                                    "L1H1->logits", "L0H1->L1.mlp"], model="m\"x")
    dot = g.to_dot()
    assert dot.startswith('digraph "m\\"x" {') and dot.rstrip().endswith("}")
    edge_lines = [line for line in dot.splitlines() if "->" in line and "[label=" in line]
    assert len(edge_lines) == 5
    assert '"L0H0" -> "L1H1" [label="k", color="#2ca02c"' in dot
    assert '"L0H0" -> "L1H1" [label="v", color="#d62728"' in dot
    assert '"input" -> "L0H0" [label="q", color="#1f77b4", penwidth=2.75' in dot
    assert '"L1H1" -> "logits" [label="", color="#555555", penwidth=5,' in dot
    assert 'style="dotted"' in dot and "tooltip=\"L0H0->L1H1.v score=-0.25\"" in dot
    assert len([line for line in g.to_dot(circuit_only=False).splitlines() if "[label=" in line]) == g.n_edges


def _mib_edge_count(spec):
    """MIB/EAP-IG count edges per query head: every key/value input is per head."""
    return _count(dataclasses.replace(spec, n_kv_heads=spec.n_heads))


def test_mib_export_names_and_round_trip(tmp_path):
    g = _scored(SMALL, seed=4).top_k(10).with_meta(method="eap")
    data = g.to_mib(tmp_path / "c.json")
    assert data["cfg"] == {"n_layers": 3, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8}
    assert len(data["edges"]) == _count(SMALL)
    assert list(data["nodes"])[:4] == ["input", "a0.h0", "a0.h1", "m0"]
    assert data["nodes"]["logits"] == {"in_graph": True}
    for e in g.edges:
        name = {"L0H1->L2H0.k": "a0.h1->a2.h0<k>", "input->L1.mlp": "input->m1", "L2.mlp->logits": "m2->logits",
                "L0.mlp->L1H1.q": "m0->a1.h1<q>"}.get(e.label)
        if name:
            assert data["edges"][name] == {"score": g.score(e), "in_graph": e in g.in_circuit}
    assert json.load(open(tmp_path / "c.json")) == data
    back = ComponentGraph.from_mib(tmp_path / "c.json", SMALL, meta=g.meta)
    assert back == g
    # node in_graph: an outgoing and an incoming circuit edge
    pruned = g.prune()
    nodes = pruned.to_mib()["nodes"]
    expected = {n.label for n in pruned.nodes_in_circuit} - {"logits"}
    names = {"input": "input", **{f"a{l}.h{h}": f"L{l}H{h}" for l in range(3) for h in range(2)},
             **{f"m{l}": f"L{l}.mlp" for l in range(3)}}
    assert {names[k] for k, v in nodes.items() if k != "logits" and v["in_graph"]} == expected


def test_mib_gpt2_small_names():
    lay = graph_layout(GPT2_SMALL)
    g = ComponentGraph(GPT2_SMALL, torch.where(lay.valid, torch.ones(lay.shape), torch.zeros(lay.shape)),
                       in_circuit=["input->L0H1.q", "L0H1->L0.mlp", "L11.mlp->logits"])
    data = g.to_mib()
    assert len(data["edges"]) == 32491
    # names as they appear in MIB's example circuit (circuits/ioi-eap-ig.json)
    for name in ("input->a0.h0<q>", "input->a0.h11<v>", "input->m0", "a0.h1->m0", "a0.h0->a1.h0<q>", "m11->logits"):
        assert name in data["edges"]
    assert data["edges"]["a0.h1->m0"]["in_graph"] and not data["edges"]["a0.h0->m0"]["in_graph"]
    assert len(data["nodes"]) == 1 + 12 * 13 + 1


def test_mib_gqa_binary_and_refusals():
    g = _scored(GQA, seed=6).threshold(1.0)
    data = g.to_mib()
    assert len(data["edges"]) == _mib_edge_count(GQA)
    # group 1 of layer 1 is heads 2 and 3: each gets the group's score and membership
    s = g.score("L0H0->L1G1.k")
    assert data["edges"]["a0.h0->a1.h2<k>"]["score"] == data["edges"]["a0.h0->a1.h3<k>"]["score"] == s
    assert ComponentGraph.from_mib(data, GQA, meta=g.meta) == g
    binary = ComponentGraph(GQA, in_circuit=["input->L0G0.v", "L0H1->logits"])
    bdata = binary.to_mib()
    assert all(set(v) == {"in_graph"} for v in bdata["edges"].values())
    assert sum(v["in_graph"] for v in bdata["edges"].values()) == 3  # the group edge once per head, + 1
    assert ComponentGraph.from_mib(bdata, GQA, meta={}) == binary
    partial = ComponentGraph(GQA, {"input->logits": 1.0})
    with pytest.raises(CircuitError, match="nan_score=0.0"):
        partial.to_mib()
    assert partial.to_mib(nan_score=0.0)["edges"]["input->a0.h0<q>"] == {"score": 0.0, "in_graph": True}
    with pytest.raises(UnsupportedSiteError, match="always have MLP nodes"):
        ComponentGraph(ATTN_ONLY).to_mib()
    with pytest.raises(CircuitError, match="not position-resolved"):
        ComponentGraph(SMALL, n_pos=2).to_mib()
    with pytest.raises(CircuitError, match="n_layers=2; this spec has 3"):
        ComponentGraph.from_mib(data, SMALL)
    with pytest.raises(CircuitError, match="not a MIB edge name"):
        ComponentGraph.from_mib({"cfg": {}, "edges": {"a0.h0->a1.h0": {"in_graph": True}}}, GQA)


# ----------------------------------------------------------------------------- display


def test_graph_figure_traces_and_hover():
    scores = {"input->L0H1.q": 1.0, "L0H1->L1G0.k": -2.0, "L0H1->L1G0.v": 0.5, "L1H0->logits": 0.25,
              "input->L1H0.q": math.nan}
    g = ComponentGraph(GQA, scores, in_circuit=list(scores), meta={"method": "EAP"})
    fig = graph_figure(g)
    assert isinstance(fig, go.Figure)
    kinds = 4  # q, k, v and MLP/logits inputs drawn
    assert len(fig.data) == 5 + 2 + kinds
    lines = fig.data[:5]
    assert [t.line.dash for t in lines] == ["dash", "dot", "dashdot", "solid", "dot"]  # by |score|, unscored last
    assert lines[0].line.width > lines[1].line.width > lines[2].line.width
    assert all(t.x[0] < t.x[-1] for t in lines)  # left to right: input at the left, logits at the right
    assert lines[0].y[-1] == pytest.approx(lines[2].y[-1] + 0.22)  # q/k/v arrive apart on the head (or group)
    mids = fig.data[5]
    assert "L0H1->L1G0.k<br>score -2.0" in mids.hovertext[0] and "score nan" in mids.hovertext[4]
    assert [t.name for t in fig.data[6:6 + kinds]] == ["query (q)", "key (k)", "value (v)", "MLP / logits input"]
    assert set(fig.data[-1].text) == {"input", "L0H1", "L1G0", "L1H0", "logits"}
    assert "(EAP)" in fig.layout.title.text
    few = graph_figure(g, max_edges=2)
    assert len(few.data) == 2 + 2 + 2 and "3 weaker edges not drawn" in few.layout.title.text
    every = graph_figure(_scored(ATTN_ONLY, seed=0, n_pos=2), circuit_only=False, max_edges=10)
    drawn = {t.line.dash for t in every.data[:10]}
    assert len(every.data) == 10 + 2 + len(drawn) and len(every.data[-1].x) == 2 * (1 + 2 * 2 + 1)
    assert len(graph_figure(ComponentGraph(SMALL, in_circuit=[])).data) == 2


def test_repr_and_html():
    g = _scored(SMALL, seed=2).top_k(20)
    text = repr(g)
    assert text.startswith("ComponentGraph(model='unknown', layers=3, heads=2, edges=") and "circuit=20 edges" in text
    assert "method='random'" in text
    page = g._repr_html_()
    assert page.count("<tr><td>") == 15 and "... and 5 more circuit edges" in page and "random" in page


def test_importing_the_circuit_package_does_not_import_plotly():
    code = "import sys, mechpatch.circuit; print('plotly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
