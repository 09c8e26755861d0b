"""Sweeps: (sites x positions) x intervention x metric -> a labelled :class:`PatchResult`.

A sweep is a :class:`Grid` of site sets (one cell = one set patched together) run through
:func:`~mechpatch.patching.engine.run_patches` in both directions:

- ``direction="denoise"``: run the corrupted prompts, restore clean activations;
- ``direction="noise"``: run the clean prompts, insert corrupted activations (or zero/mean/...).

Typical calls (see the tests for runnable versions)::

    res = sweep(model, pair, "head", metric="logit_diff")          # layer x head
    res = sweep(model, pair, "resid_pre")                          # layer x position
    res = sweep(model, pair, "head", by_position=True)             # layer x head x position
"""

import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Optional, Union


from mechpatch.errors import (
    EmptyInputError,
    InvalidArgumentError,
    InvalidTypeError,
    ShapeMismatchError,
    SiteOutOfRangeError,
    UnknownSiteKindError,
    UnsupportedSiteError,
    choices,
)
from mechpatch.model import HookedModel
from mechpatch.patching.engine import run_patches
from mechpatch.patching.interventions import Intervention, Replace, check_direction
from mechpatch.patching.metrics import Metric, as_metric
from mechpatch.patching.results import PatchResult
from mechpatch.prompts import PromptPair
from mechpatch.sites import (
    Attn,
    Head,
    HeadResult,
    Key,
    Mlp,
    Neuron,
    Pattern,
    Query,
    Resid,
    Site,
    SiteSets,
    Value,
    resolve_positions,
    site_sets,
)


@dataclass(frozen=True)
class Grid:
    """Cells of site sets laid out on labelled axes; ``cells`` is row-major over ``shape``."""

    cells: tuple[tuple[Site, ...], ...]
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        size = 1
        for n in self.shape:
            size *= n
        if size != len(self.cells):
            raise ShapeMismatchError(f"grid of shape {self.shape} needs {size} cells, got {len(self.cells)}")
        if len(self.axes) != len(self.shape) or len(self.labels) != len(self.shape):
            raise ShapeMismatchError(
                f"a grid needs one axis name and one label list per dimension: shape {self.shape}, "
                f"{len(self.axes)} axis names, {len(self.labels)} label lists"
            )
        if size == 0:
            raise EmptyInputError("empty sweep: the grid has no cells")

    @classmethod
    def of(cls, site_sets: Sequence[Union[Site, Sequence[Site]]], labels: Optional[Sequence[str]] = None) -> "Grid":
        """A one-axis grid from any list of sites or site sets (labels default to the sites' labels)."""
        cells = tuple((s,) if isinstance(s, Site) else tuple(s) for s in site_sets)
        if not cells:
            raise EmptyInputError("empty sweep: no site sets given")
        lab = tuple(labels) if labels is not None else tuple(" + ".join(s.label for s in c) for c in cells)
        return cls(cells, (len(cells),), ("patch",), (lab,))


_HEAD_KINDS: dict[str, type[Site]] = {
    "head": Head, "z": Head, "head_result": HeadResult, "q": Query, "query": Query, "k": Key, "key": Key,
    "v": Value, "value": Value, "pattern": Pattern,
}
_LAYER_KINDS: dict[str, Callable[..., Site]] = {
    "resid_pre": lambda l, pos=None: Resid(l, "pre", pos=pos),
    "resid_mid": lambda l, pos=None: Resid(l, "mid", pos=pos),
    "resid_post": lambda l, pos=None: Resid(l, "post", pos=pos),
    "attn_out": lambda l, pos=None: Attn(l, pos=pos),
    "mlp_out": lambda l, pos=None: Mlp(l, pos=pos),
}
SWEEP_KINDS = tuple(_LAYER_KINDS) + tuple(_HEAD_KINDS) + ("neuron",)


