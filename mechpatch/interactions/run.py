"""Interactions of model components: masks -> the patching engine -> a fitted or measured set function.

Every mask becomes one variant of :func:`mechpatch.patching.run_patches` (the union of the sites of the
components it patches), so thousands of masks run in a few batched forwards. The empty mask is the
unpatched base run and costs nothing; repeated masks run once.

- :func:`find_interactions`: a random design, a sparse low-order fit, held-out R^2.
- :func:`exhaustive_interactions`: every set of at most ``order`` components, exact Moebius effects (the
  ground truth to validate against; ``N (N - 1) / 2`` pair masks).
- :func:`find_function_interactions`: the same fit on any ``f(masks) -> values`` (synthetic tests, or
  a value function computed some other way).

Both take a ``backend`` (:data:`BACKENDS`): ``"mechpatch"``, the sparse Fourier fit; ``"proxy"``
(:mod:`mechpatch.interactions.proxy`), gradient-boosted trees on the same random masks, their interactions read out
exactly and the strongest refitted; ``"spex"`` (the ``spex`` extra, :mod:`mechpatch.interactions.spex`), where SPEX
chooses its own structured masks and decodes the sparse terms. The same value function or engine runs them all.

Resumable: given ``chunks=`` (a :class:`~mechpatch.chunks.ChunkStore`, e.g. a run directory's
:class:`~mechpatch.runs.RunStore`), :func:`evaluate_masks` runs the distinct masks in chunks of ``chunk_size``
and saves each chunk's values as it completes; run again with the same store it loads the saved chunks
(checking they hold the same masks) and computes only the rest, so an interrupted computation ends with
the values, costs and fits of an uninterrupted one. The chunking itself (``chunk_size``) sets how the engine
batches its forwards and so can change the last bits: keep it fixed for bitwise-identical results.
"""

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Protocol, Union, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechpatch._progress import progress_bar
from mechpatch.chunks import CheckpointError, ChunkStore
from mechpatch.errors import EmptyInputError
from mechpatch.interactions.basis import InteractionError, Term, check_choice, to_moebius
from mechpatch.interactions.designs import DESIGNS, Design, make_design
from mechpatch.interactions.fit import FitSettings, fit_fourier
from mechpatch.interactions.results import InteractionModel
from mechpatch.interactions.proxy import proxy_moebius
from mechpatch.interactions.spex import spex_moebius
from mechpatch.patching.engine import run_patches
from mechpatch.patching.interventions import Intervention, Zero, check_direction
from mechpatch.patching.metrics import KLDivergence, Loss, Metric
from mechpatch.sites import Site

#: how interactions are recovered from masks: the sparse Fourier fit, gradient-boosted trees, shapiq's SPEX
BACKENDS = ("mechpatch", "proxy", "spex")
Component = Union[Site, Sequence[Site]]
ValueFunction = Callable[[Tensor], Tensor]


@runtime_checkable
class Executor(Protocol):
    """Computes units somewhere (:mod:`mechpatch.runs.executor`: this process, or Ray workers holding the model):
    ``run(units, save, payloads)`` calls ``save(unit, tensors)`` for each, where the tensors are
    ``function(model, **kwargs)`` of the unit's payload ``("module:function", kwargs)``."""

    def run(self, units: Sequence[tuple[str, int]], save: Callable[[tuple[str, int], dict[str, Tensor]], None],
            payloads: dict[tuple[str, int], tuple[str, dict]]) -> None: ...


@dataclass(frozen=True)
class MaskValues:
    """Metric values of a batch of masks, with what they cost."""

    values: Float[Tensor, " mask"]  # mean over prompts
    per_prompt: Float[Tensor, "mask prompt"]
    evaluations: int  # distinct non-empty masks run
    forwards: int  # engine forward passes
    seconds: float


def _site_sets(components: Sequence[Component]) -> list[tuple[Site, ...]]:
    if isinstance(components, Site) or len(components) == 0:
        raise InteractionError("components must be a non-empty sequence of sites or site sets (e.g. heads(spec))")
    out = []
    for c in components:
        sites = (c,) if isinstance(c, Site) else tuple(c)
        if not sites or not all(isinstance(s, Site) for s in sites):
            raise InteractionError(f"each component must be a Site or a non-empty sequence of Sites; got {c!r}")
        out.append(sites)
    check_distinct(out)
    return out


