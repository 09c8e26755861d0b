"""A :class:`~mechpatch.circuit.graph.ComponentGraph` in other formats: networkx, Graphviz DOT, MIB's circuit JSON.

The graph's methods (``to_networkx``, ``to_dot``, ``to_mib``, ``from_mib``) call these functions; this module
does not import the graph class (the writers read any graph object, :func:`read_mib` returns plain data that
``ComponentGraph.from_mib`` builds a graph from).

**MIB** (Mueller et al. 2025, circuit localization track) takes circuits as EAP-IG's ``Graph.to_json``
files (``hannamw/EAP-IG: src/eap/graph.py``, read by MIB's ``MIB_circuit_track/circuit_loading.py``;
example: ``circuits/ioi-eap-ig.json`` in the MIB circuit-track repository)::

    {"cfg": {"n_layers": 12, "n_heads": 12, "parallel_attn_mlp": false, "d_model": 768},
     "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": false}, ..., "m0": {...}, ...,
               "logits": {"in_graph": true}},
     "edges": {"input->a0.h0<q>": {"score": -0.000296, "in_graph": false}, ..., "a0.h1->m0": {...}, ...,
               "m11->logits": {...}}}

Names: ``input`` = ``input``, ``L{l}H{h}`` = ``a{l}.h{h}``, ``L{l}.mlp`` = ``m{l}``, ``logits`` = ``logits``;
an edge is ``"<sender>-><receiver>"`` with ``<q>``, ``<k>`` or ``<v>`` after a head receiver:
``L0H2->L1H0.k`` = ``a0.h2->a1.h0<k>``, ``input->L0.mlp`` = ``input->m0``, ``L11.mlp->logits`` = ``m11->logits``.
A submission is one importance-score file per task/model (every edge has a ``score``) or binary circuits
(``in_graph`` only); :func:`to_mib` writes the first when the graph has scores, the second when it has
none. A node gets a ``score`` only when the graph has node scores (then every node does; NaN means
unscored, which EAP-IG keeps in the graph). A node's ``in_graph`` is EAP-IG's: it has an outgoing circuit
edge and an incoming one (the input always counts as having one); ``logits`` is always in the graph.

Not confirmed from MIB's sources, so chosen here and stated:

- **GQA models** (MIB's Qwen-2.5, Gemma-2, Llama-3.1): EAP-IG builds their graphs with TransformerLens's
  ``ungroup_grouped_query_attention``, so its key/value edges are per query head (``a1.h5<k>``), while
  mechpatch's end at the group (``L1G1.k``). :func:`to_mib` writes a group edge once per head of the group,
  each with the group's score and membership; :func:`read_mib` gives the group edge the mean of its heads'
  scores (exact for files :func:`to_mib` wrote) and puts it in the circuit if any head's edge is.
- Edges a file leaves out are unscored (NaN) and out of the circuit (EAP-IG would read score 0).
- Attention-only and position-resolved graphs have no MIB form (EAP-IG graphs always have MLP nodes and
  no positions): :func:`to_mib` refuses them.
"""

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional, Union

import torch
from torch import Tensor

from mechpatch.circuit.components import CircuitError, Edge, Node, graph_layout
from mechpatch.errors import UnsupportedSiteError
from mechpatch.sites import ModelSpec

#: DOT colours of edges by the input they reach (q/k/v of a head; None: an MLP or the logits)
INPUT_COLOURS = {"q": "#1f77b4", "k": "#2ca02c", "v": "#d62728", None: "#555555"}


def _edges(graph: Any, circuit_only: bool) -> list[tuple[Edge, float, bool]]:
    scores, circuit = graph._edge_values().tolist(), graph._edge_circuit().tolist()
    return [(e, s, c) for e, s, c in zip(graph.edges, scores, circuit) if c or not circuit_only]


