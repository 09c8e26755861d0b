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
``Subspace(U, of)``    what ``of`` brings in                        the projection on U's span
=====================  ==========================================  ======

``Subspace`` moves only the component of the activation in a subspace (its hook's last dimension: ``d_model``
for residual, attention and MLP outputs, ``d_head`` for a head's output, query, key or value) and leaves the rest:
``base + (source - base) Q Q^T`` with ``Q`` an orthonormal basis of the rows of ``U``. With ``of=Zero()`` it
projects the subspace out (removing a probe's directions); with ``of=Replace()`` it is an interchange intervention
on the subspace (distributed alignment search). It runs wherever node patching runs (:func:`run_patches`, sweeps,
AtP); the edge-level functions refuse it.

The two directions of patching a clean/corrupted pair, :data:`DIRECTIONS` (the one vocabulary of the
sweeps, attribution and interaction search):

- ``"denoise"``: run the corrupted prompts and restore (patch in) components from the clean run;
- ``"noise"``: run the clean prompts and ablate components (insert the corrupted run's, or zero, mean, ...).

Every entry point that runs the model takes these objects (``intervention=``). Names are for config files and the
command line only: :data:`BY_NAME` and :func:`from_name` turn them into objects, :func:`describe` turns an object
back into the name results and checkpoints record.
"""

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Union

import torch
from jaxtyping import Int
from torch import Tensor

from mechpatch.errors import InvalidArgumentError, InvalidTypeError, MechpatchError, ShapeMismatchError, choices

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
    (a random other prompt of it). ``seed`` (an int) fixes the donor assignment.

    >>> Resample(seed=2 ** 64)
    Traceback (most recent call last):
    ...
    mechpatch.errors.InvalidArgumentError: Resample seed must be in -2**63..2**64 - 1 (torch's generator); got 18446744073709551616
    """

    seed: int = 0
    reference: Optional[Int[Tensor, "n_ref pos"]] = None
    alpha = 1.0
    uses_pair = True

    def __post_init__(self) -> None:
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise InvalidTypeError(f"Resample seed must be an int (it seeds torch's generator); got "
                                   f"{type(seed).__name__} {seed!r}")
        if not -(2 ** 63) <= int(seed) < 2 ** 64:
            raise InvalidArgumentError(f"Resample seed must be in -2**63..2**64 - 1 (torch's generator); got {seed!r}")
        object.__setattr__(self, "seed", int(seed))

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
        if not isinstance(self.extrapolate, bool):
            raise InvalidTypeError(f"Interpolate extrapolate must be True or False; got "
                                   f"{type(self.extrapolate).__name__} {self.extrapolate!r}")
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


class Projection:
    """The step of a :class:`Subspace`: a change of an activation, projected on the subspace spanned by the
    orthonormal columns of ``q`` [d, k] (over the activation's last dimension)."""

    def __init__(self, q: Tensor) -> None:
        self.q = q

    def __call__(self, delta: Tensor) -> Tensor:
        q = self.q.to(device=delta.device, dtype=delta.dtype)
        return (delta @ q) @ q.T

    def __repr__(self) -> str:
        return f"Projection(d={self.q.shape[0]}, k={self.q.shape[1]})"


def step(alpha: Union[int, float, Projection], delta: Tensor) -> Tensor:
    """How far an intervention moves an activation, given the full change ``delta`` (``source - base``): all of it
    (alpha 1), a fraction ``alpha`` of it, or a :class:`Subspace`'s projection of it."""
    if isinstance(alpha, Projection):
        return alpha(delta)
    return delta if alpha == 1.0 else alpha * delta


@dataclass(frozen=True, eq=False)
class Subspace:
    """Move only the subspace spanned by the rows of ``basis`` [k, d], to what ``of`` brings in (see the module
    docstring): ``Subspace(probe.directions, of=Zero())`` removes what a probe reads; ``of=Replace()`` swaps the
    subspace in from the other run.

    >>> iv = Subspace(torch.tensor([[1.0, 0.0, 0.0]]), of=Zero())
    >>> step(iv.alpha, torch.tensor([[2.0, 3.0, 4.0]]))  # only the first coordinate moves
    tensor([[2., 0., 0.]])
    >>> Subspace(torch.zeros(1, 3))
    Traceback (most recent call last):
    ...
    mechpatch.errors.InvalidArgumentError: Subspace basis must have linearly independent rows; got rank 0 of 1 rows
    """

    basis: Tensor
    of: object = None  # default Replace(), set in __post_init__

    def __post_init__(self) -> None:
        of = Replace() if self.of is None else self.of
        if not isinstance(of, (Replace, Zero, Mean, Resample)):
            raise InvalidArgumentError(f"Subspace(of=...) takes Replace(), Zero(), Mean() or Resample(); got {of!r}")
        object.__setattr__(self, "of", of)
        b = self.basis
        if not isinstance(b, Tensor) or b.ndim != 2 or not b.dtype.is_floating_point or b.shape[0] < 1:
            raise InvalidArgumentError(f"Subspace basis must be a float tensor [k, d] with k >= 1 rows; got "
                                       f"{getattr(b, 'dtype', type(b).__name__)} {tuple(getattr(b, 'shape', ()))}")
        if not torch.isfinite(b).all():
            raise InvalidArgumentError("Subspace basis holds NaN or infinite values")
        q, r = torch.linalg.qr(b.detach().double().cpu().T)
        rank = int((r.diagonal().abs() > 1e-9 * max(1.0, float(r.diagonal().abs().max()))).sum())
        if rank < b.shape[0]:
            raise InvalidArgumentError(f"Subspace basis must have linearly independent rows; got rank {rank} of "
                                       f"{b.shape[0]} rows")
        object.__setattr__(self, "_projection", Projection(q))

    @property
    def alpha(self) -> Projection:
        return self._projection

    @property
    def uses_pair(self) -> bool:
        return self.of.uses_pair

    @property
    def reference(self) -> Optional[Tensor]:
        return getattr(self.of, "reference", None)

    @property
    def dim(self) -> int:
        """The dimension the subspace lives in (the hook's last dimension it must match)."""
        return int(self.basis.shape[1])

    def source(self, other: Tensor, base: Tensor, reference: Optional[Tensor] = None) -> Tensor:
        return self.of.source(other, base, reference)


Intervention = Union[Replace, Zero, Mean, Resample, Interpolate, Subspace]
INTERVENTIONS = (Replace, Zero, Mean, Resample, Interpolate, Subspace)

#: the valid interventions, as an error message lists them
CHOICES = ("Replace(), Zero(), Mean(reference=None), Resample(seed=0, reference=None), Interpolate(alpha), "
           "Subspace(basis, of=...)")

#: the one name -> intervention table of the config files and the command line (``"corrupted"``: the edge-level
#: configs' name for :class:`Replace`; ``"filler"``: :class:`Replace` from a run of one filler token, the token
#: interactions' baseline); everything below the config layer takes the objects themselves
BY_NAME: dict[str, type] = {
    "replace": Replace, "corrupted": Replace, "zero": Zero, "mean": Mean, "resample": Resample,
    "interpolate": Interpolate, "filler": Replace,
}


def from_name(name: str, *, alpha: Optional[float] = None, seed: int = 0) -> Intervention:
    """The intervention a config file or the command line names (see :data:`BY_NAME`).

    ``alpha`` is :class:`Interpolate`'s (default 0.5), ``seed`` :class:`Resample`'s.

    >>> from_name("corrupted"), from_name("interpolate", alpha=0.25)
    (Replace(), Interpolate(alpha=0.25, extrapolate=False))
    >>> from_name("ablate")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mechpatch.errors.InvalidArgumentError: unknown intervention 'ablate'; valid: 'replace', 'corrupted', 'zero', ...
    """
    if not isinstance(name, str) or name not in BY_NAME:
        raise InvalidArgumentError(f"unknown intervention {name!r}; valid: {choices(BY_NAME)}")
    kind = BY_NAME[name]
    if alpha is not None and kind is not Interpolate:
        raise InvalidArgumentError(f"alpha is only used by 'interpolate', not {name!r}")
    if kind is Interpolate:
        return Interpolate(0.5 if alpha is None else alpha)
    if kind is Resample:
        return Resample(seed=seed)
    return kind()


def describe(intervention: Intervention) -> str:
    """The name a result or a checkpoint records for ``intervention`` (the edge-level ``ablation`` field).

    The three kinds the edge-level functions always had keep their old names, so checkpoints and result files
    written before interventions were objects still match.

    >>> [describe(i) for i in (Replace(), Zero(), Mean(), Interpolate(0.5), Resample(seed=3))]
    ['corrupted', 'zero', 'mean', 'interpolate(0.5)', 'resample(seed=3)']
    """
    reference = getattr(intervention, "reference", None) is not None
    if isinstance(intervention, Replace):
        return "corrupted"
    if isinstance(intervention, Zero):
        return "zero"
    if isinstance(intervention, Mean):
        return "mean(reference)" if reference else "mean"
    if isinstance(intervention, Interpolate):
        return f"interpolate({intervention.alpha!r})"
    if isinstance(intervention, Resample):
        return f"resample(seed={intervention.seed}{', reference' if reference else ''})"
    if isinstance(intervention, Subspace):
        return f"subspace({intervention.basis.shape[0]} of {intervention.dim}, {describe(intervention.of)})"
    raise InvalidArgumentError(f"intervention must be one of {CHOICES}; got {intervention!r}")


def check_intervention(intervention: object, error: type[MechpatchError] = InvalidArgumentError, *,
                       subspace: bool = False) -> Intervention:
    """Return ``intervention`` if it is an intervention object, else raise ``error`` naming the valid ones.

    ``subspace``: whether the caller runs :class:`Subspace` (node patching does; the edge-level functions, which
    ablate whole sender outputs, refuse it).

    >>> check_intervention("zero")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mechpatch.errors.InvalidArgumentError: intervention must be one of Replace(), Zero(), ... got 'zero' (a name, ...
    >>> from_name("zero") == check_intervention(Zero())
    True
    """
    if isinstance(intervention, Subspace) and not subspace:
        raise error("Subspace interventions run in node patching (run_patches, sweeps, AtP); the edge-level functions "
                    "ablate whole sender outputs: use Replace(), Zero(), Mean(), Resample() or Interpolate() here")
    if isinstance(intervention, INTERVENTIONS):
        return intervention
    hint = ""
    if isinstance(intervention, str) and intervention in BY_NAME:
        hint = f" (a name, for config files: from_name({intervention!r}) is {from_name(intervention)!r})"
    raise error(f"intervention must be one of {CHOICES} (an object of mechpatch.patching); got {intervention!r}{hint}")


def needs_source(intervention: Intervention) -> bool:
    """Whether ``intervention`` reads the other run of the pair (``source=``): Replace, Interpolate, and Resample
    without reference prompts."""
    return intervention.uses_pair and getattr(intervention, "reference", None) is None
