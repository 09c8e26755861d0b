"""Results -> plotly figures. Leaves of the import graph: figures never take the model, never call .show()."""

from collections.abc import Sequence
from typing import Optional

import plotly.graph_objects as go
from jaxtyping import Float
from torch import Tensor


def heatmap(
    values: Float[Tensor, "row col"],
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    title: str = "",
    x_title: str = "",
    y_title: str = "",
    zmid: Optional[float] = 0.0,
    colorbar_title: str = "",
) -> go.Figure:
    """A labelled heatmap (rows top to bottom) with exact values on hover; diverging colours around ``zmid``."""
    z = values.detach().float().cpu().numpy()
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(x_labels),
            y=list(y_labels),
            colorscale="RdBu",
            reversescale=True,
            zmid=zmid,
            colorbar=dict(title=colorbar_title),
            hovertemplate=f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>value %{{z:.6g}}<extra></extra>",
        )
    )
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, template="plotly_white")
    fig.update_yaxes(autorange="reversed")
    return fig