def check_distinct(components: Sequence[tuple[Site, ...]], names: Optional[Sequence[str]] = None) -> None:
    """Refuse a component given more than once (the same site, or the same set of sites in any order).

    A repeated component would be measured against itself: a fake self-interaction (``L1H0 x L1H0``)
    and every pair with it counted twice. ``names`` label the components in the message (default: their sites).

    >>> from mechpatch.sites import Head
    >>> check_distinct([(Head(1, 0),), (Head(1, 1),), (Head(1, 0),)])
    Traceback (most recent call last):
    ...
    mechpatch.interactions.basis.InteractionError: components are repeated: L1H0 (components 0 and 2); give each component once
    """
    seen: dict[frozenset, list[int]] = {}
    for i, sites in enumerate(components):
        seen.setdefault(frozenset(sites), []).append(i)
    repeated = [idx for idx in seen.values() if len(idx) > 1]
    if repeated:
        def label(i: int) -> str:
            return names[i] if names is not None else "+".join(s.label for s in components[i])

        detail = "; ".join(f"{' = '.join(dict.fromkeys(label(i) for i in idx))} (components "
                           f"{' and '.join(str(i) for i in idx)})" for idx in repeated)
        raise InteractionError(f"components are repeated: {detail}; give each component once")


def component_labels(components: Sequence[Component]) -> tuple[str, ...]:
    """One label per component: the site's label, or the labels of a site set joined by ``+``."""
    return tuple("+".join(s.label for s in sites) for sites in _site_sets(components))


def _higher_is_better(metric: object, given: Optional[bool]) -> bool:
    if given is not None:
        return bool(given)
    m = metric if isinstance(metric, Metric) else None
    return not isinstance(m, (Loss, KLDivergence)) and metric not in ("loss", "kl_div")


def _clean(metric: object, clean: Optional[str], direction: str) -> Optional[str]:
    if clean is not None or not (isinstance(metric, KLDivergence) or metric == "kl_div"):
        return clean
    return "base" if direction == "noise" else "source"


def evaluate_masks(
    model: object,
    base: Union[Int[Tensor, "batch pos"], Sequence[str]],
    components: Sequence[Component],
    *,
    masks: Bool[Tensor, "mask component"],
    metric: Union[Metric, str, Callable],
    source: Union[Int[Tensor, "batch pos"], Sequence[str], None] = None,
    intervention: Intervention = Zero(),
    answers: Optional[Int[Tensor, "batch answer"]] = None,
    clean: Optional[str] = None,
    method: str = "auto",
    batch_size: Optional[int] = None,
    memory_budget: Union[int, str, None] = None,
    progress: Optional[bool] = None,
    chunk_size: Optional[int] = None,
    chunks: Optional[ChunkStore] = None,
    chunk_group: str = "masks",
    executor: Optional[Executor] = None,
) -> MaskValues:
    """Run every mask (True = patch that component) through the engine and return the metric per mask.

    Args:
        model, base, metric, source, intervention, answers, clean, method, batch_size, memory_budget, progress: as
            :func:`mechpatch.patching.run_patches` (``intervention`` defaults to zero ablation).
        components: N components, each a site or a set of sites patched together.
        masks: [mask, N] booleans.
        chunk_size: distinct non-empty masks per engine call (None: all in one).
        chunks: a chunk store (see the module docstring): each chunk's values are saved there as it completes
            (chunk ``k`` of ``chunk_group``: its masks, values [mask, prompt], the base run's values, forwards), and
            loaded instead of recomputed when present.
        chunk_group: the chunk group name, one per set of masks kept in the same store.
        executor: computes the chunks not in the store (default: here, one after another): an executor of
            :mod:`mechpatch.runs.executor` (e.g. Ray workers that hold the same model) runs :func:`mask_chunk` on
            each chunk's masks with these arguments; the values are the same wherever a chunk runs.

    Returns:
        :class:`MaskValues`; values are means over the prompts. ``evaluations`` and ``forwards`` count the
        chunks loaded as well as those computed (what an uninterrupted call reports).

    Raises:
        CheckpointError: a saved chunk holds other masks or prompts (another design, seed or chunk size).

    >>> from mechpatch import zoo
    >>> from mechpatch.chunks import MemoryChunks
    >>> from mechpatch.sites import heads
    >>> model = zoo.load("induction-2l")
    >>> tokens, store = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(0)), MemoryChunks()
    >>> masks = torch.tensor([[True, False], [False, True], [True, True], [False, False]])
    >>> a = evaluate_masks(model, tokens, heads(model.spec)[:2], masks=masks, metric="loss", chunk_size=2, chunks=store)
    >>> sorted(store.chunks)
    [('masks', 0), ('masks', 1)]
    >>> b = evaluate_masks(model, tokens, heads(model.spec)[:2], masks=masks, metric="loss", chunk_size=2, chunks=store)
    >>> torch.equal(a.per_prompt, b.per_prompt), (b.evaluations, b.forwards) == (a.evaluations, a.forwards)
    (True, True)
    """
    sets, masks = _check_mask_args(components, masks, chunk_size, chunks, executor)
    start = time.perf_counter()
    uniq, inverse = torch.unique(masks, dim=0, return_inverse=True)
    run_rows = [r for r in range(len(uniq)) if bool(uniq[r].any())]
    engine = dict(source=source, intervention=intervention, answers=answers, clean=clean, method=method,
                  batch_size=batch_size, memory_budget=memory_budget)
    if not run_rows:  # only the base run: one variant that patches nothing is impossible, so patch and read base
        run = run_patches(model, base, [sets[0]], metric=metric, progress=progress, **engine)
        per = run.base_values[None].repeat(len(uniq), 1)[inverse]
        return MaskValues(per.mean(1).double(), per, 0, 0, time.perf_counter() - start)
    inputs = _inputs_key(base, source, sets, intervention) if chunks is not None else None
    parts = _mask_chunks(model, base, sets, metric, uniq, run_rows, chunk_size, chunks, chunk_group, inputs, progress,
                         engine, executor)
    per = _join_chunks(parts, len(uniq), run_rows, chunk_group)[inverse]
    forwards = sum(int(p["forwards"][0]) for p in parts)
    return MaskValues(per.mean(1).double(), per, len(run_rows), forwards, time.perf_counter() - start)


