"""What every attribution method shares: its error type, result objects, and agreement with exact effects.

An attribution is an *estimate* of what the exact engine would measure. Every result here keeps the
estimate in the exact engine's units (the change of the metric that the patch would cause, per prompt),
so that :func:`agreement` can put it beside :func:`~mechpatch.patching.sweep` or
:func:`~mechpatch.circuit.edges.edge_patch` values directly.

>>> import torch
>>> a = agreement(torch.tensor([0.1, 2.0, -1.0, 0.0]), torch.tensor([0.2, 1.5, -1.2, 0.1]), k=2)
>>> round(a.pearson, 3), round(a.spearman, 3), a.top_k_overlap
(0.978, 1.0, 1.0)
"""

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from mechpatch.errors import InvalidTypeError, MechpatchError
from mechpatch.patching.results import PatchResult
from mechpatch.sites import Site


class AttributionError(MechpatchError, ValueError):
    """An attribution cannot be computed as asked (bad option, a metric with no gradient, unsupported model)."""


def check_flag(value: object, name: str, optional: bool = False) -> None:
    """Refuse (:class:`~mechpatch.errors.InvalidTypeError`) a flag that is not a bool (None too where ``optional``):
    a truthy string such as ``"no"`` must not switch an option on.

    >>> check_flag("no", "verify")
    Traceback (most recent call last):
    ...
    mechpatch.errors.InvalidTypeError: verify must be True or False; got 'no'
    """
    if not (isinstance(value, bool) or (optional and value is None)):
        raise InvalidTypeError(f"{name} must be True{', False or None' if optional else ' or False'}; got {value!r}")


@dataclass(frozen=True)
class AtpRun:
    """Raw output of :func:`~mechpatch.attribution.nodes.atp`: per-variant estimates, like the engine's PatchRun.

    ``estimates[v, p]`` estimates ``patched metric - base metric`` for variant ``v`` on prompt ``p``
    (the exact engine's ``values - base_values``). ``scores[v]`` ranks variants: ``|mean estimate|``,
    or with GradDrop the mean absolute estimate over the layers whose gradient was dropped.
    """

    estimates: Float[Tensor, "variant prompt"]
    scores: Float[Tensor, " variant"]
    base_values: Float[Tensor, " prompt"]
    source_values: Optional[Float[Tensor, " prompt"]]
    variants: tuple[tuple[Site, ...], ...]
    method: str  # "atp", "atp+qk", "atp+gd", "atp*"
    backend: str  # "functional" or "bridge"
    #: prompt-mean estimate with layer l's gradient dropped, [layer, variant] (GradDrop only)
    dropped: Optional[Float[Tensor, "layer variant"]] = None
    passes: int = 0  # forward+backward passes run (chunks x row groups folded into one batch each)


@dataclass(frozen=True, eq=False)
class AttributionResult:
    """A node attribution laid out like a sweep: the estimate as a :class:`PatchResult`, plus ranking scores.

    ``estimate.values`` is ``base metric + first-order estimate`` per cell and prompt, so it compares
    directly with :func:`~mechpatch.patching.sweep`'s values on the same grid (``estimate.normalized()``,
    heatmaps and data frames work unchanged). ``scores`` has the grid's shape.
    """

    estimate: PatchResult
    scores: Float[Tensor, "..."]
    run: AtpRun
    #: what produced it, so that :func:`~mechpatch.attribution.verify.verify` can rerun it exactly
    context: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def method(self) -> str:
        return self.run.method

    def effects(self) -> Tensor:
        """Prompt-mean estimated effect (patched - base) per cell, grid-shaped."""
        return self.estimate.mean() - float(self.run.base_values.mean())

    def top(self, k: int = 10) -> list[tuple[str, float, float]]:
        """The ``k`` best-scored cells: (label, score, estimated mean effect), best first."""
        flat = self.scores.reshape(-1)
        eff = self.effects().reshape(-1)
        order = torch.argsort(flat, descending=True)[:k]
        sites = self.estimate.sites
        return [(" + ".join(s.label for s in sites[int(i)]), float(flat[i]), float(eff[i])) for i in order]

    def __repr__(self) -> str:
        shape = " x ".join(f"{a}={n}" for a, n in zip(self.estimate.axes, self.estimate.grid_shape))
        return f"AttributionResult({self.method}, {self.run.backend}: {shape} x prompts={self.estimate.n_prompts})"


@dataclass(frozen=True)
class Agreement:
    """How well an approximation agrees with exact effects over the same items."""

    n: int
    pearson: float
    spearman: float
    k: int
    top_k_overlap: float  # |top-k by |approx| ∩ top-k by |exact|| / k
    sign_agreement: float  # fraction of items where both signs agree (items with exact effect 0 excluded)
    max_abs_error: float

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "pearson": self.pearson, "spearman": self.spearman, "k": self.k,
                "top_k_overlap": self.top_k_overlap, "sign_agreement": self.sign_agreement,
                "max_abs_error": self.max_abs_error}


def _ranks(x: Tensor) -> Tensor:
    """Ranks 0..n-1 with ties given their average rank (as Spearman's rho needs)."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    values, inverse = torch.unique(x, return_inverse=True)
    if len(values) < len(x):  # average the ranks of tied values
        sums = torch.zeros(len(values), dtype=x.dtype).index_add_(0, inverse, ranks)
        counts = torch.zeros(len(values), dtype=x.dtype).index_add_(0, inverse, torch.ones_like(ranks))
        ranks = (sums / counts)[inverse]
    return ranks


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else math.nan


def agreement(approx: Float[Tensor, "..."], exact: Float[Tensor, "..."], k: int = 10) -> Agreement:
    """Pearson and Spearman correlation, top-``k`` overlap (by magnitude) and sign agreement.

    Args:
        approx: estimated effects (any shape; NaN entries are left out together with their exact partner).
        exact: exact effects, the same shape.
        k: size of the top sets compared (clipped to the number of items).
    """
    for name, t in (("approx", approx), ("exact", exact)):
        if not isinstance(t, Tensor):
            raise InvalidTypeError(f"{name} must be a tensor of effects; got {type(t).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise AttributionError(f"k must be a positive int (the size of the top sets compared); got {k!r}")
    if approx.shape != exact.shape:
        raise AttributionError(f"approx {tuple(approx.shape)} and exact {tuple(exact.shape)} must have one shape")
    a, e = approx.detach().reshape(-1).double().cpu(), exact.detach().reshape(-1).double().cpu()
    keep = ~(a.isnan() | e.isnan())
    a, e = a[keep], e[keep]
    n = int(a.numel())
    if n < 2:
        raise AttributionError(f"agreement needs at least 2 items with both values; got {n}")
    k = min(k, n)
    top_a = set(torch.argsort(a.abs(), descending=True, stable=True)[:k].tolist())
    top_e = set(torch.argsort(e.abs(), descending=True, stable=True)[:k].tolist())
    nz = e != 0
    signs = float((torch.sign(a[nz]) == torch.sign(e[nz])).double().mean()) if nz.any() else math.nan
    return Agreement(n, _pearson(a, e), _pearson(_ranks(a), _ranks(e)), k, len(top_a & top_e) / k, signs,
                     float((a - e).abs().max()))


__all__ = ["Agreement", "AtpRun", "AttributionError", "AttributionResult", "agreement", "check_flag"]
