"""Results -> plotly figures. A leaf of the import graph: figures take result objects (never the model)
and are returned, never shown. Importing mechpatch.patching does not import this module or plotly.

``FIGURES`` names what a notebook shows of each result type (see :mod:`mechpatch.display`)."""

from collections.abc import Sequence
from typing import Any, Optional

import plotly.graph_objects as go
from jaxtyping import Float
from torch import Tensor

from mechpatch.patching.results import PatchResult


def heatmap(
    values: Float[Tensor, "row col"],
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    title: str = "",
    x_title: str = "",
    y_title: str = "",
    zmid: Optional[float] = 0.0,
    colorbar_title: str = "",
    hover_extra: Optional[Sequence[Sequence[str]]] = None,
) -> go.Figure:
    """A labelled heatmap (first row at the top), exact values on hover, diverging colours around ``zmid``."""
    z = values.detach().float().cpu().numpy()
    extra = "<br>%{customdata}" if hover_extra is not None else ""
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(x_labels),
            y=list(y_labels),
            colorscale="RdBu",
            reversescale=True,
            zmid=zmid,
            customdata=hover_extra,
            colorbar=dict(title=colorbar_title),
            hovertemplate=f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>value %{{z:.6g}}{extra}<extra></extra>",
        )
    )
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, template="plotly_white")
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(type="category")
    return fig


def patch_heatmap(result: Any, normalized: bool = True, title: Optional[str] = None) -> go.Figure:
    """Heatmap of a 2-axis :class:`~mechpatch.patching.PatchResult` (layer x head, layer x position, ...).

    Colour is the normalised effect (1 = clean behaviour restored, 0 = corrupted) or the raw mean
    metric; hover shows the patched sites, the exact mean, its standard error and whether the cell
    was a no-op (source equal to the activation it replaced).
    """
    if len(result.grid_shape) != 2:
        raise ValueError(
            f"patch_heatmap needs a 2-axis result; this one has axes {result.axes}: select or average one first"
        )
    mean, sem = result.mean(), result.sem()
    values = result.normalized() if normalized else mean
    rows, cols = result.grid_shape
    hover = [
        [
            f"{' + '.join(s.label for s in result.sites[r * cols + c])}<br>mean {result.metric} {float(mean[r, c]):.6g}"
            f" ± {float(sem[r, c]):.3g}{'<br><b>no-op</b>: source equals target' if bool(result.noop[r, c]) else ''}"
            for c in range(cols)
        ]
        for r in range(rows)
    ]
    what = "normalised effect" if normalized else f"mean {result.metric}"
    default = f"{result.direction} ({result.intervention}): {what} by {result.axes[0]} x {result.axes[1]}"
    fig = heatmap(
        values, x_labels=result.labels[1], y_labels=result.labels[0], title=title or default,
        x_title=result.axes[1], y_title=result.axes[0], zmid=0.0, colorbar_title=what, hover_extra=hover,
    )
    return fig


def _patch_figures(result: PatchResult) -> list[go.Figure]:
    """The heatmap of a 2-axis result (normalised effect where defined, else the mean metric); none otherwise."""
    if len(result.grid_shape) != 2:
        return []
    return [patch_heatmap(result, normalized=float(result.clean.mean() - result.corrupted.mean()) != 0)]


#: result type -> its figures in a notebook (registered by :func:`mechpatch.display.figures_of`)
FIGURES = {PatchResult: _patch_figures}