def _check_mask_args(components: Sequence[Component], masks: Tensor, chunk_size: object, chunks: object,
                     executor: object = None) -> tuple[list[tuple[Site, ...]], Tensor]:
    """:func:`evaluate_masks`'s argument checks; returns the components' site sets and the masks (a nested list of
    bools converted to a tensor)."""
    sets = _site_sets(components)
    if isinstance(masks, (list, tuple)):
        rows = masks
        if not all(isinstance(r, (list, tuple)) and all(isinstance(b, bool) for b in r) for r in rows) or len(
                {len(r) for r in rows}) > 1:
            raise InteractionError(f"masks must be a bool tensor [mask, {len(sets)}] or a list of equal-length lists "
                                   "of True/False (one column per component); got a list holding other values")
        masks = torch.tensor(rows, dtype=torch.bool).reshape(len(rows), -1 if rows else len(sets))
    elif not isinstance(masks, Tensor):
        raise InteractionError(f"masks must be a bool tensor [mask, {len(sets)}] (one column per component); got "
                               f"{type(masks).__name__}")
    if masks.ndim != 2 or masks.shape[1] != len(sets) or masks.dtype != torch.bool:
        raise InteractionError(
            f"masks must be a bool tensor [mask, {len(sets)}] (one column per component); got "
            f"{masks.dtype} {tuple(masks.shape)}"
        )
    if masks.shape[0] == 0:
        raise EmptyInputError(f"masks is empty (shape {tuple(masks.shape)}): give at least one mask [mask, {len(sets)}]")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise InteractionError(f"chunk_size must be a positive int or None (one chunk); got {chunk_size!r}")
    check_where(chunks, executor)
    return sets, masks


def check_where(chunks: object, executor: object) -> None:
    """Refuse a chunk store or an executor that lacks the methods the searches call (before any work)."""
    if chunks is not None and not isinstance(chunks, ChunkStore):
        raise InteractionError(f"chunks must have load_chunk(group, index) and save_chunk(group, index, tensors) (a "
                               f"RunStore or mechpatch.chunks.MemoryChunks); got {type(chunks).__name__}")
    if executor is not None and not callable(getattr(executor, "run", None)):
        raise InteractionError(f"executor must have run(units, save, payloads) (mechpatch.runs.executor: "
                               f"run_executor, function_executor); got {type(executor).__name__}")