def _nodes(graph: Any, edges: list[tuple[Edge, float, bool]], circuit_only: bool) -> list[Node]:
    """Nodes to draw: the circuit's (with any GQA group its edges enter), or every node."""
    lay = graph.layout
    if circuit_only:
        nodes = list(graph.nodes_in_circuit)
        groups = {e.receiver for e, _, _ in edges if e.receiver.kind == "group"}
        return nodes + sorted(groups - set(nodes), key=lambda n: (n.stage, n.pos or 0, n.unit))
    per_pos = list(lay.senders) + sorted({n for n, _ in lay.receivers if n.kind == "group"},
                                         key=lambda n: (n.stage, n.unit)) + [Node("logits")]
    return per_pos if graph.n_pos is None else [n.at(p) for p in range(graph.n_pos) for n in per_pos]


def to_networkx(graph: Any, circuit_only: bool = True) -> Any:
    """A ``networkx.MultiDiGraph``: nodes by label, one edge per graph edge keyed by its input.

    Node attributes: ``kind``, ``layer``, ``unit``, ``pos``, ``score`` (node score, NaN if none); a GQA group
    (a receiver of key/value edges only) also has ``heads``. Edge attributes: ``input`` (q/k/v or None),
    ``score``, ``in_circuit``, ``label`` (the edge label); the key is the input (``""`` for MLPs and logits),
    so the q, k and v edges between two heads stay apart. Graph attributes: ``model``, ``meta``, ``spec``,
    ``n_pos``.

    Raises:
        ModuleNotFoundError: networkx is not installed (it comes with torch; else ``pip install networkx``).
    """
    try:
        import networkx as nx
    except ImportError:  # pragma: no cover - torch depends on networkx
        raise ModuleNotFoundError(
            "ComponentGraph.to_networkx needs networkx: `pip install networkx` (torch usually installs it)"
        ) from None
    spec = graph.spec
    out = nx.MultiDiGraph(model=graph.model, meta=dict(graph.meta), spec=dataclasses.asdict(spec), n_pos=graph.n_pos)
    edges = _edges(graph, circuit_only)
    node_scores = graph.node_scores
    for node in _nodes(graph, edges, circuit_only):
        attrs = dict(kind=node.kind, layer=node.layer, unit=node.unit, pos=node.pos,
                     score=node_scores.get(node, math.nan))
        if node.kind == "group":
            rep = spec.n_heads // spec.n_kv_heads
            attrs["heads"] = [Node("head", node.layer, h, node.pos).label
                              for h in range(node.unit * rep, (node.unit + 1) * rep)]
        out.add_node(node.label, **attrs)
    for e, score, inc in edges:
        out.add_edge(e.sender.label, e.receiver.label, key=e.input or "", input=e.input, score=score,
                     in_circuit=inc, label=e.label)
    return out


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: Any, circuit_only: bool = True) -> str:
    """Graphviz DOT text: left to right by layer, one rank per attention/MLP stage, edges coloured by the input
    they reach (q blue, k green, v red, MLP/logits grey) and labelled q/k/v, width by ``|score|``, the exact
    score in the tooltip. Unscored edges of a scored graph are dotted; edges outside the circuit
    (``circuit_only=False``) grey and dashed.

    >>> from mechpatch.circuit.graph import ComponentGraph
    >>> from mechpatch.sites import ModelSpec
    >>> spec = ModelSpec(n_layers=2, n_heads=1, d_model=4, d_head=4, d_vocab=5, n_ctx=4, attn_only=True)
    >>> g = ComponentGraph(spec, {"L0H0->L1H0.k": 1.0, "L1H0->logits": 0.5}).threshold(0.1)
    >>> print(to_dot(g).splitlines()[-3])
      "L0H0" -> "L1H0" [label="k", color="#2ca02c", penwidth=5, tooltip="L0H0->L1H0.k score=1.0"];
    """
    edges = _edges(graph, circuit_only)
    nodes = _nodes(graph, edges, circuit_only)
    finite = [abs(s) for _, s, _ in edges if math.isfinite(s)]
    top = max(finite, default=0.0) or 1.0
    name = graph.model or graph.spec.architecture
    lines = [f"digraph {_quote(name)} {{", "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fillcolor="#f0f0f0"];']
    fill = {"input": "#c7e9c0", "logits": "#fdd0a2", "mlp": "#dadaeb", "group": "#ffffff"}
    node_scores = graph.node_scores
    stages: dict[tuple[int, Optional[int]], list[str]] = {}
    for node in nodes:
        score = node_scores.get(node)
        extra = f", tooltip={_quote(f'{node.label} score={score!r}')}" if score is not None else ""
        lines.append(f"  {_quote(node.label)} [fillcolor={_quote(fill.get(node.kind, '#f0f0f0'))}{extra}];")
        stages.setdefault((node.stage, node.pos), []).append(_quote(node.label))
    for members in stages.values():
        if len(members) > 1:
            lines.append(f"  {{ rank=same; {'; '.join(members)}; }}")
    any_scored = graph.n_scored > 0
    for e, score, inc in edges:
        scored = math.isfinite(score)
        width = 0.5 + 4.5 * min(abs(score) / top, 1.0) if scored else 1.0
        styles = ([] if scored or not any_scored else ["dotted"]) + ([] if inc else ["dashed"])
        colour = INPUT_COLOURS[e.input] if inc else "#bbbbbb"
        attrs = f"label={_quote(e.input or '')}, color={_quote(colour)}, penwidth={width:.3g}"
        attrs += f", style={_quote(','.join(styles))}" if styles else ""
        attrs += f", tooltip={_quote(f'{e.label} score={score!r}')}"
        lines.append(f"  {_quote(e.sender.label)} -> {_quote(e.receiver.label)} [{attrs}];")
    lines.append("}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- MIB


def _mib_node(node: Node) -> str:
    if node.kind in ("input", "logits"):
        return node.kind
    if node.kind == "mlp":
        return f"m{node.layer}"
    return f"a{node.layer}.h{node.unit}"


_MIB_EDGE = re.compile(
    r"^(?:input|a(?P<sl>\d+)\.h(?P<sh>\d+)|m(?P<sm>\d+))"
    r"->(?:logits|m(?P<rm>\d+)|a(?P<rl>\d+)\.h(?P<rh>\d+)<(?P<inp>[qkv])>)$"
)


def _mib_check(graph: Any) -> None:
    if graph.n_pos is not None:
        raise CircuitError("MIB circuits are not position-resolved; build the graph without n_pos")
    if not graph.spec.has_mlp:
        raise UnsupportedSiteError(
            "MIB (EAP-IG) graphs always have MLP nodes; an attention-only model's graph has no MIB form"
        )


def to_mib(graph: Any, path: Union[str, os.PathLike, None] = None,
           nan_score: Optional[float] = None) -> dict[str, Any]:
    """The graph as MIB circuit-submission data (see the module docstring), written to ``path`` if given.

    Args:
        graph: a graph of a model with MLPs, not position-resolved.
        path: a ``.json`` file to write (atomically).
        nan_score: the score to write for unscored edges when some edges are scored; by default such a graph
            is refused (MIB ranks every edge by its score). A graph with no scores at all is written as a
            binary circuit (``in_graph`` only).

    Returns:
        The JSON data (``cfg``, ``nodes``, ``edges``).

    >>> from mechpatch.circuit.graph import ComponentGraph
    >>> from mechpatch.sites import ModelSpec
    >>> spec = ModelSpec(n_layers=1, n_heads=2, d_model=8, d_head=4, d_vocab=5, n_ctx=4)
    >>> g = ComponentGraph(spec, torch.zeros(4, 8)).with_circuit(["input->L0H1.k", "L0H1->logits"])
    >>> data = to_mib(g)
    >>> data["cfg"]
    {'n_layers': 1, 'n_heads': 2, 'parallel_attn_mlp': False, 'd_model': 8}
    >>> data["edges"]["input->a0.h1<k>"], data["nodes"]["a0.h1"], data["nodes"]["a0.h0"]
    ({'score': 0.0, 'in_graph': True}, {'in_graph': True}, {'in_graph': False})
    """
    _mib_check(graph)
    spec, lay = graph.spec, graph.layout
    scores = graph._edge_values()
    unscored = scores.isnan()
    with_scores = not bool(unscored.all())
    if with_scores and bool(unscored.any()):
        if nan_score is None:
            raise CircuitError(
                f"{int(unscored.sum())} of {graph.n_edges} edges are unscored; MIB ranks every edge by its score: "
                "pass nan_score=0.0 (or another value) to write them with that score"
            )
        scores = torch.where(unscored, torch.full_like(scores, float(nan_score)), scores)
    circuit = graph._edge_circuit().tolist()
    rep = spec.n_heads // spec.n_kv_heads
    edges: dict[str, dict[str, Any]] = {}
    for e, score, inc in zip(graph.edges, scores.tolist(), circuit):
        sender = _mib_node(e.sender)
        if e.receiver.kind == "group":
            heads = range(e.receiver.unit * rep, (e.receiver.unit + 1) * rep)
            targets = [f"a{e.receiver.layer}.h{h}<{e.input}>" for h in heads]
        elif e.receiver.kind == "head":
            targets = [f"{_mib_node(e.receiver)}<{e.input}>"]
        else:
            targets = [_mib_node(e.receiver)]
        for target in targets:
            edges[f"{sender}->{target}"] = {"score": score, "in_graph": inc} if with_scores else {"in_graph": inc}
    # EAP-IG's node in_graph: an outgoing and an incoming circuit edge (the input counts as having one)
    c = graph._circuit
    outgoing = c.any(1)
    entered = (c.any(0).float() @ (lay.feeds_same | lay.feeds_kv).float()) > 0
    entered[0] = True
    node_scores = graph.node_scores
    nodes: dict[str, dict[str, Any]] = {}
    for i, node in enumerate(lay.senders):
        entry: dict[str, Any] = {"in_graph": bool(outgoing[i] and entered[i])}
        if node_scores:
            entry["score"] = node_scores.get(node, math.nan)
        nodes[_mib_node(node)] = entry
    nodes["logits"] = {"in_graph": True}
    data = {"cfg": {"n_layers": spec.n_layers, "n_heads": spec.n_heads, "parallel_attn_mlp": False,
                    "d_model": spec.d_model}, "nodes": nodes, "edges": edges}
    if path is not None:
        from mechpatch.report import write_text

        write_text(os.fspath(path), json.dumps(data))
    return data


class MibCircuit(NamedTuple):
    """A MIB circuit file read for one model shape (:func:`read_mib`): what a graph is built from."""

    scores: Tensor  # float64 [sender receiver] of graph_layout(spec); NaN: not scored
    in_circuit: Tensor  # bool, same shape
    node_scores: dict[str, float]  # node label -> score (NaN scores left out)


def read_mib(source: Union[Mapping[str, Any], str, os.PathLike], spec: ModelSpec) -> MibCircuit:
    """Read MIB circuit JSON (data or a file) for a model of shape ``spec``; ``ComponentGraph.from_mib`` makes it
    a graph.

    Edge scores and ``in_graph`` become dense scores and a circuit mask; node scores are read where present
    (NaN ones are left out).

    Raises:
        CircuitError: the file's ``cfg`` does not match ``spec`` (layers, heads, d_model), says
            ``parallel_attn_mlp``, or names an edge or node that is not MIB's.
    """
    data = _mib_data(source, spec)
    lay = graph_layout(spec)
    if not spec.has_mlp:
        raise UnsupportedSiteError("MIB (EAP-IG) graphs always have MLP nodes; this spec is attention-only")
    rep = spec.n_heads // spec.n_kv_heads
    total = torch.zeros(lay.shape, dtype=torch.float64)
    count = torch.zeros(lay.shape, dtype=torch.int64)
    circuit = torch.zeros(lay.shape, dtype=torch.int64)  # heads of a group whose edge is in the circuit
    flat: list[int] = []
    values: list[float] = []
    member: list[bool] = []
    for name, info in data["edges"].items():
        flat.append(lay.flat(lay.label_index(_mib_edge_label(name, spec, rep))))
        score = info.get("score")
        values.append(math.nan if score is None else float(score))
        member.append(bool(info.get("in_graph", False)))
    index, values_t = torch.tensor(flat, dtype=torch.long), torch.tensor(values, dtype=torch.float64)
    scored = ~values_t.isnan()
    total.view(-1).index_add_(0, index[scored], values_t[scored])
    count.view(-1).index_add_(0, index[scored], torch.ones(int(scored.sum()), dtype=torch.int64))
    circuit.view(-1).index_add_(0, index, torch.tensor(member, dtype=torch.int64))
    scores = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))
    return MibCircuit(scores, circuit > 0, _mib_node_scores(data, lay, spec))


