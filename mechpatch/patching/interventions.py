"""Interventions: small frozen objects named for what they do to a patched site.

Every intervention sets a patched activation to ``base + alpha * (source - base)`` at the patched
entries, where ``base`` is the activation of the run being patched and ``source`` is what the
intervention brings in:

=====================  ==========================================  ======
intervention           source                                      alpha
=====================  ==========================================  ======
``Replace()``          the other run of the pair (clean/corrupted)  1
``Zero()``             zeros                                        1
``Mean()``             mean over a reference set, per position      1
``Resample(seed)``     the same site in another prompt               1
``Interpolate(a)``     the other run of the pair                    a
=====================  ==========================================  ======

The two directions of patching a clean/corrupted pair, :data:`DIRECTIONS` (the one vocabulary of the
sweeps, attribution and interaction search):

- ``"denoise"``: run the corrupted prompts and restore (patch in) components from the clean run;
- ``"noise"``: run the clean prompts and ablate components (insert the corrupted run's, or zero, mean, ...).
"""

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from jaxtyping import Int
from torch import Tensor

from mechpatch.errors import InvalidArgumentError, ShapeMismatchError, choices

#: ``"denoise"``: patch clean into corrupted; ``"noise"``: corrupted (or an ablation) into clean
DIRECTIONS = ("denoise", "noise")


def check_direction(direction: object) -> str:
    """Return ``direction`` if it is one of :data:`DIRECTIONS`, else raise :class:`InvalidArgumentError`.

    >>> check_direction("noising")
    Traceback (most recent call last):
    ...
    mechpatch.errors.InvalidArgumentError: unknown direction 'noising'; valid: 'denoise', 'noise'
    """
    if not isinstance(direction, str) or direction not in DIRECTIONS:
        raise InvalidArgumentError(f"unknown direction {direction!r}; valid: {choices(DIRECTIONS)}")
    return direction


@dataclass(frozen=True)
class Replace:
    """Swap in the other run's activation (denoising: clean into corrupted; noising: the reverse)."""

    alpha = 1.0
    uses_pair = True

    def source(self, other: Tensor, base: Tensor, reference: Optional[Tensor] = None) -> Tensor:
        return other


@dataclass(frozen=True)
class Zero:
    """Set the activation to zero (zero ablation)."""

    alpha = 1.0
    uses_pair = False

    def source(self, other: Tensor, base: Tensor, reference: Optional[Tensor] = None) -> Tensor:
        return torch.zeros_like(base)


@dataclass(frozen=True, eq=False)
class Mean:
    """Set the activation to its mean over a reference set, per position (mean ablation).

    ``reference`` holds token ids [n_ref, pos] of the same length as the patched prompts; by default
    the mean is taken over the patched prompts' own base run.
    """

    reference: Optional[Int[Tensor, "n_ref pos"]] = None
    alpha = 1.0
    uses_pair = False

    def source(self, other: Tensor, base: Tensor, reference: Optional[Tensor] = None) -> Tensor:
        ref = base if reference is None else reference
        return ref.mean(0, keepdim=True).expand_as(base).contiguous()


@dataclass(frozen=True, eq=False)
class Resample:
    """Replace each prompt's activation with the same site's activation in another prompt.

    With ``reference`` tokens the donor comes from that set; otherwise from the other run of the pair
    (a random other prompt of it). ``seed`` fixes the donor assignment.
    """

    seed: int = 0
    reference: Optional[Int[Tensor, "n_ref pos"]] = None
    alpha = 1.0
    uses_pair = True

    def donors(self, n: int, n_pool: int, same_pool: bool) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        if same_pool and n_pool < 2:
            raise ShapeMismatchError("Resample needs at least two prompts to draw a different donor from")
        idx = torch.randint(0, n_pool - 1 if same_pool else n_pool, (n,), generator=g)
        if same_pool:  # skip the prompt itself: shift indices at or above i by one
            idx = idx + (idx >= torch.arange(n)).long()
        return idx

    def source(self, other: Tensor, base: Tensor, reference: Optional[Tensor] = None) -> Tensor:
        pool = other if reference is None else reference
        return pool[self.donors(base.shape[0], pool.shape[0], same_pool=reference is None)]


@dataclass(frozen=True)
class Interpolate:
    """Move the activation a fraction ``alpha`` of the way from the base run to the other run.

    ``alpha`` is a finite number in [0, 1] (0: the base run unchanged, 1: as :class:`Replace`). Values outside,
    which extrapolate past either run (e.g. a central finite difference at ``-eps``), need ``extrapolate=True``.

    >>> Interpolate(0.25).alpha
    0.25
    >>> Interpolate(2.0)
    Traceback (most recent call last):
    ...
    mechpatch.errors.InvalidArgumentError: Interpolate alpha must be in [0, 1] (0: the base run, 1: the other run), got 2.0; pass extrapolate=True to go past either run
    """

    alpha: float = 0.5
    extrapolate: bool = False
    uses_pair = True

    def __post_init__(self) -> None:
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)):
            raise InvalidArgumentError(f"Interpolate alpha must be a finite number in [0, 1], got {a!r}")
        if not math.isfinite(a):
            raise InvalidArgumentError(f"Interpolate alpha must be a finite number in [0, 1], got {a!r}")
        if not self.extrapolate and not 0.0 <= a <= 1.0:
            raise InvalidArgumentError(
                f"Interpolate alpha must be in [0, 1] (0: the base run, 1: the other run), got {a!r}; "
                "pass extrapolate=True to go past either run"
            )

    def source(self, other: Tensor, base: Tensor, reference: Optional[Tensor] = None) -> Tensor:
        return other


Intervention = Union[Replace, Zero, Mean, Resample, Interpolate]
INTERVENTIONS = (Replace, Zero, Mean, Resample, Interpolate)