def _mask_chunks(
    model: object, base: object, sets: list[tuple[Site, ...]], metric: object, uniq: Tensor, run_rows: list[int],
    chunk_size: Optional[int], chunks: Optional[ChunkStore], chunk_group: str, inputs: Optional[Tensor],
    progress: Optional[bool], engine: dict, executor: Optional[Executor] = None,
) -> list[dict]:
    """The distinct non-empty masks ``uniq[run_rows]`` in chunks of ``chunk_size``, one engine call each: each
    chunk loaded from ``chunks`` (and checked) when saved there, else computed (here, or by ``executor``) and
    saved as it arrives."""
    size = chunk_size or len(run_rows)
    bounds = list(range(0, len(run_rows), size))
    several = len(bounds) > 1
    bar = progress_bar(total=len(run_rows), desc="masks", unit="mask",
                       enabled=several and (progress if progress is not None else len(bounds) > 2))
    parts: list[Optional[dict]] = [None] * len(bounds)
    todo: dict[tuple[str, int], list[int]] = {}
    for k, lo in enumerate(bounds):
        rows = run_rows[lo:lo + size]
        part = chunks.load_chunk(chunk_group, k) if chunks is not None else None
        if part is None:
            todo[(chunk_group, k)] = rows
            continue
        _check_chunk(part, uniq[rows], inputs, chunk_group, k)
        parts[k] = part
        bar.update(len(rows))

    def save(unit: tuple[str, int], out: dict[str, Tensor]) -> None:
        rows = todo[unit]
        part = {"masks": uniq[rows].clone(), **out}
        if chunks is not None:
            chunks.save_chunk(chunk_group, unit[1], {**part, "inputs": inputs})
        parts[unit[1]] = part
        bar.update(len(rows))

    quiet = False if (several or executor is not None) else progress

    def variants(rows: list[int]) -> list[tuple[Site, ...]]:  # each mask: the union of its components' sites
        return [tuple(s for i in uniq[r].nonzero().flatten().tolist() for s in sets[i]) for r in rows]

    payloads = {unit: (MASK_CHUNK, dict(base=base, metric=metric, engine=engine, progress=quiet,
                                        variants=variants(rows))) for unit, rows in todo.items()}
    if executor is None:
        for unit, (_, kwargs) in payloads.items():
            save(unit, mask_chunk(model, **kwargs))
    else:
        executor.run(list(payloads), save, payloads)
    bar.close()
    return parts


#: :func:`mask_chunk` by name: what a worker of an executor runs on its model for one chunk of masks
MASK_CHUNK = "mechpatch.interactions.run:mask_chunk"


def mask_chunk(model: object, *, base: object, variants: list[tuple[Site, ...]], metric: object, engine: dict,
               progress: Optional[bool] = False) -> dict[str, Tensor]:
    """One chunk of masks through the engine (each variant the union of the sites its mask patches): the metric
    values [variant, prompt], the unpatched base values and the forwards it took, on the CPU (what an executor's
    worker sends back; :func:`evaluate_masks` adds the masks and saves the chunk)."""
    run = run_patches(model, base, variants, metric=metric, progress=progress, **engine)
    return {"values": run.values.cpu(), "base": run.base_values.cpu(), "forwards": torch.tensor([run.forwards])}


def _join_chunks(parts: list[dict], n_uniq: int, run_rows: list[int], chunk_group: str) -> Tensor:
    """Values [distinct mask, prompt]: the chunks' for the masks ``run_rows``, the base run's for the empty mask.

    Refuses chunks whose unpatched base values differ (computed on other prompts, weights or device).
    """
    base_values = parts[0]["base"]
    for k, part in enumerate(parts):
        if part["base"].shape != base_values.shape or not torch.equal(part["base"], base_values):
            raise CheckpointError(f"chunk {k} of {chunk_group!r} has other unpatched base values than chunk 0: the chunks "
                                  "were computed on other prompts, weights or device; start afresh (another store, "
                                  "or --force)")
    # values keep the engine's dtype: the model's precision (float64 stays float64; see metrics.value_dtype)
    per = base_values[None].repeat(n_uniq, 1)
    per[torch.tensor(run_rows)] = torch.cat([p["values"].to(per.dtype) for p in parts])
    return per


def _inputs_key(base: object, source: object, sets: list[tuple[Site, ...]], intervention: Intervention) -> Tensor:
    """SHA-256 (uint8 [32]) of what a chunk of mask values was computed on: prompts, components, intervention."""
    import hashlib

    digest = hashlib.sha256(repr([[s.label for s in c] for c in sets]).encode())
    digest.update(type(intervention).__name__.encode())
    for run in (base, source):
        if isinstance(run, Tensor):
            digest.update(f"tensor{tuple(run.shape)}".encode())
            digest.update(run.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
        else:
            digest.update(repr(None if run is None else list(run)).encode())
    return torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8)


def _check_chunk(part: dict[str, Tensor], masks: Tensor, inputs: Tensor, group: str, k: int) -> None:
    """Refuse a saved chunk that is not the one these masks would compute."""
    again = "; start afresh (another chunk store, or --force for a run directory)"
    missing = sorted({"masks", "values", "base", "forwards", "inputs"} - set(part))
    if missing:
        raise CheckpointError(f"chunk {k} of {group!r} is not a chunk of mask values: it lacks {', '.join(missing)}"
                              f"{again}")
    if not torch.equal(part["inputs"], inputs):
        raise CheckpointError(f"chunk {k} of {group!r} was computed on other prompts, components or intervention"
                              f"{again}")
    if part["masks"].shape != masks.shape or not torch.equal(part["masks"].to(torch.bool), masks):
        raise CheckpointError(f"chunk {k} of {group!r} holds other masks ({tuple(part['masks'].shape)}) than this "
                              f"computation's chunk ({tuple(masks.shape)}): it was saved by another design, seed or "
                              f"chunk size{again}")
    if part["values"].shape[0] != masks.shape[0]:
        raise CheckpointError(f"chunk {k} of {group!r} has {part['values'].shape[0]} rows of values for "
                              f"{masks.shape[0]} masks{again}")