def _mib_data(source: Union[Mapping[str, Any], str, os.PathLike], spec: ModelSpec) -> Mapping[str, Any]:
    """MIB circuit JSON (given, or read from a file), checked to be a MIB file for a model of shape ``spec``."""
    if isinstance(source, Mapping):
        data = source
    else:
        with open(os.fspath(source), encoding="utf-8") as fh:
            data = json.load(fh)
    for key in ("cfg", "edges"):
        if key not in data:
            raise CircuitError(f"not a MIB circuit file: no {key!r} key (it has {sorted(data)}); MIB files have "
                               "'cfg', 'nodes' and 'edges'")
    cfg = data["cfg"]
    for key in ("n_layers", "n_heads", "d_model"):
        if key in cfg and cfg[key] != getattr(spec, key):
            raise CircuitError(f"the MIB file is for a model with {key}={cfg[key]}; this spec has {getattr(spec, key)}")
    if cfg.get("parallel_attn_mlp"):
        raise CircuitError("the MIB file is for a model with parallel attention and MLP; mechpatch's graph has "
                           "sequential blocks")
    return data


def _mib_edge_label(name: str, spec: ModelSpec, rep: int) -> str:
    """mechpatch's label of the MIB edge ``name`` (``"a0.h1->a2.h3<q>"`` -> ``"L0H1->L2H3.q"``); a GQA model's
    k/v inputs are its head groups' (``rep`` heads per group)."""
    m = _MIB_EDGE.match(name)
    if m is None:
        raise CircuitError(f"{name!r} is not a MIB edge name; valid forms: 'input->a0.h1<q>', 'a0.h1->m0', "
                           "'m3->a4.h2<k>', 'm11->logits'")
    sender = name.split("->")[0]
    if sender == "input":
        s_label = "input"
    elif m["sm"] is not None:
        s_label = f"L{m['sm']}.mlp"
    else:
        s_label = f"L{m['sl']}H{m['sh']}"
    if m["rm"] is not None:
        r_label = f"L{m['rm']}.mlp"
    elif m["rl"] is not None:
        head = int(m["rh"])
        if spec.is_gqa and m["inp"] in "kv":
            r_label = f"L{m['rl']}G{head // rep}.{m['inp']}"
        else:
            r_label = f"L{m['rl']}H{head}.{m['inp']}"
    else:
        r_label = "logits"
    return f"{s_label}->{r_label}"


def _mib_node_scores(data: Mapping[str, Any], lay: Any, spec: ModelSpec) -> dict[str, float]:
    """Node label -> score of the MIB file's scored nodes (NaN scores left out)."""
    node_scores = {}
    mib_to_label = {_mib_node(n): n.label for n in lay.senders}
    for name, info in data.get("nodes", {}).items():
        if name == "logits":
            continue
        if name not in mib_to_label:
            raise CircuitError(f"{name!r} is not a node of this model in MIB's names (valid: 'input', 'a<l>.h<h>', "
                               f"'m<l>', 'logits', with layers < {spec.n_layers} and heads < {spec.n_heads})")
        score = info.get("score")
        if score is not None and not math.isnan(float(score)):
            node_scores[mib_to_label[name]] = float(score)
    return node_scores


__all__ = ["INPUT_COLOURS", "MibCircuit", "read_mib", "to_dot", "to_mib", "to_networkx"]
