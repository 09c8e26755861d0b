"""Interaction models as plotly figures, for notebooks and reports. A leaf: figures are returned, never shown.

- :func:`interaction_matrix`: N x N heatmap of pair effects (red = synergy, blue = redundancy, in the model's
  ``score`` signs), main-effect scores on the diagonal's hover.
- :func:`top_interactions`: horizontal bars of the ``k`` strongest terms, coloured by kind; with ``truth``,
  the exhaustive measurement of the same terms beside them.
- :func:`token_figure`: a token-interaction model (:mod:`mechpatch.interactions.tokens`) as its prompt: each token
  coloured by its main score, the ``k`` strongest pairs as arcs above the text (width by ``|effect|``).
- :func:`interaction_network`: components as nodes (layer x head grid when they are heads), the ``k``
  strongest pairs as edges (width by ``|effect|``, red synergy, blue redundancy).
"""

import math
from typing import Optional

import plotly.graph_objects as go

from mechpatch.interactions.basis import InteractionError
from mechpatch.interactions.results import InteractionModel

COLOURS = {"synergy": "#d6604d", "redundancy": "#4393c3", "main": "#999999"}


def interaction_matrix(model: InteractionModel, title: Optional[str] = None) -> go.Figure:
    """Pair scores as a symmetric heatmap (positive = synergy, negative = redundancy; the diagonal is blank).

    Colour is ``score`` (the sign-normalised effect, see :mod:`mechpatch.interactions.results`); hover shows the
    raw effect and the kind.
    """
    from mechpatch.plotting import heatmap

    n = model.n_components
    pairs = model.pair_matrix()
    score = pairs * model.polarity  # pair scores = polarity * effect in both directions
    mains = {i.term[0]: i for i in model.mains()}
    hover = [[
        (f"{model.components[r]} x {model.components[c]}: effect {float(pairs[r, c]):+.4g} "
         f"({'synergy' if score[r, c] > 0 else 'redundancy' if score[r, c] < 0 else 'none'})")
        if r != c else f"{model.components[r]} alone: main score {mains[r].score:+.4g}"
        for c in range(n)] for r in range(n)]
    score = score.clone()
    score.fill_diagonal_(float("nan"))
    default = f"pair interactions ({model.method}, {model.direction}): red synergy, blue redundancy"
    return heatmap(score.float(), model.components, model.components, title=title or default, x_title="component",
                   y_title="component", zmid=0.0, colorbar_title="pair score", hover_extra=hover)


def top_interactions(model: InteractionModel, k: int = 15, truth: Optional[InteractionModel] = None,
                     order: Optional[int] = None, title: Optional[str] = None) -> go.Figure:
    """The ``k`` strongest interactions as bars of their effect, coloured by kind (and ``truth``'s, if given)."""
    if k < 1:
        raise InteractionError(f"k must be >= 1, got {k}")
    top = model.top(k, order)[::-1]  # strongest at the top of a horizontal bar chart
    labels = [i.label for i in top]
    fig = go.Figure(go.Bar(
        x=[i.effect for i in top], y=labels, orientation="h", name=model.method,
        marker_color=[COLOURS[i.kind] for i in top],
        customdata=[[i.kind, i.score] for i in top],
        hovertemplate="%{y}<br>effect %{x:.4g}<br>%{customdata[0]} (score %{customdata[1]:.4g})<extra></extra>",
    ))
    if truth is not None:
        if truth.components != model.components:
            raise InteractionError("truth is over different components")
        fig.add_trace(go.Bar(
            x=[truth.moebius.get(i.term, 0.0) for i in top], y=labels, orientation="h", name=truth.method,
            marker=dict(color="rgba(0,0,0,0)", line=dict(color="black", width=1.5)),
            hovertemplate="%{y}<br>" + truth.method + " effect %{x:.4g}<extra></extra>",
        ))
        fig.update_layout(barmode="overlay")
    r2 = f", held-out R² {model.r2:.3f}" if model.r2 is not None else ""
    fig.update_layout(
        title=title or f"top {len(top)} interactions ({model.method}, {model.evaluations} evaluations{r2})",
        xaxis_title="Moebius effect at the base run", template="plotly_white", height=max(300, 28 * len(top) + 120),
    )
    return fig


def _positions(model: InteractionModel) -> list[tuple[float, float]]:
    import re

    grid = [re.fullmatch(r"L(\d+)H(\d+)", c) for c in model.components]
    if all(grid):
        return [(float(m.group(1)), -float(m.group(2))) for m in grid]
    n = model.n_components
    return [(math.cos(2 * math.pi * i / n), math.sin(2 * math.pi * i / n)) for i in range(n)]