def _fit_model(
    design: Design, values: Tensor, test: Optional[tuple[Design, Tensor]], labels: tuple[str, ...],
    settings: FitSettings, direction: str, higher_is_better: bool,
) -> InteractionModel:
    fit = fit_fourier(design.masks, values, design.q, settings)
    moebius = to_moebius(fit.terms, fit.coef, fit.q)
    r2 = None
    if test is not None:
        r2 = InteractionModel(labels, moebius, direction, higher_is_better).r2_on(test[0].masks, test[1])
    return InteractionModel(labels, moebius, direction, higher_is_better, "sparse", settings.max_order, r2=r2,
                            fourier=fit, info={**fit.info, "design": design.kind, "keep": design.keep,
                                                "q": design.q, "train_masks": design.n_masks,
                                                "heldout_masks": 0 if test is None else test[0].n_masks})


def check_search(direction: str, holdout: float, backend: str, design: str, n_masks: object = None,
                 n_components: int = 0) -> None:
    """The argument checks of :func:`find_interactions` and :func:`find_function_interactions`, before any mask runs:
    with ``n_masks``, also that the masks left after the held-out share can be fitted."""
    check_direction(direction)
    check_choice("backend", backend, BACKENDS)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0.0 <= holdout < 1.0:
        raise InteractionError(f"holdout must be a fraction in [0, 1), got {holdout!r}")
    check_choice("design", design, [d for d in DESIGNS if d in ("bernoulli", "antithetic")])
    if n_masks is None or backend == "spex":  # SPEX sizes its own design
        return
    if isinstance(n_masks, bool) or not isinstance(n_masks, int) or n_masks < 2:
        raise InteractionError(f"n_masks must be an int >= 2; got {n_masks!r}")
    fitted = n_masks - (max(1, round(n_masks * holdout)) if holdout > 0 else 0)
    need = 8 if backend == "proxy" else n_components + 3
    if fitted < need:
        raise InteractionError(f"{n_masks} masks leave {fitted} to fit after holding out {holdout:.0%}; the "
                               f"{backend} backend needs at least {need} for {n_components} components: raise n_masks "
                               f"to {math.ceil(need / (1 - holdout)) + 1} or more (several times more to find "
                               "interactions)")


