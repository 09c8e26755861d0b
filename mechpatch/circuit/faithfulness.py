"""Faithfulness of circuits, as MIB (Mueller et al. 2025) measures it.

A circuit C (a set of edges) is run with every other edge ablated. Its faithfulness is
``f(C) = (m(C) - m(empty)) / (m(full) - m(empty))`` with ``m`` the task metric averaged over prompts:
1 = the circuit does what the full model does, 0 = no better than ablating everything. Over circuits of
growing size (the top-scoring fraction of edges: MIB's sizes 0.1% .. 100%), the faithfulness curve's
area is **CPR** (higher is better) and the area between it and 1 is **CMD** (lower is better), both
by the trapezoid rule over the size fraction. All circuits of a curve run as rows of one batched
edge-patching pass.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor

from mechpatch.cache import as_tokens
from mechpatch.circuit.components import EdgeLike, graph_layout
from mechpatch.circuit.edges import EdgeError, EdgeRunner, edge_masks, edge_patch, locate, make_runner
from mechpatch.attribution.base import check_flag
from mechpatch.errors import EmptyInputError, InvalidTypeError
from mechpatch.model import HookedModel
from mechpatch.patching.interventions import Intervention, Replace, check_intervention
from mechpatch.patching.metrics import Metric

#: MIB's circuit sizes, as fractions of all edges
MIB_SIZES: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class FaithfulnessCurve:
    """f(C) at each circuit size (fraction of edges kept and edge count), with CPR and CMD."""

    sizes: tuple[float, ...]
    n_edges: tuple[int, ...]
    faithfulness: tuple[float, ...]
    metric_full: float
    metric_empty: float
    metric_circuits: tuple[float, ...]

    @property
    def cpr(self) -> float:
        """Area under the faithfulness curve (trapezoid over the size fraction); higher is better."""
        return _trapezoid(self.sizes, self.faithfulness)

    @property
    def cmd(self) -> float:
        """Area between the curve and 1; lower is better."""
        return _trapezoid(self.sizes, [abs(1 - f) for f in self.faithfulness])

    def figure(self) -> Any:
        """A plotly figure of the curve (log size axis)."""
        import plotly.graph_objects as go

        fig = go.Figure(go.Scatter(
            x=[100 * s for s in self.sizes], y=list(self.faithfulness), mode="lines+markers",
            customdata=list(self.n_edges), hovertemplate="%{x}% of edges (%{customdata})<br>f = %{y:.4f}<extra></extra>"))
        fig.add_hline(y=1.0, line_dash="dot")
        fig.update_layout(title=f"faithfulness: CPR {self.cpr:.3f}, CMD {self.cmd:.3f}", xaxis_title="% of edges kept",
                          yaxis_title="faithfulness f(C)", xaxis_type="log", template="plotly_white")
        return fig


def _trapezoid(x: Sequence[float], y: Sequence[float]) -> float:
    return float(sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1)))


def circuit_metric(model: HookedModel, base: Tensor, circuits: Sequence[Sequence[EdgeLike]], *,
                   metric: Union[Metric, str], source: Optional[Tensor] = None,
                   intervention: Intervention = Replace(), answers: Optional[Tensor] = None,
                   prepared: Optional[EdgeRunner] = None) -> Tensor:
    """Mean metric of each circuit (every edge outside it ablated, with ``intervention``), one batched pass.

    Arguments as :func:`~mechpatch.circuit.edges.edge_patch` (``prepared``: an
    :class:`~mechpatch.circuit.edges.EdgeRunner` from ``make_runner``). Circuits of position-resolved edges
    (``L0H2@3->L1H0.k@3``) keep each edge at its position only: every edge at every other position is ablated."""
    check_intervention(intervention, EdgeError)
    lay = graph_layout(model.spec)
    kept = edge_masks(lay, circuits, as_tokens(model, base).shape[-1])
    masks = lay.valid.expand_as(kept) & ~kept
    run = edge_patch(model, base, masks, metric=metric, source=source, intervention=intervention, answers=answers,
                     prepared=prepared)
    return run.values.mean(1)


def _check_scores(scores: object) -> None:
    """Refuse scores that are not a non-empty mapping edge -> number (an empty one would rank edges arbitrarily)."""
    what = ("a dict edge -> score (edges as Edge values, 'sender->receiver' labels or (sender, receiver) pairs; e.g. "
            "a DiscoveryResult's scores)")
    if not isinstance(scores, Mapping):
        raise InvalidTypeError(f"scores must be {what}; got {type(scores).__name__}")
    if not scores:
        raise EmptyInputError(f"scores is empty: the circuits would be an arbitrary order of edges; give {what}")
    for e, v in scores.items():
        try:
            float(v)
        except (TypeError, ValueError):
            raise InvalidTypeError(f"scores must be {what} with numeric scores; got {v!r} for edge {e!r}") from None


def faithfulness_curve(
    model: HookedModel,
    base: Tensor,
    scores: Mapping[EdgeLike, float],
    *,
    metric: Union[Metric, str],
    source: Optional[Tensor] = None,
    intervention: Intervention = Replace(),
    answers: Optional[Tensor] = None,
    sizes: Sequence[float] = MIB_SIZES,
    absolute: bool = True,
) -> FaithfulnessCurve:
    """Faithfulness of the top-scoring circuits at each size (fraction of all edges; at least one edge).

    Args:
        metric, source, intervention, answers: as :func:`~mechpatch.circuit.edges.edge_patch` (every edge outside a
            circuit is ablated with ``intervention``).
        scores: edge -> score, edges as Edge values, "sender->receiver" labels or (sender, receiver) pairs (e.g. a
            DiscoveryResult's ``scores`` or a ComponentGraph's ``edge_scores()``); edges missing or NaN rank last. Position-resolved
            edges (``@p``) rank edges per position. An edge the model does not have is an error.
        absolute: rank edges by |score| (MIB's default) rather than by signed score.
    """
    check_intervention(intervention, EdgeError)
    check_flag(absolute, "absolute")
    sizes = tuple(float(s) for s in sizes)
    if not sizes or any(not 0 < s <= 1 for s in sizes) or list(sizes) != sorted(sizes):
        raise EdgeError(f"sizes must be increasing fractions in (0, 1]; got {sizes}")
    _check_scores(scores)
    n_pos = as_tokens(model, base).shape[-1]
    lay = graph_layout(model.spec)
    given = {locate(lay, e, n_pos): v for e, v in scores.items()}  # (sender, receiver, pos): every edge checked
    resolved = any(pos is not None for _, _, pos in given)
    if resolved and any(pos is None for _, _, pos in given):
        raise EdgeError("the scores mix position-resolved edges ('@p') with edges at no position; give one kind")
    pairs = list(zip(lay.edge_senders.tolist(), lay.edge_receivers.tolist()))
    keys = [(s, r, p) for p in (range(n_pos) if resolved else [None]) for s, r in pairs]  # the canonical edge order

    def key(k):
        v = given.get(k)
        return -math.inf if v is None or math.isnan(v) else (abs(v) if absolute else v)

    ranked = sorted(keys, key=key, reverse=True)
    counts = [max(1, math.ceil(s * len(keys))) for s in sizes]
    kept = torch.zeros(len(counts) + 2, *((n_pos,) if resolved else ()), *lay.valid.shape, dtype=torch.bool)
    for i, k in enumerate(counts + [0, len(keys)]):  # each size, then the empty circuit and the full model
        for s, r, p in ranked[:k]:
            kept[(i, p, s, r) if resolved else (i, s, r)] = True
    prepared = make_runner(model, base, metric=metric, source=source, intervention=intervention, answers=answers)
    values = edge_patch(model, base, lay.valid.expand_as(kept) & ~kept, metric=metric,
                        prepared=prepared).values.mean(1)
    m_empty, m_full = float(values[-2]), float(values[-1])
    if m_full == m_empty:
        raise EdgeError("the full model and the empty circuit score the same on this metric: faithfulness is undefined")
    f = tuple(float((v - m_empty) / (m_full - m_empty)) for v in values[:-2])
    return FaithfulnessCurve(sizes, tuple(counts), f, m_full, m_empty, tuple(float(v) for v in values[:-2]))


__all__ = ["MIB_SIZES", "FaithfulnessCurve", "circuit_metric", "faithfulness_curve"]