def make_grid(
    model: HookedModel,
    kind: str,
    seq_len: int,
    by_position: Optional[bool] = None,
    layers: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    pos_labels: Optional[Sequence[str]] = None,
) -> Grid:
    """The standard grid of a sweep kind.

    Layer kinds (resid_pre/mid/post, attn_out, mlp_out) are layer x position by default; head kinds
    (head, head_result, q, k, v, pattern) are layer x head, or layer x head x position with
    ``by_position=True`` (k and v sweep key/value groups). ``neuron`` is layer x neuron.

    ``positions`` are token indices ``0..seq_len-1`` or ``-seq_len..-1`` from the end (labelled by the
    index they resolve to); ``layers`` are ``0..n_layers-1``. Each may name an entry once.

    Raises:
        UnknownSiteKindError: ``kind`` is not one of :data:`SWEEP_KINDS`.
        SiteOutOfRangeError: a layer outside the model or a position outside the prompt.
        InvalidArgumentError: a layer or position given twice (it would make two identical cells).
        EmptyInputError: an empty ``layers`` or ``positions`` list.
    """
    if kind not in SWEEP_KINDS:
        raise UnknownSiteKindError(f"unknown sweep kind {kind!r}; valid: {choices(SWEEP_KINDS)}")
    spec = model.spec
    layer_list = list(range(spec.n_layers)) if layers is None else _check_layers(layers, spec.n_layers)
    if positions is not None and (isinstance(positions, (str, bytes)) or not isinstance(positions, Iterable)):
        raise InvalidTypeError(f"positions must be a list of token positions (0..{seq_len - 1}, or -{seq_len}..-1 "
                               f"from the end) or None; got {type(positions).__name__} {positions!r}")
    positions = None if positions is None else list(positions)
    if positions is not None and len(positions) == 0:
        raise EmptyInputError(f"positions is empty; give token positions in 0..{seq_len - 1} or None for every position")
    pos_list = list(range(seq_len)) if positions is None else list(resolve_positions(positions, seq_len))
    plabels = tuple(
        f"{p}:{pos_labels[p]}" if pos_labels is not None else str(p) for p in pos_list
    )
    llabels = tuple(f"L{l}" for l in layer_list)
    if kind in _LAYER_KINDS:
        make = _LAYER_KINDS[kind]
        if by_position is False:
            cells = tuple((make(l),) for l in layer_list)
            return Grid(cells, (len(layer_list),), ("layer",), (llabels,))
        cells = tuple((make(l, pos=p),) for l in layer_list for p in pos_list)
        return Grid(cells, (len(layer_list), len(pos_list)), ("layer", "pos"), (llabels, plabels))
    if kind in _HEAD_KINDS:
        cls = _HEAD_KINDS[kind]
        grouped = cls in (Key, Value)
        n_units = spec.n_kv_heads if grouped else spec.n_heads
        unit_name = "kv_head" if grouped else "head"
        ulabels = tuple(f"{'G' if grouped else 'H'}{u}" for u in range(n_units))

        def site(l: int, u: int, pos=None) -> Site:
            return cls(l, u, pos=pos)

        if by_position:
            cells = tuple((site(l, u, pos=p),) for l in layer_list for u in range(n_units) for p in pos_list)
            return Grid(
                cells, (len(layer_list), n_units, len(pos_list)), ("layer", unit_name, "pos"),
                (llabels, ulabels, plabels),
            )
        cells = tuple((site(l, u),) for l in layer_list for u in range(n_units))
        return Grid(cells, (len(layer_list), n_units), ("layer", unit_name), (llabels, ulabels))
    if kind == "neuron":
        if spec.d_mlp is None:
            raise UnsupportedSiteError("this model is attention-only and has no MLP neurons; sweep heads or resid_*")
        cells = tuple((Neuron(l, n),) for l in layer_list for n in range(spec.d_mlp))
        return Grid(
            cells, (len(layer_list), spec.d_mlp), ("layer", "neuron"),
            (llabels, tuple(f"N{n}" for n in range(spec.d_mlp))),
        )
    raise UnknownSiteKindError(f"unknown sweep kind {kind!r}; valid: {choices(SWEEP_KINDS)}")  # pragma: no cover


def _check_positional(kind: str, by_position: Optional[bool], positions: Optional[Sequence[int]]) -> None:
    """Refuse ``positions`` for a sweep kind whose grid has no position axis (they would be ignored).

    (Not in :func:`make_grid`: a config's one ``positions`` list shapes each of its kinds that has the axis.)
    """
    if by_position is not None and not isinstance(by_position, bool):
        raise InvalidTypeError(f"by_position must be True, False or None; got {by_position!r}")
    if kind == "neuron" and by_position:
        raise InvalidArgumentError("a 'neuron' sweep is layer x neuron over all positions; by_position=True is not "
                                   "available for it (give Neuron sites with pos= in a list instead)")
    positional = (kind in _LAYER_KINDS and by_position is not False) or (kind in _HEAD_KINDS and bool(by_position))
    if positions is not None and not positional and kind in SWEEP_KINDS:
        how = "by_position=True" if kind in _HEAD_KINDS else "a layer x position kind (resid_*, attn_out, mlp_out)"
        raise InvalidArgumentError(
            f"positions={list(positions)!r} would be ignored: a {kind!r} sweep with by_position={by_position!r} has no "
            f"position axis; use {how}, or drop positions"
        )