def check_flags(seed: object = 0, higher_is_better: object = True, optional: bool = False) -> None:
    """Refuse a ``seed`` that is not an int and a ``higher_is_better`` that is not True or False (or None, the
    metric's default, when ``optional``), before any mask runs.

    >>> check_flags(seed=0, higher_is_better="no")
    Traceback (most recent call last):
    ...
    mechpatch.interactions.basis.InteractionError: higher_is_better must be True or False; got str 'no'
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InteractionError(f"seed must be an int; got {type(seed).__name__} {seed!r}")
    if not -(2 ** 63) <= seed < 2 ** 63:
        raise InteractionError(f"seed must be in -2**63..2**63 - 1 (torch's generator); got {seed!r}")
    if not isinstance(higher_is_better, bool) and not (optional and higher_is_better is None):
        raise InteractionError(f"higher_is_better must be True or False{' (or None: by the metric)' if optional else ''}"
                               f"; got {type(higher_is_better).__name__} {higher_is_better!r}")


def _fit_settings(settings: Optional[FitSettings], max_order: int, seed: int) -> FitSettings:
    """``settings`` (default: FitSettings(max_order, seed)) with ``max_order``."""
    settings = settings or FitSettings(max_order=max_order, seed=seed)
    if settings.max_order != max_order:
        settings = FitSettings(**{**settings.__dict__, "max_order": max_order})
    return settings


def find_function_interactions(
    fn: ValueFunction,
    n_components: int,
    n_masks: int = 2000,
    *,
    design: str = "bernoulli",
    keep: float = 0.5,
    max_order: int = 2,
    holdout: float = 0.2,
    seed: int = 0,
    direction: str = "noise",
    higher_is_better: bool = True,
    labels: Optional[Sequence[str]] = None,
    settings: Optional[FitSettings] = None,
    backend: str = "mechpatch",
) -> InteractionModel:
    """Fit a sparse interaction model to a value function ``fn(masks[mask, component]) -> values[mask]``.

    ``n_masks`` is the whole budget: a ``holdout`` fraction of it is kept out of the fit to measure R^2.
    ``backend="spex"`` spends the rest on SPEX's own masks instead of the ``design`` (``settings`` unused).

    >>> def f(z):  # components 0 and 1 back each other up: the metric drops only when both are ablated
    ...     return 1.0 - (z[:, 0] & z[:, 1]).double()
    >>> m = find_function_interactions(f, 6, n_masks=200, labels="ABCDEF")
    >>> [(i.label, i.kind, round(i.effect, 3)) for i in m.top(1)], round(m.r2, 3)
    ([('A x B', 'redundancy', -1.0)], 1.0)
    """
    check_search(direction, holdout, backend, design, n_masks, n_components)
    check_flags(seed, higher_is_better)
    settings = _fit_settings(settings, max_order, seed)
    labels = tuple(str(x) for x in labels) if labels is not None else tuple(f"c{i}" for i in range(n_components))
    if len(labels) != n_components:
        raise InteractionError(f"{len(labels)} labels for {n_components} components")
    start = time.perf_counter()
    if backend == "spex":
        def values_of(masks: Tensor) -> Tensor:
            values = torch.as_tensor(fn(masks)).double()
            if values.shape != (masks.shape[0],):
                raise InteractionError(f"the value function returned shape {tuple(values.shape)}; "
                                       f"need ({masks.shape[0]},)")
            spent[0] += masks.shape[0]
            return values

        spent = [0]
        out = _spex_model(values_of, n_masks, holdout, design, keep, max_order, seed, labels, direction,
                          higher_is_better)
        return _with_cost(out, spent[0], None, time.perf_counter() - start)
    d = make_design(design, n_components, n_masks, keep=keep, seed=seed)
    values = torch.as_tensor(fn(d.masks)).double()
    if values.shape != (d.n_masks,):
        raise InteractionError(f"the value function returned shape {tuple(values.shape)}; need ({d.n_masks},)")
    out = _fit_split(d, values, holdout, seed, labels, settings, direction, higher_is_better, backend)
    return _with_cost(out, d.n_masks, None, time.perf_counter() - start)


def _fit_split(d: Design, values: Tensor, holdout: float, seed: int, labels: tuple[str, ...],
               settings: FitSettings, direction: str, higher_is_better: bool, backend: str = "mechpatch"
               ) -> InteractionModel:
    if backend == "proxy":
        return _proxy_model(d, values, holdout, seed, labels, settings.max_order, direction, higher_is_better)
    if holdout == 0:
        return _fit_model(d, values, None, labels, settings, direction, higher_is_better)
    train, test = d.split(holdout, seed)
    return _fit_model(d.subset(train), values[train], (d.subset(test), values[test]), labels, settings, direction,
                      higher_is_better)


def _proxy_model(d: Design, values: Tensor, holdout: float, seed: int, labels: tuple[str, ...], max_order: int,
                 direction: str, higher_is_better: bool) -> InteractionModel:
    """The proxy backend on the design's masks less the held-out ones; R^2 on those."""
    train, test = d.split(holdout, seed) if holdout > 0 else (torch.arange(d.n_masks), None)
    moebius, info = proxy_moebius(d.masks[train], values[train], max_order, seed)
    m = InteractionModel(labels, moebius, direction, higher_is_better, "proxy", max_order,
                         info={**info, "design": d.kind, "keep": d.keep, "train_masks": len(train),
                               "heldout_masks": 0 if test is None else len(test)})
    if test is None:
        return m
    r2 = m.r2_on(d.masks[test], values[test])
    return InteractionModel(labels, moebius, direction, higher_is_better, "proxy", max_order, r2=r2, info=m.info)


def _spex_model(values_of: Callable[[Tensor], Tensor], n_masks: int, holdout: float, design: str, keep: float,
                max_order: int, seed: int, labels: tuple[str, ...], direction: str,
                higher_is_better: bool) -> InteractionModel:
    """SPEX on ``n_masks`` less the held-out ones; R^2 on a held-out ``design`` drawn with ``keep``."""
    n_test = round(holdout * n_masks)
    moebius, info = spex_moebius(lambda x: values_of(torch.from_numpy(x).bool()).numpy(), len(labels),
                                 n_masks - n_test, max_order, seed)
    m = InteractionModel(labels, moebius, direction, higher_is_better, "spex", max_order,
                         info={**info, "design": "spex", "heldout_masks": n_test})
    if n_test == 0:
        return m
    test = make_design(design, len(labels), n_test, keep=keep, seed=seed + 1)
    r2 = m.r2_on(test.masks, values_of(test.masks))
    return InteractionModel(labels, moebius, direction, higher_is_better, "spex", max_order, r2=r2, info=m.info)


