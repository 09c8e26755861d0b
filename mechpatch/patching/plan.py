"""Compile per-row site sets into per-hook masks: what each batch row patches, and where.

A *variant* is one set of sites patched together. Rows of a batched run are variants x prompts
(variant-major: row = variant * n_prompts + prompt). For every hook that some variant touches, the
plan holds a boolean mask [variant, *hook axes without batch] (size 1 on the axes a site does not
select, e.g. d_head), so one broadcast ``where`` patches every row at once.
"""

from collections.abc import Sequence, Sized
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from mechpatch.errors import EmptyInputError
from mechpatch.model import HookedModel, HookPoint, HookSpec, hook_shape
from mechpatch.patching.interventions import Projection, step
from mechpatch.sites import Site, SiteSets, resolve_positions, site_sets


@dataclass(frozen=True)
class HookMask:
    """Which entries of one hook each variant patches."""

    name: str
    spec: HookSpec
    layer: Optional[int]
    mask: Tensor  # bool [variant, *hook shape without batch, with size 1 on unselected axes]

    def for_rows(self, variants: Tensor) -> Tensor:
        """The mask of each row (rows given by their variant index), with a batch axis first."""
        return self.mask[variants]


@dataclass(frozen=True)
class PatchPlan:
    variants: tuple[tuple[Site, ...], ...]  # validated, positions resolved
    points: tuple[tuple[HookPoint, ...], ...]
    hooks: dict[str, HookMask]
    seq_len: int

    @property
    def n_variants(self) -> int:
        return len(self.variants)

    def first_layer(self, variant_ids: Optional[Sequence[int]] = None) -> int:
        """The earliest layer any of these variants patches (0 for embeddings)."""
        ids = range(self.n_variants) if variant_ids is None else variant_ids
        layers = [p.site.layer_index or 0 for v in ids for p in self.points[v]]
        return min(layers) if layers else 0

    def first_position(self, variant_ids: Optional[Sequence[int]] = None) -> int:
        """The earliest token position any of these variants patches (attention patterns: query position)."""
        ids = range(self.n_variants) if variant_ids is None else variant_ids
        first = self.seq_len
        for v in ids:
            for p in self.points[v]:
                pos = p.site.pos
                first = min(first, 0 if pos is None else min(pos))
        return first


def apply_mask(act: Tensor, mask: Tensor, src: Tensor, alpha: Union[float, Projection]) -> Tensor:
    """Patch ``act`` where ``mask`` is set: to ``src`` (``alpha`` 1), ``alpha`` of the way from ``act`` to it, or
    along a subspace (``alpha`` a :class:`~mechpatch.patching.interventions.Projection`).

    >>> apply_mask(torch.zeros(3), torch.tensor([True, False, True]), torch.ones(3), 0.5)
    tensor([0.5000, 0.0000, 0.5000])
    """
    if not isinstance(alpha, Projection) and alpha == 1.0:
        return torch.where(mask, src, act)
    return torch.where(mask, act + step(alpha, src - act), act)


def compile_plan(model: HookedModel, variants: SiteSets, seq_len: int) -> PatchPlan:
    """Validate every site of every variant and build the per-hook masks."""
    if not isinstance(variants, (Site, str)) and isinstance(variants, Sized) and len(variants) == 0:
        raise EmptyInputError("no patches to run: give at least one set of sites")
    variants = site_sets(model.spec, variants, "variants")
    norm_variants = []
    points = []
    masks: dict[str, Tensor] = {}
    specs: dict[str, tuple[HookSpec, Optional[int]]] = {}
    for v, sites in enumerate(variants):
        if isinstance(sites, Site):
            sites = (sites,)
        pts = tuple(model.hook_point(s, seq_len) for s in sites)
        if not pts:
            raise EmptyInputError(f"variant {v} patches no sites; every row needs at least one site")
        norm_variants.append(tuple(p.site for p in pts))
        points.append(pts)
        for p in pts:
            if p.name not in masks:
                shape = list(hook_shape(p.spec, model.spec, 1, seq_len))[1:]
                keep = {p.spec.pos_axis - 1} | ({p.spec.unit_axis - 1} if p.spec.unit_axis is not None else set())
                shape = [n if i in keep else 1 for i, n in enumerate(shape)]
                masks[p.name] = torch.zeros([len(variants), *shape], dtype=torch.bool)
                specs[p.name] = (p.spec, p.site.layer_index)
            idx = _mask_index(p, seq_len)
            masks[p.name][(v, *idx)] = True
    hooks = {n: HookMask(n, specs[n][0], specs[n][1], m.to(model.device)) for n, m in masks.items()}
    return PatchPlan(tuple(norm_variants), tuple(points), hooks, seq_len)


def _mask_index(point: HookPoint, seq_len: int) -> tuple:
    """Index into a mask (hook axes without batch, unselected axes of size 1) for one site."""
    spec = point.spec
    idx: list = [slice(None)] * (len(spec.axes) - 1)
    if spec.unit_axis is not None:
        idx[spec.unit_axis - 1] = point.site.unit
    if point.site.pos is not None:
        pos = resolve_positions(point.site.pos, seq_len, what=f"{point.site.label}: position")
        idx[spec.pos_axis - 1] = torch.tensor(pos)
    for i in range(len(spec.axes) - 1):
        if i != spec.pos_axis - 1 and i != (spec.unit_axis or 0) - 1:
            idx[i] = 0
    return tuple(idx)
