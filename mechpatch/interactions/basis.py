"""Set functions over N components: Fourier (Walsh) and Moebius coordinates, and exact conversions.

Axis vocabulary (jaxtyping names used throughout :mod:`mechpatch.interactions`):

=============  ==========================================================
``mask``       one ablation pattern (one engine batch row set)
``component``  one of the N ablatable units (a head, an MLP, any site set)
``term``       one interaction term: a set of components
``sample``     one (mask, value) observation
=============  ==========================================================

A *term* is a sorted tuple of component indices: ``()`` the constant, ``(3,)`` a main effect,
``(2, 5)`` a pair. A mask ``z`` is boolean: ``z[i]`` is True when component ``i`` is *patched*
(ablated when ``direction="noise"``, restored when ``direction="denoise"``;
:data:`~mechpatch.patching.DIRECTIONS`). The metric is a function ``f(z)``.

Every representation here is a multilinear polynomial in ``z``; they differ only in the coding of
each coordinate:

- **Fourier (p-biased Walsh)**: ``phi_i = (z_i - q) / sqrt(q (1 - q))``, ``q`` the design's patch
  probability; orthonormal under the design, so regression on it is well conditioned. With ``q = 0.5``
  it is the classic +-1 basis (``phi_i = 2 z_i - 1``).
- **Moebius at the base run** (``z = 0``): ``f(z) = sum_T b(T) prod_{i in T} z_i``; ``b(T)`` is what
  exhaustive patching of the subsets of ``T`` measures by inclusion-exclusion, e.g.
  ``b({i, j}) = f(ij) - f(i) - f(j) + f(())``.
- **Moebius of the presence game** (``x_i = 1`` when component ``i`` is intact / clean; ``x = 1 - z``
  when noising, ``x = z`` when denoising), at ``x = 0``: the cooperative game that Shapley values and
  Shapley interaction indices are defined on.

Every coordinate is affine in the other codings (``phi_i = alpha u_i + gamma``), so each conversion is
the exact expansion ``prod_{i in A} (alpha u_i + gamma) = sum_{T <= A} alpha^|T| gamma^(|A|-|T|) u_T``
(:func:`affine_expand`).

>>> terms, coef = [(), (0, 1)], torch.tensor([0.25, 0.25])  # f = (1 + s0 s1) / 4 with s = 2z - 1
>>> to_moebius(terms, coef, q=0.5)  # = z0 z1 - (z0 + z1) / 2 + 1/2 ... as Moebius terms
{(): 0.5, (0,): -0.5, (1,): -0.5, (0, 1): 1.0}
"""

import math
from collections.abc import Iterable, Sequence
from itertools import combinations
from typing import Union

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechpatch.errors import MechpatchError, choices
from mechpatch.patching.interventions import check_direction

Term = tuple[int, ...]
CORNERS = ("base", "game")
INDICES = ("moebius", "shapley", "banzhaf")


class InteractionError(MechpatchError, ValueError):
    """An interaction design, fit or query that cannot be done as asked (the message lists valid choices)."""


def check_choice(what: str, value: object, valid: Sequence[str]) -> None:
    """Raise :class:`InteractionError` unless ``value`` is one of ``valid``."""
    if value not in valid:
        raise InteractionError(f"unknown {what} {value!r}; valid: {choices(valid)}")


def check_q(q: float) -> float:
    """The patch probability of a design, which must lie strictly between 0 and 1."""
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q < 1.0:
        raise InteractionError(f"the patch probability q must be a number in (0, 1), got {q!r}")
    return float(q)


def as_term(term: Iterable[int]) -> Term:
    """A term as a sorted tuple of distinct component indices.

    >>> as_term([5, 2])
    (2, 5)
    """
    out = tuple(sorted(int(i) for i in term))
    if len(set(out)) != len(out) or any(i < 0 for i in out):
        raise InteractionError(f"a term is a set of distinct component indices >= 0; got {tuple(term)}")
    return out


def features(
    masks: Bool[Tensor, "mask component"], terms: Sequence[Term], q: float, dtype: torch.dtype = torch.float64
) -> Float[Tensor, "mask term"]:
    """Fourier features ``prod_{i in term} phi_i(z)`` of every mask, one column per term.

    >>> z = torch.tensor([[True, False], [True, True]])
    >>> features(z, [(), (0,), (0, 1)], q=0.5)
    tensor([[ 1.,  1., -1.],
            [ 1.,  1.,  1.]], dtype=torch.float64)
    """
    q = check_q(q)
    phi = (masks.to(dtype) - q) / math.sqrt(q * (1 - q))
    out = torch.ones(masks.shape[0], len(terms), dtype=dtype)
    by_order: dict[int, list[int]] = {}
    for col, term in enumerate(terms):
        by_order.setdefault(len(term), []).append(col)
    for order, cols in by_order.items():
        if order == 0:
            continue
        idx = torch.tensor([terms[c] for c in cols], dtype=torch.long)  # [n_cols, order]
        prod = phi[:, idx[:, 0]]
        for k in range(1, order):
            prod = prod * phi[:, idx[:, k]]
        out[:, cols] = prod
    return out