def _with_cost(m: InteractionModel, evaluations: int, forwards: Optional[int], seconds: float) -> InteractionModel:
    return InteractionModel(m.components, m.moebius, m.direction, m.higher_is_better, m.method, m.order, m.r2,
                            evaluations, forwards, round(seconds, 3), m.fourier, m.info)


def _counted_values(model: object, base: object, components: Sequence[Component], metric: object,
                    chunk_group: str, engine: dict) -> tuple[Callable[[Tensor], Tensor], list[int]]:
    """A value function of masks [mask, component] running :func:`evaluate_masks` (call ``i`` in chunk group
    ``chunk_group-i``), and its running counts [evaluations, forwards, calls]."""
    spent = [0, 0, 0]  # evaluations, forwards, calls

    def values_of(masks: Tensor) -> Tensor:
        r = evaluate_masks(model, base, components, masks=masks, metric=metric,
                           chunk_group=f"{chunk_group}-{spent[2]}", **engine)
        spent[0], spent[1], spent[2] = spent[0] + r.evaluations, spent[1] + r.forwards, spent[2] + 1
        return r.values

    return values_of, spent


def find_interactions(
    model: object,
    base: Union[Int[Tensor, "batch pos"], Sequence[str]],
    components: Sequence[Component],
    *,
    metric: Union[Metric, str, Callable],
    n_masks: int = 1000,
    source: Union[Int[Tensor, "batch pos"], Sequence[str], None] = None,
    intervention: Intervention = Zero(),
    direction: str = "noise",
    design: str = "bernoulli",
    keep: float = 0.8,
    max_order: int = 2,
    holdout: float = 0.2,
    seed: int = 0,
    higher_is_better: Optional[bool] = None,
    answers: Optional[Int[Tensor, "batch answer"]] = None,
    clean: Optional[str] = None,
    settings: Optional[FitSettings] = None,
    method: str = "auto",
    batch_size: Optional[int] = None,
    memory_budget: Union[int, str, None] = None,
    progress: Optional[bool] = None,
    backend: str = "mechpatch",
    chunk_size: Optional[int] = None,
    chunks: Optional[ChunkStore] = None,
    chunk_group: str = "sparse",
    executor: Optional[Executor] = None,
) -> InteractionModel:
    """Find the interactions among ``components`` from ``n_masks`` random ablations, in batched forwards.

    Args:
        model, base, metric, source, intervention, answers, clean, method, batch_size, memory_budget, progress: as
            :func:`mechpatch.patching.run_patches` (``clean`` defaults to the base run when noising and the
            source when denoising, for metrics that compare with the clean run). ``direction="noise"``: ``base``
            is the clean run and ``intervention`` ablates (Zero, Mean, Resample, or Replace with corrupted
            ``source``). ``direction="denoise"``: ``base`` is the corrupted run, ``source`` the clean one,
            ``intervention=Replace()``.
        components: N components (sites or site sets), e.g. ``heads(model.spec)``.
        n_masks: the whole budget of masks; a ``holdout`` fraction measures the fit's R^2.
        direction: ``"noise"`` or ``"denoise"`` (:data:`~mechpatch.patching.DIRECTIONS`); only the reading of
            signs depends on it.
        design: ``"bernoulli"`` or ``"antithetic"``; ``keep``: probability a component is left as in the base
            run (0.8-0.9 keeps the model near its working point; 0.5 is best for recovery when the metric
            does not saturate).
        max_order: 2 (pairs) or 3 (pairs and screened triples).
        higher_is_better: whether a higher metric means more of the clean behaviour (default: False for
            loss and KL divergence, True otherwise); sets the signs of ``score`` and the kinds.
        settings: :class:`FitSettings` for the sparse fit.
        backend: ``"mechpatch"`` (the fit above), ``"proxy"`` (gradient-boosted trees on the same masks, their
            interactions read out and refitted: :mod:`mechpatch.interactions.proxy`) or ``"spex"`` (shapiq's SPEX
            picks the masks and decodes
            the sparse terms, of any order, kept up to ``max_order``; ``pip install 'mechpatch[spex]'``).
            The held-out masks still follow ``design`` and ``keep``.
        chunk_size, chunks: run the masks in chunks and keep them in a chunk store, to resume an interrupted
            call without loss (see :func:`evaluate_masks`). The chunks go in group ``chunk_group``; with SPEX,
            which asks for values several times, in ``chunk_group-0``, ``chunk_group-1``, ... by call.
        executor: where the chunks are computed (see :func:`evaluate_masks`).

    Returns:
        :class:`InteractionModel` with held-out ``r2``, ``evaluations`` and ``forwards``.
    """
    check_search(direction, holdout, backend, design, n_masks, len(components))
    check_flags(seed, higher_is_better, optional=True)
    if direction == "denoise" and source is None and getattr(intervention, "reference", None) is None:
        raise InteractionError("direction='denoise' restores components from the clean run: pass it as source=")
    settings = _fit_settings(settings, max_order, seed)
    labels = component_labels(components)
    start = time.perf_counter()
    better = _higher_is_better(metric, higher_is_better)
    engine = dict(source=source, intervention=intervention, answers=answers, clean=_clean(metric, clean, direction),
                  method=method, batch_size=batch_size, memory_budget=memory_budget, progress=progress,
                  chunk_size=chunk_size, chunks=chunks, executor=executor)
    if backend == "spex":
        values_of, spent = _counted_values(model, base, components, metric, chunk_group, engine)
        out = _spex_model(values_of, n_masks, holdout, design, keep, max_order, seed, labels, direction, better)
        return _with_cost(out, spent[0], spent[1], time.perf_counter() - start)
    d = make_design(design, len(labels), n_masks, keep=keep, seed=seed)
    run = evaluate_masks(model, base, components, masks=d.masks, metric=metric, chunk_group=chunk_group, **engine)
    out = _fit_split(d, run.values, holdout, seed, labels, settings, direction, better, backend)
    return _with_cost(out, run.evaluations, run.forwards, time.perf_counter() - start)


