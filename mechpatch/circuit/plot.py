"""A :class:`~mechpatch.circuit.graph.ComponentGraph` as a plotly figure, for notebooks. A leaf: returns, never shows.

Layered layout: x is the stage of the forward pass (input at the left, then each layer's attention and
MLP, logits at the right), heads spread vertically within their stage, MLPs on a row below them
(position-resolved graphs stack one band per position). One curve per edge, arching over the stages it
skips: width by ``|score|``, colour by score (red positive, blue
negative, grey unscored), dash by the input it reaches (q dotted, k dashed, v dash-dot, MLP/logits
solid; q/k/v lines also end slightly apart on the head). Hovering an edge's midpoint or a node shows
its exact score.

Traces, in order: one per drawn edge, the edge midpoints (hover and colour bar), one legend entry per
input kind drawn, the nodes. So ``len(fig.data) == n_edges + 2 + n_input_kinds``.
"""

import math
from typing import Optional

import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from torch import Tensor

from mechpatch.circuit.components import CircuitError, Node
from mechpatch.circuit.graph import ComponentGraph
from mechpatch.circuit.result import DiscoveryResult

DASH = {"q": "dot", "k": "dash", "v": "dashdot", None: "solid"}
INPUT_NAMES = {"q": "query (q)", "k": "key (k)", "v": "value (v)", None: "MLP / logits input"}
_QKV_OFFSET = {"q": 0.22, "k": 0.0, "v": -0.22, None: 0.0}
_NODE_COLOURS = {"input": "#74c476", "head": "#6baed6", "group": "#ffffff", "mlp": "#9e9ac8", "logits": "#fd8d3c"}


def _stage_x(graph: ComponentGraph) -> dict[int, int]:
    """Stage -> x column: input 0, each layer's attention (and MLP), logits last."""
    stages = sorted({n.stage for n in graph.layout.senders} | {Node("logits").stage})
    return {stage: i for i, stage in enumerate(stages)}


def _xy(node: Node, graph: ComponentGraph, columns: dict[int, int]) -> tuple[float, float]:
    spec = graph.spec
    band = (spec.n_heads + 3) * (node.pos or 0)  # position-resolved: one band per position, position 0 on top
    if node.kind == "head":
        y = (spec.n_heads - 1) / 2 - node.unit
    elif node.kind == "group":
        rep = spec.n_heads // spec.n_kv_heads
        y = (spec.n_heads - 1) / 2 - (node.unit * rep + (rep - 1) / 2)
    elif node.kind == "mlp":
        y = -(spec.n_heads + 1) / 2  # MLPs on a row below the heads, so the MLP chain does not run through them
    else:
        y = 0.0
    return float(columns[node.stage]), y - band


def _curve(x0: float, y0: float, x1: float, y1: float, n: int = 16) -> tuple[list[float], list[float]]:
    """A quadratic Bezier from (x0, y0) to (x1, y1) arching up by the number of stages it skips."""
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + 0.35 * max(0.0, x1 - x0 - 1)
    ts = [i / (n - 1) for i in range(n)]
    xs = [(1 - t) ** 2 * x0 + 2 * t * (1 - t) * cx + t ** 2 * x1 for t in ts]
    ys = [(1 - t) ** 2 * y0 + 2 * t * (1 - t) * cy + t ** 2 * y1 for t in ts]
    return xs, ys


def graph_figure(
    graph: ComponentGraph,
    circuit_only: bool = True,
    max_edges: int = 400,
    title: Optional[str] = None,
) -> go.Figure:
    """The graph's circuit (or every edge) as a layered plotly figure; see the module docstring.

    Args:
        graph: a scored or unscored graph.
        circuit_only: draw the circuit's edges and nodes (default), or every edge and node.
        max_edges: draw at most this many edges, the highest ``|score|`` first (the title says how many
            were left out); one trace per edge keeps plotly responsive only up to a few hundred.
        title: the figure title (default: the model, the edge count and ``meta``'s method and metric).

    >>> from mechpatch.sites import ModelSpec
    >>> spec = ModelSpec(n_layers=2, n_heads=2, d_model=8, d_head=4, d_vocab=10, n_ctx=8)
    >>> g = ComponentGraph(spec, {"input->L0H1.q": 1.0, "L0H1->L1H0.k": -2.0, "L1H0->logits": 0.5}).threshold(0.1)
    >>> len(graph_figure(g).data)  # 3 edges, midpoints, legend entries for q, k and MLP/logits, nodes
    8
    """
    if isinstance(max_edges, bool) or not isinstance(max_edges, int) or max_edges < 0:
        raise CircuitError(f"max_edges must be an int >= 0; got {max_edges!r}")
    columns = _stage_x(graph)
    scores, in_circuit = graph._edge_values(), graph._edge_circuit()
    chosen = in_circuit if circuit_only else scores.new_ones(scores.shape, dtype=bool)
    key = scores.abs().nan_to_num(nan=-1.0)
    order = [i for i in key.argsort(descending=True, stable=True).tolist() if bool(chosen[i])]
    shown, left_out = order[:max_edges], max(0, len(order) - max_edges)

    fig = go.Figure()
    kinds_drawn, nodes = _draw_edges(fig, graph, columns, shown, scores, in_circuit)
    for kind in sorted(kinds_drawn, key=lambda k: "qkv".index(k) if k else 3):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=INPUT_NAMES[kind],
                                 line=dict(color="#444444", width=2, dash=DASH[kind])))
    for node in (_all_nodes(graph) if not circuit_only else graph.nodes_in_circuit):
        nodes.setdefault(node)
    _draw_nodes(fig, graph, columns, nodes)
    spec = graph.spec
    ticks = {0: "input", columns[Node("logits").stage]: "logits"}
    for layer in range(spec.n_layers):
        ticks[columns[2 * layer + 1]] = f"L{layer} attn"
        if spec.has_mlp:
            ticks[columns[2 * layer + 2]] = f"L{layer} mlp"
    about = ", ".join(f"{graph.meta[k]}" for k in ("method", "metric") if k in graph.meta)
    default = (f"{graph.model or spec.architecture}: {len(shown)} {'circuit ' if circuit_only else ''}edges"
               + (f" ({about})" if about else "") + (f"; {left_out} weaker edges not drawn" if left_out else ""))
    fig.update_layout(title=title if title is not None else default, template="plotly_white", hovermode="closest",
                      legend=dict(title="input reached"), height=max(350, 60 * spec.n_heads * (graph.n_pos or 1)))
    fig.update_xaxes(tickvals=sorted(ticks), ticktext=[ticks[k] for k in sorted(ticks)], showgrid=False, zeroline=False)
    fig.update_yaxes(visible=False)
    return fig