def affine_expand(terms: Sequence[Term], coef: Sequence[float], alpha: float, gamma: float) -> dict[Term, float]:
    """Coefficients of ``sum_A coef_A prod_{i in A} (alpha u_i + gamma)`` in the monomials ``prod_{i in T} u_i``.

    >>> affine_expand([(0, 1)], [1.0], alpha=2.0, gamma=-1.0)  # (2u0 - 1)(2u1 - 1)
    {(): 1.0, (0,): -2.0, (1,): -2.0, (0, 1): 4.0}
    """
    out: dict[Term, float] = {}
    for term, c in zip(terms, coef):
        c = float(c)
        if c == 0.0:
            continue
        for k in range(len(term) + 1):
            w = c * alpha**k * gamma ** (len(term) - k)
            for sub in combinations(term, k):
                out[sub] = out.get(sub, 0.0) + w
    return dict(sorted(out.items(), key=lambda kv: (len(kv[0]), kv[0])))


def to_moebius(
    terms: Sequence[Term], coef: Union[Tensor, Sequence[float]], q: float, corner: str = "base",
    direction: str = "noise",
) -> dict[Term, float]:
    """Fourier coefficients (p-biased, patch probability ``q``) -> Moebius coefficients, exactly.

    Args:
        terms, coef: the Fourier expansion ``f(z) = sum_A coef_A prod_{i in A} phi_i(z)``.
        q: the patch probability the Fourier coding uses.
        corner: ``"base"``: monomials in ``z`` (patched indicators) around the unpatched base run, the
            quantities exhaustive patching measures; ``"game"``: monomials in the presence indicators
            ``x`` around ``x = 0`` (everything absent), the cooperative game of Shapley values.
        direction: ``"noise"`` (``x = 1 - z``) or ``"denoise"`` (``x = z``); used by ``"game"``.
    """
    check_choice("corner", corner, CORNERS)
    check_direction(direction)
    q = check_q(q)
    s = math.sqrt(q * (1 - q))
    coef = [float(c) for c in coef]
    if corner == "base" or direction == "denoise":
        return affine_expand(terms, coef, 1 / s, -q / s)  # phi = (z - q) / s
    return affine_expand(terms, coef, -1 / s, (1 - q) / s)  # z = 1 - x


def game_from_base(moebius: dict[Term, float], direction: str) -> dict[Term, float]:
    """Base-corner Moebius coefficients (in ``z``) -> Moebius coefficients of the presence game (in ``x``).

    >>> game_from_base({(): 1.0, (0,): -1.0}, "noise")  # f = 1 - z0 = x0
    {(0,): 1.0}
    """
    check_direction(direction)
    if direction == "denoise":
        return {t: c for t, c in moebius.items() if c != 0.0}
    out = affine_expand(list(moebius), list(moebius.values()), -1.0, 1.0)  # z = 1 - x
    return {t: c for t, c in out.items() if abs(c) > 1e-12 * (1 + max(map(abs, out.values())))}


def moebius_bruteforce(values: Float[Tensor, " subset"], n: int) -> dict[Term, float]:
    """Moebius coefficients of a set function given on all ``2**n`` subsets (bit ``i`` of the index =
    component ``i`` patched), by inclusion-exclusion. The slow reference the fast paths are tested against.

    >>> moebius_bruteforce(torch.tensor([0.0, 1.0, 1.0, 1.0]), 2)  # OR of two components
    {(): 0.0, (0,): 1.0, (1,): 1.0, (0, 1): -1.0}
    """
    if values.shape != (2**n,):
        raise InteractionError(f"need {2**n} values (every subset of {n} components), got {tuple(values.shape)}")
    out = {}
    for size in range(n + 1):
        for term in combinations(range(n), size):
            total = 0.0
            for k in range(size + 1):
                for sub in combinations(term, k):
                    total += (-1) ** (size - k) * float(values[sum(1 << i for i in sub)])
            out[term] = total
    return out


def all_masks(n: int) -> Bool[Tensor, "mask component"]:
    """Every mask over ``n`` components, row ``k`` patching the components whose bit is set in ``k``.

    >>> all_masks(2).int().tolist()
    [[0, 0], [1, 0], [0, 1], [1, 1]]
    """
    k = torch.arange(2**n)
    return (k[:, None] >> torch.arange(n)) & 1 == 1


def interaction_index(game: dict[Term, float], term: Term, index: str = "shapley") -> float:
    """A Shapley-style interaction index of ``term`` from the presence game's Moebius coefficients.

    ``"moebius"``: the coefficient itself; ``"shapley"``: the Shapley interaction index (Grabisch &
    Roubens), ``sum_{T >= S} m(T) / (|T| - |S| + 1)`` (for one component, its Shapley value);
    ``"banzhaf"``: ``sum_{T >= S} m(T) / 2^(|T| - |S|)``.

    >>> game = {(0, 1): 1.0}  # AND of two components
    >>> interaction_index(game, (0,)), interaction_index(game, (0, 1))
    (0.5, 1.0)
    """
    check_choice("index", index, INDICES)
    term = as_term(term)
    if index == "moebius":
        return game.get(term, 0.0)
    s = set(term)
    total = 0.0
    for t, m in game.items():
        if s.issubset(t):
            extra = len(t) - len(term)
            total += m / (extra + 1) if index == "shapley" else m / 2**extra
    return total
