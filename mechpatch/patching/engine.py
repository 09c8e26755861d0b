"""The patching engine: many site sets, one per batch row, in few forward passes.

:func:`run_patches` is the core: base tokens (the run being patched), source tokens (the run the
patched values come from), a list of *variants* (each a set of sites patched together), an
intervention and a metric -> metric values [variant, prompt] and no-op flags.

Three execution methods give the same numbers:

- ``"reference"``: one variant per forward, plain TransformerLens hooks on the bridge. Slow and
  obviously correct; the tests hold the other methods to it.
- ``"hooks"``: variants stacked into the batch dimension of one bridge forward, hooks applying
  per-row masks. Works for every architecture the bridge supports.
- ``"fast"``: mechpatch's own forward over the bridge's weights (:mod:`mechpatch.patching.fast`),
  starting each chunk at the earliest patched layer from the cached residual stream and recomputing
  only positions >= the earliest patched position (cached keys/values for the rest).

``"auto"`` picks ``"fast"`` when the architecture is supported, else ``"hooks"``.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from mechpatch._progress import progress_bar

from mechpatch.cache import DEFAULT_MEMORY_BUDGET, as_tokens, format_bytes, parse_bytes
from mechpatch.errors import InvalidArgumentError, MemoryBudgetError, ShapeMismatchError, UnsupportedSiteError, choices
from mechpatch.model import BRIDGE_IGNORES_WRITES, HookedModel, hook_shape
from mechpatch.patching.interventions import (
    Intervention, Projection, Replace, Subspace, check_intervention, needs_source,
)
from mechpatch.patching.metrics import Metric, Readout, as_metric, readout_positions
from mechpatch.patching.plan import PatchPlan, apply_mask, compile_plan
from mechpatch.patching import fast
from mechpatch.prompts import bind_prompts
from mechpatch.sites import Site, SiteSets

METHODS = ("auto", "fast", "hooks", "reference")


@dataclass(frozen=True)
class PatchRun:
    """Raw output of :func:`run_patches`."""

    values: Float[Tensor, "variant prompt"]
    noop: Bool[Tensor, " variant"]
    noop_sites: tuple[tuple[Site, ...], ...]  # per variant, the sites whose source equals their target
    base_values: Float[Tensor, " prompt"]  # the metric on the unpatched base run
    source_values: Optional[Float[Tensor, " prompt"]]  # ... and on the unpatched source run
    method: str
    forwards: int  # forward passes (chunks) run
    fallback_reason: Optional[str] = None  # method "auto" ran "hooks": why the fast path could not run this model
    oom_halvings: int = 0  # chunks halved after running out of GPU memory
    smallest_chunk: Optional[int] = None  # the fewest variants one forward ran (below batch_size after halvings)


def _run_cache(
    model: HookedModel, tokens: Tensor, names: Sequence[str], readout: Readout, batch_size: int = 64
) -> tuple[dict[str, Tensor], Tensor]:
    """Full hook tensors for ``names`` and the ``readout`` logits from one bridge run."""
    out: dict[str, list[Tensor]] = {n: [] for n in names}
    logits = []

    def grab(name: str) -> Callable:
        def hook(act: Tensor, hook: object) -> None:
            out[name].append(act.detach().clone())

        return hook

    with torch.inference_mode():
        for lo in range(0, tokens.shape[0], batch_size):
            lg = model.bridge.run_with_hooks(tokens[lo : lo + batch_size], fwd_hooks=[(n, grab(n)) for n in names])
            logits.append(readout.select(lg))
    return {n: torch.cat(v) for n, v in out.items()}, torch.cat(logits)


@dataclass
class _Runs:
    """What the unpatched runs give the engine: per-hook source and base tensors, and their logits."""

    source: dict[str, Tensor]  # hook -> [prompt, ...hook shape]: what patched entries are set towards
    base: dict[str, Tensor]  # hook -> the base run's own activations
    base_logits: Tensor  # [prompt, readout positions, readout columns]
    source_logits: Optional[Tensor]


def unpatched_runs(
    model: HookedModel,
    plan: PatchPlan,
    base: Tensor,
    source: Optional[Tensor],
    intervention: Intervention,
    readout: Readout,
    run_cache: Callable,
    base_run: Optional[tuple[dict[str, Tensor], Tensor]] = None,
) -> _Runs:
    """One forward per run (base, source, reference). ``run_cache`` must be the same forward for all
    of them, so that activations two runs share are bitwise equal (that is how no-ops are recognised)."""
    names = list(plan.hooks)
    base_acts, base_logits = base_run if base_run is not None else run_cache(model, base, names, readout)
    other, source_logits = run_cache(model, source, names, readout) if source is not None else (None, None)
    reference_tokens = getattr(intervention, "reference", None)
    ref = None
    if reference_tokens is not None:
        ref_tokens = as_tokens(model, reference_tokens)
        if ref_tokens.shape[1] != base.shape[1]:
            raise ShapeMismatchError(
                f"{type(intervention).__name__} reference prompts have {ref_tokens.shape[1]} tokens; the patched "
                f"prompts have {base.shape[1]}: positions must align"
            )
        ref = run_cache(model, ref_tokens, names, Readout([0], torch.tensor([0])))[0]
    srcs = {}
    for n in names:
        o = other[n] if other is not None else base_acts[n]
        srcs[n] = intervention.source(o, base_acts[n], None if ref is None else ref[n]).to(base_acts[n].dtype)
    return _Runs(srcs, base_acts, base_logits, source_logits)


def check_subspace(model: HookedModel, plan: PatchPlan, intervention: Intervention) -> None:
    """Refuse, before any forward, a :class:`~mechpatch.patching.interventions.Subspace` whose dimension is not the
    last dimension of every patched hook, or a site whose unit is that dimension (a neuron, a pattern's key)."""
    if not isinstance(intervention, Subspace):
        return
    for points in plan.points:
        for p in points:
            axes = p.spec.axes
            size = hook_shape(p.spec, model.spec, 1, plan.seq_len)[-1]
            if p.spec.unit_axis in (len(axes) - 1, -1) or axes[-1] in ("key", "key_pos"):
                raise InvalidArgumentError(f"Subspace moves a vector per position; site {p.site.label} patches single "
                                           f"entries of its hook's last dimension ({axes[-1]}): patch a residual, "
                                           "attention, MLP or head output site")
            if size != intervention.dim:
                raise ShapeMismatchError(f"the Subspace basis lives in {intervention.dim} dimensions, but site "
                                         f"{p.site.label} is {size}-dimensional ({axes[-1]}): give a basis of that "
                                         "site's vectors")


def _noops(plan: PatchPlan, sources: _Runs, alpha: Union[float, Projection]
           ) -> tuple[Tensor, tuple[tuple[Site, ...], ...]]:
    same: dict[tuple[str, Site], bool] = {}
    per_variant = []
    flags = []
    for points in plan.points:
        quiet = []
        for p in points:
            key = (p.name, p.site)
            if key not in same:
                idx = (slice(None), *p.index(plan.seq_len)[1:])
                same[key] = alpha == 0 or bool(torch.equal(sources.source[p.name][idx], sources.base[p.name][idx]))
            if same[key]:
                quiet.append(p.site)
        per_variant.append(tuple(quiet))
        flags.append(len(quiet) == len(points))
    return torch.tensor(flags, dtype=torch.bool), tuple(per_variant)


# ----------------------------------------------------------------------------- methods


def _bridge_hooks(spec, layer, target: Callable[[Tensor, Optional[Tensor]], Tensor], name: str) -> list:
    """Hooks that set hook ``name`` to ``target(current, offset)``, writing through ``write_via`` when
    the bridge does not propagate writes to ``name`` itself (see HookSpec.write_via)."""
    if spec.write_via is None:
        return [(name, lambda act, hook=None: target(act, None))]
    seen: dict[str, Tensor] = {}
    offset_name, via_name = spec.write_offset.format(layer=layer), spec.write_via.format(layer=layer)

    def grab(act, hook=None):
        seen["offset"] = act

    def write(act, hook=None):
        offset = seen["offset"]
        return target(offset + act, offset) - offset

    return [(offset_name, grab), (via_name, write)]


def _run_reference(model, plan, base, sources, alpha, metric, readout, progress) -> Tensor:
    n = base.shape[0]
    prompt = torch.arange(n, device=base.device)
    values = []
    for v in progress_bar(range(plan.n_variants), desc="patching (reference)", enabled=progress, unit="patch"):
        hooks, redirected = [], []
        # one boolean mask per hook, so that sites overlapping in a variant patch each entry once
        masks: dict[str, Tensor] = {}
        for p in plan.points[v]:
            src = sources.source[p.name]
            if p.name not in masks:
                masks[p.name] = torch.zeros(src.shape, dtype=torch.bool, device=src.device)
            masks[p.name][(slice(None), *p.index(plan.seq_len)[1:])] = True
        for p in {p.name: p for p in plan.points[v]}.values():
            src, m = sources.source[p.name], masks[p.name]

            def target(act, offset, m=m, src=src):
                if isinstance(alpha, Projection):  # along a subspace: the whole vector at each patched entry
                    return apply_mask(act, m, src, alpha)
                act = act.clone()
                if alpha == 1.0:
                    act[m] = src[m]
                else:
                    act[m] = act[m] + alpha * (src[m] - act[m])
                return act

            pair = _bridge_hooks(p.spec, p.site.layer_index, target, p.name)
            (redirected if p.spec.write_via else hooks).extend(pair)
        with torch.inference_mode():
            logits = model.bridge.run_with_hooks(base, fwd_hooks=hooks + redirected)
        values.append(metric(readout.select(logits), prompt))
    return torch.stack(values)


def _run_hooks_chunk(model, plan, base, sources, alpha, metric, readout, variant_ids: Tensor) -> Tensor:
    n = base.shape[0]
    rows_variant = variant_ids.repeat_interleave(n)
    rows_prompt = torch.arange(n, device=base.device).repeat(len(variant_ids))
    hooks, redirected = [], []
    for name, hm in plan.hooks.items():
        mask = hm.for_rows(rows_variant)
        src = sources.source[name][rows_prompt]

        def target(act, offset, mask=mask, src=src):
            return apply_mask(act, mask, src, alpha)

        (redirected if hm.spec.write_via else hooks).extend(_bridge_hooks(hm.spec, hm.layer, target, name))
    with torch.inference_mode():
        logits = model.bridge.run_with_hooks(base[rows_prompt], fwd_hooks=hooks + redirected)
    return metric(readout.select(logits), rows_prompt).reshape(len(variant_ids), n)


def check_batch_size(batch_size: object, none: str = "") -> None:
    """Refuse a batch size that is not a positive int (``none``: what None means, when it is allowed).

    >>> check_batch_size(0, "or None")
    Traceback (most recent call last):
    ...
    mechpatch.errors.InvalidArgumentError: batch_size must be a positive int or None; got 0
    """
    _check_batch_size(batch_size, none, InvalidArgumentError)


def _check_batch_size(batch_size: object, none: str, error: type[Exception]) -> None:
    """:func:`check_batch_size`, raising ``error``."""
    if batch_size is None and none:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise error(f"batch_size must be a positive int{' ' + none if none else ''}; got {batch_size!r}")


def check_patch_args(
    model: HookedModel,
    base: Union[Tensor, Sequence[str]],
    source: Union[Tensor, Sequence[str], None],
    intervention: object,
    clean: Optional[str],
    batch_size: object,
    memory_budget: Union[int, str, None],
    default_budget: int,
    error: type[Exception] = InvalidArgumentError,
) -> tuple[int, Tensor, Optional[Tensor]]:
    """The argument checks :func:`run_patches` and :func:`~mechpatch.attribution.atp` share.

    A bad option raises ``error``; prompts that do not align raise :class:`ShapeMismatchError`.
    Returns the memory budget in bytes (``default_budget`` when none is given), the base tokens and the
    source tokens (None without a source).
    """
    _check_batch_size(batch_size, "or None (sized from memory_budget)", error)
    if clean not in (None, "source", "base"):
        raise error(f"clean must be 'source', 'base' or None; got {clean!r}")
    check_intervention(intervention, error, subspace=True)
    budget = parse_bytes(memory_budget) or default_budget
    base_t = as_tokens(model, base)
    src_t = None
    if source is not None:
        src_t = as_tokens(model, source)
        if src_t.shape != base_t.shape:
            raise ShapeMismatchError(
                f"source tokens {tuple(src_t.shape)} and base tokens {tuple(base_t.shape)} differ in shape; "
                "patching needs the same prompts count and aligned positions"
            )
    elif needs_source(intervention):
        raise ShapeMismatchError(f"{type(intervention).__name__} needs source tokens (the other run of the pair)")
    if clean == "source" and src_t is None:
        raise ShapeMismatchError("clean='source' but no source tokens were given")
    return budget, base_t, src_t


def bind_clean(
    metric: Metric, clean: Optional[str], readout: Readout, base_logits: Tensor, source_logits: Optional[Tensor],
    base_t: Tensor, src_t: Optional[Tensor],
) -> tuple[Metric, Tensor, Optional[Tensor]]:
    """Bind ``metric`` to the clean run's logits and the readout's columns, and measure it on the unpatched runs.

    Returns the bound metric and its values [prompt] on the base run and on the source run (None without one):
    measuring them checks the metric before a long sweep.
    """
    clean_logits = {"source": source_logits, "base": base_logits, None: None}[clean]
    metric = metric.bind(clean_logits=clean_logits)
    if readout.columns is not None:
        metric = metric.restrict(readout.columns)
    prompt = torch.arange(base_t.shape[0], device=base_t.device)
    base_values = metric(base_logits, prompt).cpu()
    source_values = None
    if src_t is not None:
        source_values = metric.bind(tokens=src_t)(source_logits, prompt).cpu()
    return metric, base_values, source_values


def _check_bridge_writes(model: HookedModel, plan: PatchPlan) -> None:
    """Refuse, before any work, patches the bridge would silently drop (a hook whose writes it ignores)."""
    ignored = BRIDGE_IGNORES_WRITES.get(model.spec.architecture, ())
    for v in plan.variants:
        for s in v:
            if s.hook_kind in ignored:
                raise UnsupportedSiteError(
                    f"{s.label}: TransformerLens's {model.spec.architecture} bridge ignores writes to its "
                    f"{s.hook_kind} hook, so method='hooks'/'reference' would patch nothing; use method='fast' "
                    "(mechpatch's own forward applies it)"
                )


def _resolve_method(model: HookedModel, method: str) -> tuple[str, Any, Optional[str]]:
    """The method to run (``"auto"``: fast where the architecture is supported, else hooks), for the fast
    method the model's functional weights (None otherwise), and why "auto" fell back to hooks (or None)."""
    fm, reason = None, None
    if method in ("auto", "fast"):
        reason, fm = fast.resolve(model)
        if method == "auto":
            method = "fast" if reason is None else "hooks"
        elif reason is not None:
            raise fast.FastPathUnavailable(f"method='fast' is not available: {reason}; use method='hooks' or 'auto'")
    return method, fm, reason


def _prepare_runs(
    model: HookedModel, fm: Any, plan: PatchPlan, base_t: Tensor, src_t: Optional[Tensor], intervention: Intervention,
    readout: Readout,
) -> tuple[Optional[fast.FastState], _Runs]:
    """The fast method's state (None for the other methods) and the unpatched runs, all through one forward."""
    if fm is not None:
        fast_state = fast.prepare(fm, plan, base_t, readout)
        base_run = (fast_state.hook_cache, fast_state.logits)

        def run_cache(model, tokens, names, readout):
            return fast.hook_values(fm, tokens, names, readout)
    else:
        fast_state, base_run, run_cache = None, None, _run_cache
    return fast_state, unpatched_runs(model, plan, base_t, src_t, intervention, readout, run_cache, base_run)


def _run_chunks(
    method: str, model: HookedModel, plan: PatchPlan, base_t: Tensor, runs: _Runs, alpha: Union[int, float, Projection],
    metric: Metric, readout: Readout, fast_state: Optional[fast.FastState], order: Tensor, batch_size: int,
    progress: Optional[bool], values: Tensor,
) -> tuple[int, int, Optional[int]]:
    """Run the variants ``order`` in chunks of ``batch_size``, writing their metric values into ``values``
    [variant, prompt]; a chunk that runs out of GPU memory is halved and retried. Returns the forwards run, the
    halvings and the smallest chunk run."""
    chunks = [c for c in torch.split(order, batch_size) if len(c)]  # (split of an empty tensor gives one)
    show = progress if progress is not None else len(chunks) > 2
    done, halvings, smallest = 0, 0, None
    bar = progress_bar(total=len(order), desc=f"patching ({method})", enabled=show, unit="patch")
    queue = list(chunks)
    while queue:
        ids = queue.pop(0)
        try:
            if method == "hooks":
                out = _run_hooks_chunk(model, plan, base_t, runs, alpha, metric, readout, ids.to(base_t.device))
            else:
                out = fast.run_chunk(fast_state, plan, runs, alpha, metric, readout, ids)
        except torch.cuda.OutOfMemoryError:
            if len(ids) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(ids) // 2
            queue[:0] = [ids[:half], ids[half:]]  # halve the chunk and retry; nothing is lost
            halvings += 1
            continue
        values[ids] = out.to(values.dtype).cpu()
        done += 1
        smallest = len(ids) if smallest is None else min(smallest, len(ids))
        bar.update(len(ids))
    bar.close()
    return done, halvings, smallest


def _row_bytes(model: HookedModel, seq_len: int, n_logit_pos: int) -> int:
    """Rough transient bytes one batch row of a forward needs (activations kept alive at once)."""
    s = model.spec
    per_layer = seq_len * (8 * s.d_model + 3 * (s.d_mlp or 0) + 3 * s.n_heads * seq_len + 4 * s.n_heads * s.d_head)
    elem = torch.tensor([], dtype=model.dtype).element_size()
    return int((2 * per_layer + seq_len * s.d_vocab + n_logit_pos * s.d_vocab) * elem * 1.5)


def _held_bytes(model: HookedModel, plan: PatchPlan, n: int, seq_len: int, method: str) -> int:
    """Bytes held for the whole run besides the chunks' activations: the patched hooks' source values and, for the
    fast method, the base run's residual stream and keys/values at every layer."""
    s = model.spec
    elem = torch.tensor([], dtype=model.dtype).element_size()
    sources = sum(math.prod(hook_shape(hm.spec, s, n, seq_len)) for hm in plan.hooks.values())
    state = n * seq_len * s.n_layers * (s.d_model + 2 * s.n_kv_heads * s.d_head) if method == "fast" else 0
    return int((2 * sources + state) * elem)


def run_patches(
    model: HookedModel,
    base: Union[Int[Tensor, "batch pos"], Sequence[str]],
    variants: SiteSets,
    *,
    metric: Union[Metric, str, Callable],
    source: Union[Int[Tensor, "batch pos"], Sequence[str], None] = None,
    intervention: Intervention = Replace(),
    answers: Optional[Int[Tensor, "batch answer"]] = None,
    clean: Optional[str] = None,
    method: str = "auto",
    batch_size: Optional[int] = None,
    memory_budget: Union[int, str, None] = None,
    progress: Optional[bool] = None,
) -> PatchRun:
    """Patch each variant (a set of sites) into the base run and measure ``metric`` per prompt.

    Args:
        model: the model.
        base: the run being patched (token ids [batch, pos] or strings).
        variants: one entry per batch row: a site or a set of sites patched together.
        metric: a :class:`Metric` (bound to its data), a metric name, or ``fn(logits, prompt) -> [row]``.
        source: the run the patched values come from (needed by Replace, Interpolate, and Resample
            without reference).
        intervention: Replace(), Zero(), Mean(), Resample(), Interpolate(alpha).
        answers: answer tokens [batch, answer] for metrics that need them (if not bound already).
        clean: which run is the clean one, ``"source"`` or ``"base"``, for metrics that compare with it
            (KL divergence).
        method: "auto", "fast", "hooks" or "reference" (see the module docstring).
        batch_size: variants per forward pass (default: as many as ``memory_budget`` allows).
        memory_budget: transient memory for one forward's activations (bytes or "2GiB"; default
            :data:`~mechpatch.cache.DEFAULT_MEMORY_BUDGET`).
        progress: show a progress bar (default: when there are several chunks).

    Returns:
        :class:`PatchRun` with ``values[variant, prompt]`` and no-op flags.
    """
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}; valid: {choices(METHODS)}")
    budget, base_t, src_t = check_patch_args(model, base, source, intervention, clean, batch_size, memory_budget,
                                              DEFAULT_MEMORY_BUDGET)
    metric = bind_prompts(model, as_metric(metric), answers, base_t)
    plan = compile_plan(model, variants, base_t.shape[1])
    check_subspace(model, plan, intervention)
    n_prompts, seq_len = base_t.shape
    positions = readout_positions(metric, seq_len)
    method, fm, fallback = _resolve_method(model, method)
    if method in ("hooks", "reference"):
        _check_bridge_writes(model, plan)
    per_variant = _row_bytes(model, seq_len, len(positions or range(seq_len))) * n_prompts
    held = _held_bytes(model, plan, n_prompts, seq_len, method)
    if memory_budget is not None and budget < held + per_variant:
        raise MemoryBudgetError(
            f"memory_budget={format_bytes(budget)} cannot hold one patch of {n_prompts} prompt(s) x {seq_len} tokens: "
            f"that needs about {format_bytes(held + per_variant)} ({format_bytes(held)} of cached base-run state "
            f"and source activations, {format_bytes(per_variant)} per variant); raise memory_budget or patch fewer "
            "prompts at once"
        )
    readout = Readout(positions, metric.columns())
    with model.gates([s for v in plan.variants for s in v]):
        fast_state, runs = _prepare_runs(model, fm, plan, base_t, src_t, intervention, readout)
        metric, base_values, source_values = bind_clean(metric, clean, readout, runs.base_logits,
                                                         runs.source_logits, base_t, src_t)
        noop, noop_sites = _noops(plan, runs, intervention.alpha)
        if batch_size is None:
            batch_size = max(1, (budget - held) // per_variant)
        if method == "reference":
            show = progress if progress is not None else plan.n_variants > 16
            values = _run_reference(model, plan, base_t, runs, intervention.alpha, metric, readout, show)
            return PatchRun(values, noop, noop_sites, base_values, source_values, method, plan.n_variants)
        order = fast_state.order if fast_state is not None else torch.arange(plan.n_variants)
        # a no-op variant cannot change the run (every patched entry already equals its source), so its
        # values are the unpatched base run's: it needs no forward pass
        order = order[~noop[order]]
        # metric values keep the model's precision (float64 stays float64; see metrics.value_dtype)
        values = torch.empty(plan.n_variants, n_prompts, dtype=base_values.dtype)
        values[noop] = base_values
        done, halvings, smallest = _run_chunks(method, model, plan, base_t, runs, intervention.alpha, metric, readout,
                                               fast_state, order, batch_size, progress, values)
    return PatchRun(values, noop, noop_sites, base_values, source_values, method, done, fallback, halvings, smallest)