def _draw_edges(fig: go.Figure, graph: ComponentGraph, columns: dict[int, int], shown: list[int], scores: Tensor,
                in_circuit: Tensor) -> tuple[list[Optional[str]], dict[Node, None]]:
    """Add one curve per edge ``shown`` and the trace of their midpoints (hover text, colour bar) to ``fig``.

    Returns the inputs the edges reach (in the order first drawn) and their end nodes (an ordered set).
    """
    finite = [abs(float(scores[i])) for i in shown if math.isfinite(float(scores[i]))]
    top = max(finite, default=0.0) or 1.0
    edges = graph.edges
    mid_x, mid_y, mid_text, mid_score = [], [], [], []
    kinds_drawn: list[Optional[str]] = []
    nodes: dict[Node, None] = {}
    for i in shown:
        e, score = edges[i], float(scores[i])
        x0, y0 = _xy(e.sender, graph, columns)
        x1, y1 = _xy(e.receiver, graph, columns)
        y1 += _QKV_OFFSET[e.input]
        scored = math.isfinite(score)
        colour = sample_colorscale("RdBu", [0.5 - 0.5 * max(-1.0, min(1.0, score / top))])[0] if scored else "#bbbbbb"
        width = 0.75 + 5.25 * min(abs(score) / top, 1.0) if scored else 1.0
        xs, ys = _curve(x0, y0, x1, y1)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(color=colour, width=width, dash=DASH[e.input]), name=e.label))
        mid_x.append(xs[len(xs) // 2])
        mid_y.append(ys[len(ys) // 2])
        mid_text.append(f"{e.label}<br>score {score!r}" + ("" if bool(in_circuit[i]) else "<br>(not in circuit)"))
        mid_score.append(score if scored else math.nan)
        if e.input not in kinds_drawn:
            kinds_drawn.append(e.input)
        nodes.setdefault(e.sender)
        nodes.setdefault(e.receiver)
    fig.add_trace(go.Scatter(
        x=mid_x, y=mid_y, mode="markers", hovertext=mid_text, hoverinfo="text", showlegend=False, name="edges",
        marker=dict(size=7, opacity=0.35, color=mid_score, colorscale="RdBu", reversescale=True, cmid=0.0,
                    showscale=bool(finite), colorbar=dict(title="edge score")),
    ))
    return kinds_drawn, nodes


def _draw_nodes(fig: go.Figure, graph: ComponentGraph, columns: dict[int, int], nodes: dict[Node, None]) -> None:
    """Add the trace of ``nodes`` (labelled markers coloured by kind, hover: the node's score) to ``fig``."""
    node_scores = graph.node_scores
    xs, ys, labels, hover, colours = [], [], [], [], []
    for node in nodes:
        x, y = _xy(node, graph, columns)
        xs.append(x)
        ys.append(y)
        labels.append(node.label)
        score = node_scores.get(node)
        hover.append(node.label + (f"<br>score {score!r}" if score is not None else ""))
        colours.append(_NODE_COLOURS[node.kind])
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers+text", text=labels, textposition="top center",
                             hovertext=hover, hoverinfo="text", showlegend=False, name="nodes",
                             marker=dict(size=14, color=colours, line=dict(color="#333333", width=1))))


def _all_nodes(graph: ComponentGraph) -> list[Node]:
    lay = graph.layout
    base = list(lay.senders) + [n for n, _ in lay.receivers if n.kind == "group"] + [Node("logits")]
    return base if graph.n_pos is None else [n.at(p) for p in range(graph.n_pos) for n in base]


def _graph_figures(graph: ComponentGraph) -> list[go.Figure]:
    """The circuit as a layered figure; none when it is empty."""
    return [graph_figure(graph)] if graph.n_in_circuit else []


def _discovery_figures(result: DiscoveryResult) -> list[go.Figure]:
    """The discovered circuit (via ``to_graph``); none without a model spec or kept edges."""
    if result.spec is None or not result.edges:
        return []
    return [graph_figure(result.to_graph())]


#: result type -> its figures in a notebook (registered by :func:`mechpatch.display.figures_of`)
FIGURES = {ComponentGraph: _graph_figures, DiscoveryResult: _discovery_figures}

__all__ = ["DASH", "FIGURES", "INPUT_NAMES", "graph_figure"]
