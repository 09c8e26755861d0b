"""Ablation designs: which components each mask patches. One mask = one engine variant (a site set).

``masks[m, i]`` is True when mask ``m`` patches component ``i`` (ablates it when ``direction="noise"``,
restores it when ``direction="denoise"``). ``keep`` is the probability that a component is left as in the
base run, so a random design patches each component with probability ``q = 1 - keep``.

========================  =====================================================================
design                    masks
========================  =====================================================================
``"bernoulli"``           each component patched independently with probability ``1 - keep``
``"antithetic"``          Bernoulli masks in complementary pairs (``z`` and ``~z``): even- and
                          odd-order Fourier terms separate exactly, which steadies the fit
``"exhaustive"``          every set of at most ``order`` components (``order=2``: the empty mask,
                          N singles, N(N-1)/2 pairs): the ground truth at that order
``"one_out"``             the empty mask and each single component (one-at-a-time patching)
========================  =====================================================================

>>> d = make_design("exhaustive", 3, order=2)
>>> d.masks.int().tolist()
[[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]]
>>> make_design("bernoulli", 144, n_masks=2000, keep=0.9, seed=0).masks.float().mean().round(decimals=2)
tensor(0.1000)
"""

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Optional

import torch
from jaxtyping import Bool
from torch import Tensor

from mechpatch.interactions.basis import InteractionError, check_choice

DESIGNS = ("bernoulli", "antithetic", "exhaustive", "one_out")


@dataclass(frozen=True, eq=False)
class Design:
    """Masks over ``n_components`` components and how they were drawn.

    ``q`` is the patch probability the Fourier coding of a fit centres on: ``1 - keep`` for a Bernoulli
    design; 0.5 for an antithetic one, whatever ``keep`` (each component is patched in exactly one mask
    of each complementary pair).
    """

    masks: Bool[Tensor, "mask component"]
    kind: str
    keep: Optional[float] = None
    seed: Optional[int] = None
    order: Optional[int] = None

    @property
    def n_masks(self) -> int:
        return int(self.masks.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.masks.shape[1])

    @property
    def q(self) -> float:
        """The fraction of patched entries the design is drawn with (what the Fourier coding centres on)."""
        if self.kind == "antithetic":
            return 0.5
        if self.keep is not None:
            return 1.0 - self.keep
        return float(self.masks.float().mean()) if self.masks.numel() else 0.5

    def split(self, fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
        """(train, held-out) row indices: a random ``fraction`` of the masks is held out (antithetic pairs stay
        together).

        >>> train, test = make_design("bernoulli", 4, n_masks=10).split(0.2)
        >>> len(train), len(test)
        (8, 2)
        """
        if not 0.0 < fraction < 1.0:
            raise InteractionError(f"held-out fraction must be in (0, 1), got {fraction}")
        g = torch.Generator().manual_seed(seed)
        unit = 2 if self.kind == "antithetic" else 1
        groups = self.n_masks // unit
        if groups < 2:
            raise InteractionError(f"cannot hold out part of a design of {self.n_masks} masks")
        perm = torch.randperm(groups, generator=g)
        n_test = min(groups - 1, max(1, round(groups * fraction)))
        pick = lambda ids: (ids.sort().values[:, None] * unit + torch.arange(unit)).flatten()  # noqa: E731
        return pick(perm[n_test:]), pick(perm[:n_test])

    def subset(self, rows: Tensor) -> "Design":
        """The same design restricted to ``rows``."""
        return Design(self.masks[rows], self.kind, self.keep, self.seed, self.order)


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InteractionError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def make_design(
    kind: str,
    n_components: int,
    n_masks: Optional[int] = None,
    *,
    keep: float = 0.5,
    seed: int = 0,
    order: int = 2,
) -> Design:
    """Build an ablation design.

    Args:
        kind: one of ``"bernoulli"``, ``"antithetic"``, ``"exhaustive"``, ``"one_out"``.
        n_components: N, the number of components.
        n_masks: masks to draw (random designs; ``"antithetic"`` rounds it up to even).
        keep: probability a component is left as in the base run (random designs), in (0, 1).
        seed: seed of the random draw.
        order: largest set size of ``"exhaustive"``.

    Returns:
        :class:`Design` with ``masks[mask, component]`` (True = patched).
    """
    check_choice("design", kind, DESIGNS)
    _check_int("n_components", n_components, 1)
    if kind in ("bernoulli", "antithetic"):
        if n_masks is None:
            raise InteractionError(f"a {kind!r} design needs n_masks")
        _check_int("n_masks", n_masks, 1)
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep < 1.0:
            raise InteractionError(f"keep must be a probability in (0, 1), got {keep!r}")
        g = torch.Generator().manual_seed(seed)
        draws = math.ceil(n_masks / 2) if kind == "antithetic" else n_masks
        masks = torch.rand(draws, n_components, generator=g) >= keep
        if kind == "antithetic":
            masks = torch.stack([masks, ~masks], 1).reshape(2 * draws, n_components)
        return Design(masks, kind, float(keep), seed)
    if kind == "one_out":
        masks = torch.cat([torch.zeros(1, n_components, dtype=torch.bool), torch.eye(n_components, dtype=torch.bool)])
        return Design(masks, kind, order=1)
    _check_int("order", order, 1)
    if order > n_components:
        raise InteractionError(f"order {order} exceeds the {n_components} components")
    n_sets = sum(math.comb(n_components, k) for k in range(order + 1))
    if n_sets > 2_000_000:
        raise InteractionError(
            f"an exhaustive order-{order} design over {n_components} components has {n_sets:,} masks; use a "
            "random design ('bernoulli' or 'antithetic') and fit_interactions instead"
        )
    masks = torch.zeros(n_sets, n_components, dtype=torch.bool)
    row = 0
    for k in range(order + 1):
        for term in combinations(range(n_components), k):
            masks[row, list(term)] = True
            row += 1
    return Design(masks, kind, order=order)