def _check_layers(layers: Sequence[int], n_layers: int) -> list[int]:
    """``layers`` as a list, each an int in 0..n_layers-1 given once."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise InvalidTypeError(f"layers must be a list of layer indices (0..{n_layers - 1}) or None; got "
                               f"{type(layers).__name__} {layers!r}")
    out = []
    for l in layers:
        try:
            if isinstance(l, bool):
                raise TypeError
            out.append(operator.index(l))  # ints, numpy and 0-d tensor integers
        except TypeError:
            raise InvalidArgumentError(f"layer {l!r} is not an int; valid: 0..{n_layers - 1}") from None
    if not out:
        raise EmptyInputError(f"layers is empty; give layers in 0..{n_layers - 1} or None for every layer")
    for l in out:
        if not 0 <= l < n_layers:
            raise SiteOutOfRangeError(f"layer {l} is out of range; the model has {n_layers} layers (valid: 0..{n_layers - 1})")
    dup = sorted({l for l in out if out.count(l) > 1})
    if dup:
        raise InvalidArgumentError(f"layers {dup} are given more than once; give each layer once")
    return out


def sweep(
    model: HookedModel,
    pair: PromptPair,
    grid: Union[str, Grid, SiteSets],
    *,
    metric: Union[Metric, str, Callable],
    direction: str = "denoise",
    intervention: Intervention = Replace(),
    by_position: Optional[bool] = None,
    layers: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    method: str = "auto",
    batch_size: Optional[int] = None,
    memory_budget: Union[int, str, None] = None,
    progress: Optional[bool] = None,
) -> PatchResult:
    """Run every cell of a grid as one patch and return labelled per-prompt metric values.

    Args:
        model: the model.
        pair: clean/corrupted prompts with answers (:func:`mechpatch.make_pair`).
        grid: a sweep kind (``"resid_pre"``, ``"head"``, ``"q"``, ``"pattern"``, ... see
            :data:`SWEEP_KINDS`), a :class:`Grid`, or any list of sites / site sets.
        metric: ``"logit_diff"``, ``"prob_diff"``, ``"kl_div"``, ``"loss"``, a Metric or a callable.
        direction: ``"denoise"`` (patch clean into corrupted) or ``"noise"`` (corrupted into clean).
        intervention: Replace() (default), Zero(), Mean(), Resample(), Interpolate(alpha).
        by_position, layers, positions: shape a named grid (see :func:`make_grid`).
        method, batch_size, memory_budget, progress: see :func:`~mechpatch.patching.engine.run_patches`.

    Returns:
        :class:`PatchResult`.
    """
    check_direction(direction)
    if not isinstance(pair, PromptPair):
        raise InvalidArgumentError(f"pair must be a PromptPair (see mechpatch.make_pair), got {type(pair).__name__}")
    if not isinstance(grid, str) and (by_position is not None or layers is not None or positions is not None):
        raise InvalidArgumentError(
            "by_position, layers and positions shape a named sweep kind (e.g. grid='resid_pre'); with a Grid or a "
            "list of sites, give the sites themselves (e.g. Resid(0, pos=3))"
        )
    seq_len = pair.seq_len
    if isinstance(grid, str):
        _check_positional(grid, by_position, positions)
        str_tokens = model.to_str_tokens(pair.clean[0]) if model.tokenizer is not None else None
        grid = make_grid(model, grid, seq_len, by_position, layers, positions, str_tokens)
    elif not isinstance(grid, Grid):
        grid = Grid.of(site_sets(model.spec, grid, "grid"))
    metric = as_metric(metric)
    base, source = (pair.corrupted, pair.clean) if direction == "denoise" else (pair.clean, pair.corrupted)

    run = run_patches(
        model, base, grid.cells, metric=metric, source=source, intervention=intervention, answers=pair.answers,
        clean="source" if direction == "denoise" else "base", method=method, batch_size=batch_size,
        memory_budget=memory_budget, progress=progress,
    )
    clean_value, corrupted_value = (
        (run.source_values, run.base_values) if direction == "denoise" else (run.base_values, run.source_values)
    )
    return PatchResult(
        values=run.values.reshape(*grid.shape, pair.n_prompts),
        axes=grid.axes,
        labels=grid.labels,
        sites=grid.cells,
        clean=clean_value,
        corrupted=corrupted_value,
        noop=run.noop.reshape(grid.shape),
        metric=metric.name,
        direction=direction,
        intervention=type(intervention).__name__,
        meta={"method": run.method, "forwards": run.forwards,
              **({"fallback_reason": run.fallback_reason} if run.fallback_reason else {}),
              **({"oom_halvings": run.oom_halvings, "smallest_chunk": run.smallest_chunk} if run.oom_halvings else {})},
    )
