"""AtP*'s verification loop: check the best-ranked cells exactly, then bound what the ranking may have missed.

An attribution is a ranking to be checked, not an answer. :func:`verify` takes an
:class:`~mechpatch.attribution.base.AttributionResult`, runs the exact engine on its cells in order of score,
a batch at a time (one batched forward per batch), and stops once a whole batch falls below ``threshold``
(or the budget is spent). Then it measures a uniformly random sample of the cells it did not verify and
gives a one-sided upper confidence bound (Clopper-Pearson) on the fraction, and so the number, of
unverified cells whose exact effect reaches ``threshold``: the cells the attribution may have missed.

The bound is statistical and only as good as the sample: with ``n_random`` samples and none above
threshold, the fraction is below about ``3 / n_random`` at 95% confidence.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from mechpatch.attribution.base import AttributionError, AttributionResult
from mechpatch.errors import InvalidTypeError, choices
from mechpatch.model import HookedModel
from mechpatch.patching.engine import METHODS, run_patches
from mechpatch.prompts import PromptPair


@dataclass(frozen=True)
class Verification:
    """Exact effects of the verified cells, and the bound on what was not verified.

    ``exact[i]`` is the prompt-mean exact effect (patched - base) of cell ``verified[i]`` (flat grid index),
    in the order verified; ``sampled`` / ``sampled_exact`` the same for the random diagnostic sample.
    """

    labels: tuple[str, ...]  # every cell's label, flat grid order
    verified: tuple[int, ...]
    exact: tuple[float, ...]
    estimated: tuple[float, ...]  # the attribution's estimate of the verified cells
    sampled: tuple[int, ...]
    sampled_exact: tuple[float, ...]
    threshold: float
    n_unverified: int
    missed_fraction_bound: float  # upper confidence bound on P(|effect| >= threshold) among unverified cells
    missed_count_bound: float
    confidence: float
    forwards: int

    @property
    def top(self) -> tuple[str, float]:
        """The cell with the largest exact |effect| found (verified or sampled), and that effect."""
        pairs = list(zip(self.verified, self.exact)) + list(zip(self.sampled, self.sampled_exact))
        i, e = max(pairs, key=lambda p: abs(p[1]))
        return self.labels[i], e

    def as_dict(self) -> dict[str, Any]:
        return {
            "verified": [{"cell": self.labels[i], "exact": e, "estimate": s}
                         for i, e, s in zip(self.verified, self.exact, self.estimated)],
            "sampled": [{"cell": self.labels[i], "exact": e} for i, e in zip(self.sampled, self.sampled_exact)],
            "threshold": self.threshold, "n_unverified": self.n_unverified,
            "missed_fraction_bound": self.missed_fraction_bound, "missed_count_bound": self.missed_count_bound,
            "confidence": self.confidence, "forwards": self.forwards, "top": list(self.top),
        }

    def __repr__(self) -> str:
        label, eff = self.top
        return (f"Verification({len(self.verified)} verified, top {label} {eff:+.4g}; {self.n_unverified} unverified, "
                f"at most {self.missed_count_bound:.3g} with |effect| >= {self.threshold:.3g} "
                f"({100 * self.confidence:.0f}% bound from {len(self.sampled)} samples))")


def binomial_upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a proportion after ``k`` successes in ``n`` trials.

    >>> round(binomial_upper_bound(0, 100), 4)  # the "rule of three": about 3 / n
    0.0295
    >>> binomial_upper_bound(5, 5)
    1.0
    """
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    alpha = 1.0 - confidence

    def cdf(p: float) -> float:  # P(X <= k) for X ~ Binomial(n, p)
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))

    lo, hi = k / n, 1.0
    for _ in range(100):  # cdf decreases in p: find p with cdf(p) = alpha
        mid = (lo + hi) / 2
        if cdf(mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def _check_verify_args(pair: object, result: object, batch_size: object, threshold: object,
                       relative_threshold: object, budget: object, n_random: object, confidence: object,
                       seed: object, method: object) -> dict[str, Any]:
    """The attribution's context (grid, metric, direction, intervention), after checking verify's arguments."""
    if not isinstance(pair, PromptPair):
        raise InvalidTypeError(f"pair must be a PromptPair (see mechpatch.make_pair); got {type(pair).__name__}")
    if not isinstance(result, AttributionResult):
        raise InvalidTypeError(f"result must be an AttributionResult from attribute(); got {type(result).__name__}")
    ctx = result.context
    if not ctx or "grid" not in ctx:
        raise AttributionError("verify needs an AttributionResult from attribute() (it reruns the same grid exactly)")

    def count(value: object, name: str, least: int, what: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise AttributionError(f"{name} must be {what}; got {value!r}")

    def number(value: object, name: str, what: str, ok: Callable[[float], bool]) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise AttributionError(f"{name} must be {what}; got {value!r}")

    count(batch_size, "batch_size", 1, "a positive int")
    if budget is not None:
        count(budget, "budget", 1, "a positive int (most cells verified) or None (all)")
    count(n_random, "n_random", 0, "an int >= 0 (0: no bound)")
    count(seed, "seed", 0, "an int >= 0")
    if threshold is not None:
        number(threshold, "threshold", "a finite number >= 0 (metric units) or None", lambda v: v >= 0)
    number(relative_threshold, "relative_threshold", "a finite number >= 0", lambda v: v >= 0)
    number(confidence, "confidence", "a number in (0, 1)", lambda v: 0 < v < 1)
    if method not in METHODS:
        raise AttributionError(f"unknown method {method!r}; valid: {choices(METHODS)}")
    return ctx


def _verify_in_order(
    exact: Callable[[list[int]], Tensor], order: list[int], batch_size: int, threshold: Optional[float],
    relative_threshold: float,
) -> tuple[list[int], list[float], float]:
    """Exact effects of the cells ``order`` (best first), a batch at a time, until a whole batch is below threshold.

    Returns the verified cells, their exact effects and the threshold used (``threshold``, else
    ``relative_threshold`` x the largest |effect| of the first batch; 0.0 when nothing was verified).
    """
    verified: list[int] = []
    effects: list[float] = []
    thr = threshold
    pos = 0
    while pos < len(order):
        ids = order[pos:pos + batch_size]
        vals = exact(ids)
        verified += ids
        effects += [float(v) for v in vals]
        pos += len(ids)
        if thr is None:
            thr = relative_threshold * max(abs(e) for e in effects)
        if thr > 0 and all(abs(float(v)) < thr for v in vals):
            break  # a whole batch of well-ranked cells below threshold: the ranking has run out of effects
    return verified, effects, 0.0 if thr is None else thr


def _sample_unverified(
    exact: Callable[[list[int]], Tensor], rest: list[int], n_random: int, seed: int, batch_size: int,
) -> tuple[list[int], list[float]]:
    """A seeded uniform sample of up to ``n_random`` of the unverified cells ``rest``, and their exact effects."""
    sampled: list[int] = []
    sampled_effects: list[float] = []
    if rest and n_random > 0:
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(rest), generator=g)[:n_random].tolist()
        sampled = [rest[i] for i in pick]
        for lo in range(0, len(sampled), batch_size):
            sampled_effects += [float(v) for v in exact(sampled[lo:lo + batch_size])]
    return sampled, sampled_effects


def verify(
    model: HookedModel,
    pair: PromptPair,
    result: AttributionResult,
    *,
    batch_size: int = 16,
    threshold: Optional[float] = None,
    relative_threshold: float = 0.1,
    budget: Optional[int] = None,
    n_random: int = 32,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "auto",
) -> Verification:
    """Verify an attribution's best cells with the exact engine and bound the effect it may have missed.

    Args:
        model, pair: the model and prompts the attribution was computed on.
        result: from :func:`~mechpatch.attribution.nodes.attribute` (its metric, direction and intervention
            are reused).
        batch_size: cells verified per exact batched forward.
        threshold: an effect (metric units, |prompt-mean patched - base|) worth finding; default
            ``relative_threshold`` x the largest exact |effect| verified in the first batch.
        budget: most cells verified in score order, a positive int (default: all, stopping early as described).
        n_random: size of the random sample of unverified cells for the bound, an int >= 0 (0: no bound).
        confidence: of the bound.
        method: exact engine method (see :func:`~mechpatch.patching.run_patches`).

    Returns:
        :class:`Verification`.

    >>> import torch
    >>> from transformer_lens.config import TransformerBridgeConfig
    >>> from mechpatch import PromptPair, load_model
    >>> from mechpatch.attribution import attribute
    >>> cfg = TransformerBridgeConfig(d_model=16, d_head=4, n_heads=2, n_layers=2, n_ctx=8, d_vocab=20, seed=0)
    >>> model = load_model(cfg, device="cpu")
    >>> pair = PromptPair(torch.tensor([[1, 2, 3, 4], [1, 3, 2, 4]]), torch.tensor([[1, 5, 3, 6], [1, 7, 2, 6]]),
    ...                   torch.tensor([[7, 8], [8, 7]]))
    >>> ver = verify(model, pair, attribute(model, pair, "head", metric="logit_diff", by_position=True), batch_size=4,
    ...              n_random=8)
    >>> len(ver.verified) + ver.n_unverified, len(ver.sampled) <= 8
    (16, True)
    >>> ver.top[0]  # the largest exact effect found: the last-position output of head L1H0
    'L1H0@3'
    """
    ctx = _check_verify_args(pair, result, batch_size, threshold, relative_threshold, budget, n_random, confidence,
                             seed, method)
    grid = ctx["grid"]
    cells = grid.cells
    n_cells = len(cells)
    budget = n_cells if budget is None else min(budget, n_cells)
    base, source = (pair.corrupted, pair.clean) if ctx["direction"] == "denoise" else (pair.clean, pair.corrupted)
    clean = "source" if ctx["direction"] == "denoise" else "base"
    estimated = result.effects().reshape(-1)
    order = torch.argsort(result.scores.reshape(-1), descending=True, stable=True).tolist()
    forwards = 0

    def exact(ids: list[int]) -> Tensor:
        nonlocal forwards
        run = run_patches(model, base, [cells[i] for i in ids], metric=ctx["metric"], source=source,
                          intervention=ctx["intervention"], answers=pair.answers, clean=clean, method=method,
                          batch_size=len(ids), progress=False)
        forwards += run.forwards
        return (run.values - run.base_values[None]).mean(1)

    verified, effects, thr = _verify_in_order(exact, order[:budget], batch_size, threshold, relative_threshold)
    rest = order[len(verified):]
    sampled, sampled_effects = _sample_unverified(exact, rest, n_random, seed, batch_size)
    hits = sum(abs(e) >= thr for e in sampled_effects)
    if len(sampled) == len(rest):  # everything was measured: the count is exact, not a bound
        frac = hits / len(rest) if rest else 0.0
    else:
        frac = binomial_upper_bound(hits, len(sampled), confidence)
    labels = tuple(" + ".join(s.label for s in c) for c in cells)
    return Verification(labels, tuple(verified), tuple(effects), tuple(float(estimated[i]) for i in verified),
                        tuple(sampled), tuple(sampled_effects), float(thr), len(rest), frac, frac * len(rest),
                        confidence, forwards)


__all__ = ["Verification", "binomial_upper_bound", "verify"]