def exhaustive_interactions(
    model: object,
    base: Union[Int[Tensor, "batch pos"], Sequence[str]],
    components: Sequence[Component],
    *,
    metric: Union[Metric, str, Callable],
    order: int = 2,
    source: Union[Int[Tensor, "batch pos"], Sequence[str], None] = None,
    intervention: Intervention = Zero(),
    direction: str = "noise",
    higher_is_better: Optional[bool] = None,
    answers: Optional[Int[Tensor, "batch answer"]] = None,
    clean: Optional[str] = None,
    method: str = "auto",
    batch_size: Optional[int] = None,
    memory_budget: Union[int, str, None] = None,
    progress: Optional[bool] = None,
    chunk_size: Optional[int] = None,
    chunks: Optional[ChunkStore] = None,
    chunk_group: str = "exhaustive",
    executor: Optional[Executor] = None,
) -> InteractionModel:
    """Patch every set of at most ``order`` components and return their exact Moebius effects.

    The ground truth for :func:`find_interactions`: ``1 + N + N (N - 1) / 2`` masks at ``order=2``. Arguments
    as :func:`find_interactions` (``chunk_size``, ``chunks``: resumable; ``executor``: where chunks run; see
    :func:`evaluate_masks`).
    """
    check_direction(direction)
    check_flags(0, higher_is_better, optional=True)
    labels = component_labels(components)
    start = time.perf_counter()
    d = make_design("exhaustive", len(labels), order=order)
    run = evaluate_masks(model, base, components, masks=d.masks, metric=metric, source=source,
                         intervention=intervention, answers=answers, clean=_clean(metric, clean, direction),
                         method=method, batch_size=batch_size, memory_budget=memory_budget, progress=progress,
                         chunk_size=chunk_size, chunks=chunks, chunk_group=chunk_group, executor=executor)
    better = _higher_is_better(metric, higher_is_better)
    moebius = exhaustive_moebius(d.masks, run.values)
    out = InteractionModel(labels, moebius, direction, better, "exhaustive", order,
                           info={"design": "exhaustive", "masks": d.n_masks})
    return _with_cost(out, run.evaluations, run.forwards, time.perf_counter() - start)


def exhaustive_moebius(masks: Bool[Tensor, "mask component"], values: Float[Tensor, " mask"]) -> dict[Term, float]:
    """Moebius effects of every term from the values of all of its subsets (inclusion-exclusion).

    ``masks`` must hold each term's subsets (as an exhaustive design does); each term's effect is its value
    less the effects of its proper subsets, smallest terms first.

    >>> d = make_design("exhaustive", 2)
    >>> exhaustive_moebius(d.masks, torch.tensor([1.0, 1.0, 1.0, 0.0]))  # ablating both costs 1
    {(): 1.0, (0,): 0.0, (1,): 0.0, (0, 1): -1.0}
    """
    value = {tuple(m.nonzero().flatten().tolist()): float(v) for m, v in zip(masks, values)}
    out: dict[Term, float] = {}
    from itertools import combinations

    for term in sorted(value, key=lambda t: (len(t), t)):
        missing = [s for k in range(len(term)) for s in combinations(term, k) if s not in value]
        if missing:
            raise InteractionError(f"the masks lack subset {missing[0]} of term {term}: use an exhaustive design")
        out[term] = value[term] - sum(out[s] for k in range(len(term)) for s in combinations(term, k))
    return out