def interaction_network(model: InteractionModel, k: int = 20, title: Optional[str] = None) -> go.Figure:
    """Components as nodes (heads on a layer x head grid, else a circle), the ``k`` strongest pairs as edges.

    Edge width follows ``|effect|``, colour the kind; node size the component's ``|main score|``.
    """
    if k < 1:
        raise InteractionError(f"k must be >= 1, got {k}")
    pos = _positions(model)
    pairs = model.top(k, order=2)
    biggest = max((abs(i.effect) for i in pairs), default=1.0) or 1.0
    fig = go.Figure()
    for i in pairs:
        (x0, y0), (x1, y1) = pos[i.term[0]], pos[i.term[1]]
        bend = 0.15 * (1 if (x0 == x1) else 0)  # arch edges within one layer so they do not overlap
        xs = [x0, (x0 + x1) / 2 + bend * abs(y1 - y0), x1]
        ys = [y0, (y0 + y1) / 2, y1]
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines", line=dict(color=COLOURS[i.kind], width=1 + 7 * abs(i.effect) / biggest,
                                                shape="spline"),
            hoverinfo="text", text=f"{i.label}: {i.kind}, effect {i.effect:+.4g}", showlegend=False,
        ))
    mains = [abs(i.score) for i in model.mains()]
    top_main = max(mains) or 1.0
    fig.add_trace(go.Scatter(
        x=[p[0] for p in pos], y=[p[1] for p in pos], mode="markers+text", text=list(model.components),
        textposition="middle right", showlegend=False,
        marker=dict(size=[8 + 22 * m / top_main for m in mains], color="#fdd49e", line=dict(color="black", width=1)),
        hovertext=[f"{c}: main score {i.score:+.4g}" for c, i in zip(model.components, model.mains())],
        hoverinfo="text",
    ))
    for kind in ("synergy", "redundancy"):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(color=COLOURS[kind], width=4),
                                 name=kind))
    fig.update_layout(
        title=title or f"{len(pairs)} strongest pair interactions ({model.method})", template="plotly_white",
        xaxis=dict(showgrid=False, zeroline=False, title="layer" if all(p[1] <= 0 for p in pos) else ""),
        yaxis=dict(showgrid=False, zeroline=False, showticklabels=False),
    )
    return fig


def token_figure(model: InteractionModel, k: int = 10, title: Optional[str] = None) -> go.Figure:
    """The prompt of a token-interaction model, tokens coloured by main score (red: ablating it lowers the
    behaviour), the ``k`` strongest pairs as arcs (red synergy, blue redundancy; width by ``|effect|``).

    Tokens that are not components (a BOS token, positions left out) are drawn grey.
    """
    if k < 1:
        raise InteractionError(f"k must be >= 1, got {k}")
    if "positions" not in model.info:
        raise InteractionError("token_figure draws a model from token_interactions (its info names the positions); "
                               "use interaction_matrix for other components")
    positions = list(model.info["positions"])
    texts = [c.split(":", 1)[1] for c in model.components]
    mains = {i.term[0]: i.score for i in model.mains()}
    biggest = max((abs(v) for v in mains.values()), default=1.0) or 1.0
    n_all = len(model.info.get("prompt_tokens", positions))
    fig = go.Figure()
    x_of = {p: float(p) for p in range(n_all)}
    pairs = model.top(k, order=2)
    largest = max((abs(i.effect) for i in pairs), default=1.0) or 1.0
    for i in pairs:
        a, b = (x_of[positions[t]] for t in i.term)
        height = 0.25 + 0.12 * abs(b - a)
        xs = [a + (b - a) * t / 20 for t in range(21)]
        ys = [0.3 + height * 4 * (t / 20) * (1 - t / 20) for t in range(21)]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", showlegend=False, hoverinfo="text",
                                 text=f"{i.label}: {i.kind}, effect {i.effect:+.4g}",
                                 line=dict(color=COLOURS[i.kind], width=1 + 6 * abs(i.effect) / largest)))
    colours = []
    for c in range(len(positions)):
        v = mains.get(c, 0.0) / biggest  # in -1..1
        colours.append(f"rgba(214,96,77,{abs(v):.3f})" if v > 0 else f"rgba(67,147,195,{abs(v):.3f})")
    fig.add_trace(go.Scatter(
        x=[x_of[p] for p in positions], y=[0.0] * len(positions), mode="markers+text", text=texts,
        textposition="middle center", showlegend=False, textfont=dict(size=14),
        marker=dict(symbol="square", size=34, color=colours, line=dict(color="#555", width=1)),
        hovertext=[f"{lab}: main score {mains.get(c, 0.0):+.4g}" for c, lab in enumerate(model.components)],
        hoverinfo="text"))
    for kind in ("synergy", "redundancy"):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(color=COLOURS[kind], width=4),
                                 name=kind))
    r2 = f", held-out R² {model.r2:.3f}" if model.r2 is not None else ""
    fig.update_layout(
        title=title or f"token interactions ({model.method}, {model.evaluations} evaluations{r2}): colour = main "
                       "score, arcs = strongest pairs",
        template="plotly_white", height=380, width=max(500, 70 * n_all),
        xaxis=dict(showgrid=False, zeroline=False, showticklabels=False, range=[-0.7, n_all - 0.3]),
        yaxis=dict(showgrid=False, zeroline=False, showticklabels=False, range=[-0.5, 0.6 + 0.12 * n_all]))
    return fig


def _model_figures(model: InteractionModel) -> list[go.Figure]:
    """The pair matrix (a token model: its prompt first); none below two components."""
    if model.n_components < 2:
        return []
    return ([token_figure(model)] if "positions" in model.info else []) + [interaction_matrix(model)]


#: result type -> its figures in a notebook (registered by :func:`mechpatch.display.figures_of`)
FIGURES = {InteractionModel: _model_figures}
