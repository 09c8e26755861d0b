"""Synthetic value functions with planted interactions: the known answers recovery is tested and benchmarked on.

>>> p = planted(0, n=20, n_and=1, n_or=1, n_three=0, noise=0.0)
>>> p.ands, p.ors
([(4, 5)], [(13, 19)])
>>> z = torch.zeros(1, 20, dtype=torch.bool)  # nothing ablated: every term is on
>>> import math  # x @ mains and mains.sum() add in an order that depends on the CPU: equal up to rounding
>>> math.isclose(float(p(z)), float(p.mains.sum()) + 2.0, rel_tol=0.0, abs_tol=1e-9)
True
"""

from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechpatch.interactions.basis import Term


@dataclass(eq=False)
class Planted:
    """``f(z)`` over ``n`` components (``z`` = ablated, ``x = ~z`` = intact): dense small main effects, AND pairs
    (``size * x_i x_j``: needed together), OR pairs (``size * max(x_i, x_j)``: backups), three-way ANDs, plus
    Gaussian noise drawn afresh on every call (seeded)."""

    n: int
    mains: Float[Tensor, " component"]
    ands: list[Term]
    ors: list[Term]
    threes: list[Term]
    size: float
    noise: float
    generator: torch.Generator = field(repr=False)

    def __call__(self, z: Bool[Tensor, "mask component"]) -> Float[Tensor, " mask"]:
        x = (~z).double()
        v = x @ self.mains
        for i, j in self.ands:
            v = v + self.size * x[:, i] * x[:, j]
        for i, j in self.ors:
            v = v + self.size * torch.maximum(x[:, i], x[:, j])
        for i, j, k in self.threes:
            v = v + self.size * x[:, i] * x[:, j] * x[:, k]
        if self.noise:
            v = v + self.noise * torch.randn(z.shape[0], generator=self.generator, dtype=torch.float64)
        return v

    def pairs_of_threes(self) -> set[Term]:
        """The pairs inside the three-way terms (which carry interaction at the base run too)."""
        return {s for t in self.threes for s in [(t[0], t[1]), (t[0], t[2]), (t[1], t[2])]}


def planted(seed: int, n: int = 144, n_and: int = 6, n_or: int = 6, n_three: int = 3, size: float = 1.0,
            noise: float = 0.1) -> Planted:
    """A :class:`Planted` value function over ``n`` components with disjoint random planted terms."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    ands = [tuple(sorted(perm[2 * i: 2 * i + 2])) for i in range(n_and)]
    ors = [tuple(sorted(perm[2 * n_and + 2 * i: 2 * n_and + 2 * i + 2])) for i in range(n_or)]
    start = 2 * (n_and + n_or)
    threes = [tuple(sorted(perm[start + 3 * i: start + 3 * i + 3])) for i in range(n_three)]
    mains = 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    return Planted(n, mains, ands, ors, threes, size, noise, torch.Generator().manual_seed(seed + 1000))


def planted_trainer(included: list[int], *, seed: int, n: int = 12, plant: int = 0, noise: float = 0.0
                    ) -> dict[str, float]:
    """A stand-in for a retraining (:mod:`mechpatch.interactions.data`): the value of training on the groups
    ``included`` is :func:`planted` ``(plant, n, n_and=2, n_or=2, n_three=0)`` at the mask that drops the others,
    plus ``noise`` times a normal draw that depends on ``seed`` and the groups (so seeds average it out).

    >>> planted(0, n=12, n_and=2, n_or=2, n_three=0).ands
    [(0, 8), (5, 9)]
    >>> planted_trainer([0, 1], seed=0)["groups"]
    2.0
    """
    p = planted(plant, n=n, n_and=2, n_or=2, n_three=0, noise=0.0)
    z = torch.ones(1, n, dtype=torch.bool)
    z[0, list(included)] = False
    value = float(p(z)[0])
    if noise:
        g = torch.Generator().manual_seed(seed * 1_000_003 + sum(1 << i for i in included))
        value += noise * float(torch.randn(1, generator=g, dtype=torch.float64))
    return {"value": value, "groups": float(len(included))}
