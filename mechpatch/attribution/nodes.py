"""Node attribution: AtP and AtP* for every site the exact engine patches, from a few passes.

**AtP** (attribution patching; Nanda 2023, Kramár et al. 2024) estimates the effect of a patch by its
first-order Taylor term, with the gradient taken on the run being patched:

    estimate(cell, prompt) = sum over the cell's entries of  alpha * (source - base) * d metric / d activation

where ``base`` is the patched run's activation, ``source`` what the intervention brings in (the other run,
zero, a mean, ...) and ``alpha`` the intervention's fraction, exactly as :func:`~mechpatch.patching.run_patches`
applies them. One forward of the source run, one forward+backward of the base run: every site of every kind
(embeddings, residual stream, attention and MLP outputs, heads, per-head q/k/v, patterns, neurons, any
positions, any sets of them) at once. ``estimate`` is in the engine's units: ``patched - base`` per prompt.

**AtP\\*** (Kramár et al. 2024) adds two fixes:

- *query/key fix*: a query or key patch changes attention scores linearly but the softmax after them is
  often saturated, so its gradient is near zero where the real effect is not. For cells holding query or
  key sites the new attention pattern is recomputed exactly (scores with the patched queries/keys, then the
  softmax) and only the pattern's effect is linearised: ``sum (pattern_new - pattern_base) * d metric / d pattern``.
- *GradDrop*: direct and indirect effects can cancel in the gradient. For each layer l a backward pass is run
  with the gradient through layer l's residual contributions (attention and MLP output) dropped; a cell's
  score is the mean over layers of ``|estimate with layer l dropped|`` (prompt-mean estimate), over the layers
  whose drop leaves the cell's own output path open (every layer but its own, for sites inside a block). All
  drops run as row groups of one batched forward/backward. The signed estimate stays the undropped one.

Two backends compute gradients: ``"functional"`` (mechpatch's own differentiable forward over the bridge
weights, :mod:`mechpatch.patching.functional`: GPT-2, Llama, native models) and ``"bridge"`` (the
TransformerBridge's own hooks, any architecture it wraps; no query/key fix). Both add a zero probe
tensor at each needed hook and read its gradient; they agree to float rounding (tested).
"""

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import torch
from jaxtyping import Int
from torch import Tensor

from mechpatch.attribution.base import AtpRun, AttributionError, AttributionResult, check_flag
from mechpatch.cache import DEFAULT_MEMORY_BUDGET, GRADIENT_BUDGET_SHARE, format_bytes
from mechpatch.errors import MemoryBudgetError, choices
from mechpatch.model import HookedModel, hook_shape
from mechpatch.patching import fast
from mechpatch.patching import functional as F_
from mechpatch.patching.engine import bind_clean, check_patch_args, check_subspace, unpatched_runs
from mechpatch.patching.interventions import Intervention, Replace, step
from mechpatch.patching.metrics import KLDivergence, Metric, Readout, as_metric, readout_positions, value_dtype
from mechpatch.patching.plan import PatchPlan, compile_plan
from mechpatch.patching.results import PatchResult
from mechpatch.patching.interventions import check_direction
from mechpatch.patching.sweeps import Grid, make_grid
from mechpatch.prompts import PromptPair, bind_prompts
from mechpatch.sites import Attn, Head, HeadResult, Key, Mlp, Neuron, Pattern, Query, Site, SiteSets, Value, site_sets

BACKENDS = ("auto", "functional", "bridge")
#: estimator name -> (query/key fix, GradDrop)
ESTIMATORS: dict[str, tuple[bool, bool]] = {"atp": (False, False), "atp+qk": (True, False), "atp+gd": (False, True),
                                         "atp*": (True, True)}
_IN_BLOCK = (Attn, Mlp, Head, HeadResult, Query, Key, Value, Pattern, Neuron)


def _method_name(qk_fix: bool, grad_drop: bool) -> str:
    return {v: k for k, v in ESTIMATORS.items()}[(bool(qk_fix), bool(grad_drop))]


def grad_ready(fm: F_.FunctionalModel) -> F_.FunctionalModel:
    """``fm`` with weights autograd can use: the engine may have extracted them in inference mode, and inference
    tensors cannot be saved for a backward pass. Copied once per ``fm`` (kept on it)."""
    cached = getattr(fm, "_grad_ready", None)
    if cached is not None:
        return cached

    def clone(obj: Any) -> Any:
        if isinstance(obj, Tensor):
            return obj.clone() if obj.is_inference() else obj
        if isinstance(obj, list):
            return [clone(x) for x in obj]
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            new = copy.copy(obj)
            for f in dataclasses.fields(obj):
                setattr(new, f.name, clone(getattr(obj, f.name)))
            return new
        return obj

    with torch.inference_mode(False):
        ready = clone(fm)
    object.__setattr__(fm, "_grad_ready", ready)
    object.__setattr__(ready, "_grad_ready", ready)
    return ready


def resolve_backend(model: HookedModel, backend: str, need_functional: bool = False
                    ) -> tuple[str, Optional[F_.FunctionalModel]]:
    """The backend to use (``"auto"``: functional where mechpatch's forward reproduces the model) and its weights."""
    if backend not in BACKENDS:
        raise AttributionError(f"unknown backend {backend!r}; valid: {choices(BACKENDS)}")
    reason, fm = fast.resolve(model)
    if backend == "auto":
        backend = "functional" if reason is None else "bridge"
    if backend == "functional" and reason is not None:
        raise AttributionError(f"backend='functional' is not available for this model: {reason}; use backend='bridge'")
    if need_functional and backend != "functional":
        why = f"this model does not support: {reason}" if reason else f"backend={backend!r} does not use"
        raise AttributionError(
            f"the AtP* query/key fix recomputes attention patterns from mechpatch's functional forward, which {why}; "
            "use qk_fix=False (estimator 'atp' or 'atp+gd') or backend='functional'"
        )
    return backend, (grad_ready(fm) if backend == "functional" else None)


# ----------------------------------------------------------------------------- forwards with hook functions


def _forward(backend: str, model: HookedModel, fm: Optional[F_.FunctionalModel], tokens: Tensor,
             fns: dict[str, Callable[[Tensor], Tensor]], readout: Readout) -> Tensor:
    """Readout logits of one forward where ``fns[name](t)`` replaces each named hook's value."""
    if backend == "functional":
        hk = F_.Hooks(fns)
        x = F_.embed(fm, tokens, 0, hk)
        resid = F_.run_blocks(fm, x, 0, None, 0, None, False, fns)
        return F_.unembed(fm, resid if readout.positions is None else resid[:, readout.positions], readout.columns)
    hooks = [(name, (lambda act, hook=None, fn=fn: fn(act))) for name, fn in fns.items()]
    return readout.select(model.bridge.run_with_hooks(tokens, fwd_hooks=hooks))


def _capture(backend: str, model: HookedModel, fm: Optional[F_.FunctionalModel], tokens: Tensor,
             names: Sequence[str], readout: Readout, batch_size: int) -> tuple[dict[str, Tensor], Tensor]:
    """Hook values (batch axis expanded to every prompt) and readout logits, without gradients."""
    out: dict[str, list[Tensor]] = {n: [] for n in names}
    logits = []
    for lo in range(0, tokens.shape[0], batch_size):
        chunk = tokens[lo:lo + batch_size]
        seen: dict[str, Tensor] = {}

        def keep(name: str, seen: dict[str, Tensor] = seen, rows: int = chunk.shape[0]) -> Callable[[Tensor], Tensor]:
            def fn(t: Tensor) -> Tensor:
                seen[name] = t.detach().expand(rows, *t.shape[1:]).clone()
                return t
            return fn

        with torch.no_grad():
            logits.append(_forward(backend, model, fm, chunk, {n: keep(n) for n in names}, readout))
        for n in names:
            out[n].append(seen[n])
    return {n: torch.cat(v) for n, v in out.items()}, torch.cat(logits)


# ----------------------------------------------------------------------------- estimates


def _linear(plan: PatchPlan, name: str, delta: Tensor, grad: Tensor) -> Tensor:
    """[variant, prompt]: sum of delta * grad over each variant's entries of hook ``name``."""
    mask = plan.hooks[name].mask
    contrib = (delta * grad).to(torch.float64)
    dims = [i + 1 for i, n in enumerate(mask.shape[1:]) if n == 1 and contrib.shape[i + 1] != 1]
    if dims:
        contrib = contrib.sum(dims, keepdim=True)
    contrib = contrib.expand(contrib.shape[0], *mask.shape[1:])
    return mask.flatten(1).to(torch.float64) @ contrib.flatten(1).T


def _pattern(fm: F_.FunctionalModel, layer: int, q: Tensor, k: Tensor) -> Tensor:
    """Layer ``layer``'s attention pattern [..., head, query, key] from its ``hook_q`` values q [..., pos, head, dh]
    and ``hook_k`` values k [..., pos, kv_head, dh] (q/k norms and RoPE applied here)."""
    lead = q.shape[:-3]
    flat = lambda x: x.reshape(-1, *x.shape[-3:])  # [N, pos, unit, dh]
    k = k.expand(*lead, *k.shape[-3:])
    q, k = F_.finish_qk(fm, layer, flat(q), flat(k), torch.arange(q.shape[-3], device=q.device))
    pattern = F_.attention_pattern(fm, q.transpose(1, 2), k.transpose(1, 2), layer=layer)
    return pattern.reshape(*lead, *pattern.shape[1:])


def _qk_patterns(fm: F_.FunctionalModel, plan: PatchPlan, layer: int, q_base: Tensor, k_base: Tensor,
                 delta: dict[str, Tensor], budget: int) -> list[tuple[Tensor, Tensor]]:
    """Chunks of (variant ids, pattern change [variant, prompt, head, query, key]) for the variants that patch
    queries or keys of ``layer``: the pattern recomputed exactly with the patched queries/keys."""
    qn, kn = f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k"
    mq = plan.hooks[qn].mask if qn in plan.hooks else None
    mk = plan.hooks[kn].mask if kn in plan.hooks else None
    touched = torch.zeros(plan.n_variants, dtype=torch.bool, device=q_base.device)
    for m in (mq, mk):
        if m is not None:
            touched |= m.flatten(1).any(1)
    ids = torch.nonzero(touched).flatten()
    base = _pattern(fm, layer, q_base, k_base)
    n, seq, heads = q_base.shape[0], q_base.shape[1], fm.n_heads
    per_variant = n * heads * seq * seq * q_base.element_size() * 6 + 1
    out = []
    for chunk in torch.split(ids, max(1, budget // per_variant)):
        q = q_base.expand(len(chunk), *q_base.shape)
        k = k_base.expand(len(chunk), *k_base.shape)
        if mq is not None:
            q = q + mq[chunk][:, None].to(q_base.dtype) * delta[qn][None]
        if mk is not None:
            k = k + mk[chunk][:, None].to(k_base.dtype) * delta[kn][None]
        out.append((chunk, _pattern(fm, layer, q, k) - base))
    return out


def _excluded_layers(sites: Sequence[Site]) -> set[int]:
    """Layers whose GradDrop pass blocks this cell's own output (the layers of its in-block sites)."""
    return {s.layer for s in sites if isinstance(s, _IN_BLOCK)}


def _row_bytes(model: HookedModel, seq_len: int) -> int:
    s = model.spec
    per_layer = seq_len * (12 * s.d_model + 4 * (s.d_mlp or 0) + 4 * s.n_heads * seq_len + 8 * s.n_heads * s.d_head)
    elem = torch.tensor([], dtype=model.dtype).element_size()
    return int((2 * per_layer * s.n_layers + 2 * seq_len * s.d_vocab) * elem * 2)


# ----------------------------------------------------------------------------- AtP / AtP*


def atp(
    model: HookedModel,
    base: Union[Int[Tensor, "batch pos"], Sequence[str]],
    variants: SiteSets,
    *,
    metric: Union[Metric, str, Callable],
    source: Union[Int[Tensor, "batch pos"], Sequence[str], None] = None,
    intervention: Intervention = Replace(),
    answers: Optional[Int[Tensor, "batch answer"]] = None,
    clean: Optional[str] = None,
    qk_fix: bool = False,
    grad_drop: bool = False,
    backend: str = "auto",
    batch_size: Optional[int] = None,
    memory_budget: Union[int, str, None] = None,
) -> AtpRun:
    """First-order estimates of patching each variant (a set of sites), with :func:`run_patches`'s arguments.

    Args:
        model, base, variants, metric, source, intervention, answers, clean: as
            :func:`~mechpatch.patching.run_patches` (the exact engine these estimates stand in for).
        qk_fix: recompute attention patterns exactly for query/key sites (AtP*'s first fix; functional backend).
        grad_drop: also score with GradDrop (AtP*'s second fix): one extra row group per layer.
        backend: "auto", "functional" (mechpatch's forward) or "bridge" (TransformerBridge hooks).
        batch_size: prompts per forward+backward (each with 1 + n_layers rows under GradDrop); default: as
            many as ``memory_budget`` allows.
        memory_budget: transient memory for one pass (bytes or e.g. ``"1GiB"``; default
            :data:`~mechpatch.cache.DEFAULT_MEMORY_BUDGET` x :data:`~mechpatch.cache.GRADIENT_BUDGET_SHARE`).

    Returns:
        :class:`~mechpatch.attribution.base.AtpRun`: ``estimates[variant, prompt]`` of ``patched - base``.

    Raises:
        MemoryBudgetError: a ``memory_budget`` that cannot hold one prompt's forward+backward pass (checked before
            any forward, as :func:`~mechpatch.patching.run_patches` does).
        InvalidTypeError: ``qk_fix`` or ``grad_drop`` not True or False.

    >>> import torch
    >>> from transformer_lens.config import TransformerBridgeConfig
    >>> from mechpatch import Head, load_model
    >>> from mechpatch.patching import Interpolate, run_patches
    >>> cfg = TransformerBridgeConfig(d_model=16, d_head=4, n_heads=2, n_layers=2, n_ctx=8, d_vocab=20,
    ...                               attn_only=True, seed=0, dtype=torch.float64)
    >>> model = load_model(cfg, device="cpu", dtype="float64")
    >>> base, src = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 5, 3, 6]])
    >>> answers = torch.tensor([[7, 8]])
    >>> est = atp(model, base, [Head(0, 1), Head(1, 0)], metric="logit_diff", source=src, answers=answers).estimates
    >>> eps = 1e-6  # the estimate is the derivative of the exact engine's patch along (source - base)
    >>> exact = run_patches(model, base, [Head(0, 1), Head(1, 0)], metric="logit_diff", source=src, answers=answers,
    ...                     intervention=Interpolate(eps))
    >>> torch.allclose((exact.values - exact.base_values) / eps, est, rtol=1e-3, atol=1e-5)
    True
    """
    check_flag(qk_fix, "qk_fix")
    check_flag(grad_drop, "grad_drop")
    budget, base_t, src_t, metric = _check_atp_args(model, base, source, intervention, clean, batch_size,
                                                    memory_budget, metric)
    plan = compile_plan(model, variants, base_t.shape[1])
    check_subspace(model, plan, intervention)
    n, seq = base_t.shape
    if memory_budget is not None:
        _check_atp_budget(model, plan, n, seq, budget, 1 + (model.spec.n_layers if grad_drop else 0))
    positions = readout_positions(metric, seq)
    metric = bind_prompts(model, metric, answers, base_t)
    backend, fm = resolve_backend(model, backend, need_functional=qk_fix)  # (checks the fast path: a forward)
    readout = Readout(positions, metric.columns())
    n_layers = model.spec.n_layers
    groups = 1 + (n_layers if grad_drop else 0)
    if batch_size is None:
        batch_size = max(1, budget // (_row_bytes(model, seq) * groups))
    qk_layers = sorted({hm.layer for nm, hm in plan.hooks.items() if nm.endswith((".hook_q", ".hook_k"))})
    qk_layers = qk_layers if qk_fix else []

    with model.gates([s for v in plan.variants for s in v]):
        # unpatched runs: what each hook holds on the base run and what the intervention sets it towards
        runs = unpatched_runs(model, plan, base_t, src_t, intervention, readout,
                               lambda m, tokens, names, r: _capture(backend, m, fm, tokens, names, r, batch_size))
        delta = {nm: step(intervention.alpha, runs.source[nm] - runs.base[nm]) for nm in plan.hooks}
        metric, base_values, source_values = bind_clean(metric, clean, readout, runs.base_logits,
                                                         runs.source_logits, base_t, src_t)
        estimates, passes = _grad_passes(backend, model, fm, plan, base_t, delta, metric, readout, groups, qk_layers,
                                         budget, batch_size)
    scores, dropped = _atp_scores(estimates, plan, n_layers, grad_drop)
    out = value_dtype(model.dtype)  # float64 sums, reported in the model's precision (float64 stays float64)
    return AtpRun(estimates[0].to(out), scores.to(out), base_values, source_values, plan.variants,
                  _method_name(qk_fix, grad_drop), backend, None if dropped is None else dropped.to(out), passes)


def _check_atp_budget(model: HookedModel, plan: PatchPlan, n: int, seq: int, budget: int, groups: int) -> None:
    """Refuse (:class:`MemoryBudgetError`) a memory budget that cannot hold the hooks' base, source and delta
    values of every prompt plus one prompt's forward+backward rows (``groups`` of them), as run_patches does."""
    elem = torch.tensor([], dtype=model.dtype).element_size()
    held = 3 * elem * sum(math.prod(hook_shape(hm.spec, model.spec, n, seq)) for hm in plan.hooks.values())
    row = _row_bytes(model, seq) * groups
    if budget < held + row:
        raise MemoryBudgetError(
            f"memory_budget={format_bytes(budget)} cannot hold one forward+backward pass of 1 prompt x {seq} tokens: "
            f"that needs about {format_bytes(held + row)} ({format_bytes(held)} of base and source activations at "
            f"the patched hooks, {format_bytes(row)} per prompt over {groups} row group(s)); raise memory_budget or "
            "estimate fewer prompts at once")


def _check_atp_args(
    model: HookedModel,
    base: Union[Tensor, Sequence[str]],
    source: Union[Tensor, Sequence[str], None],
    intervention: object,
    clean: Optional[str],
    batch_size: object,
    memory_budget: Union[int, str, None],
    metric: Union[Metric, str, Callable],
) -> tuple[int, Tensor, Optional[Tensor], Metric]:
    """:func:`atp`'s argument checks: :func:`run_patches`'s (raising :class:`AttributionError` for a bad option)
    and a metric with a gradient. Returns the memory budget, the base and source tokens, and the metric."""
    budget, base_t, src_t = check_patch_args(model, base, source, intervention, clean, batch_size, memory_budget,
                                              int(DEFAULT_MEMORY_BUDGET * GRADIENT_BUDGET_SHARE), AttributionError)
    metric = as_metric(metric)
    if isinstance(metric, KLDivergence) and clean != "source":
        raise AttributionError(
            "KL divergence to the run being patched is at its minimum there, so its gradient is zero and a "
            "first-order estimate is 0 for every site; use a task metric (logit_diff, ...), clean='source', "
            "or the exact engine")
    return budget, base_t, src_t, metric


def _grad_passes(backend: str, model: HookedModel, fm: Optional[F_.FunctionalModel], plan: PatchPlan,
                 base_t: Tensor, delta: dict[str, Tensor], metric: Metric, readout: Readout, groups: int,
                 qk_layers: list[int], budget: int, batch_size: int) -> tuple[Tensor, int]:
    """Estimates [group, variant, prompt] from one :func:`_grad_pass` per ``batch_size`` prompts, and the passes run."""
    n = base_t.shape[0]
    estimates = torch.zeros(groups, plan.n_variants, n, dtype=torch.float64)
    passes = 0
    for lo in range(0, n, batch_size):
        idx = torch.arange(lo, min(n, lo + batch_size), device=base_t.device)
        estimates[:, :, idx.cpu()] = _grad_pass(backend, model, fm, plan, base_t, idx, delta, metric, readout,
                                                groups, qk_layers, budget)
        passes += 1
    return estimates, passes


def _atp_scores(estimates: Tensor, plan: PatchPlan, n_layers: int, grad_drop: bool
                ) -> tuple[Tensor, Optional[Tensor]]:
    """Each variant's score from the estimates [group, variant, prompt], and under GradDrop the prompt-mean
    estimates [layer, variant] with each layer dropped (None without GradDrop).

    A score is |prompt-mean estimate|; under GradDrop, the mean over the layers whose drop leaves the
    variant's own output path open of |prompt-mean estimate with that layer dropped|.
    """
    if not grad_drop:
        return estimates[0].mean(-1).abs(), None
    dropped = estimates[1:].mean(-1)  # [layer, variant]
    keep = torch.ones(n_layers, plan.n_variants, dtype=torch.bool)
    for v, sites in enumerate(plan.variants):
        for layer in _excluded_layers(sites):
            keep[layer, v] = False
    return (dropped.abs() * keep).sum(0) / keep.sum(0).clamp(min=1), dropped


def _grad_pass(backend: str, model: HookedModel, fm: Optional[F_.FunctionalModel], plan: PatchPlan, base_t: Tensor,
               idx: Tensor, delta: dict[str, Tensor], metric: Metric, readout: Readout, groups: int,
               qk_layers: list[int], budget: int) -> Tensor:
    """Estimates [group, variant, len(idx)] from one forward+backward of ``groups`` row groups of the prompts
    ``idx``: group 0 is the plain gradient, group 1 + l has layer l's residual contributions dropped."""
    c, seq = len(idx), base_t.shape[1]
    rows = groups * c
    rows_prompt = idx.repeat(groups)
    # probes: a zero tensor added at each hook whose gradient is needed (via write_via on the bridge, where
    # writing the hook itself does not reach the residual stream)
    probe_at: dict[str, str] = {}
    for nm, hm in plan.hooks.items():
        via = hm.spec.write_via.format(layer=hm.layer) if (backend == "bridge" and hm.spec.write_via) else nm
        if not (nm in delta and qk_layers and hm.layer in qk_layers and nm.endswith((".hook_q", ".hook_k"))):
            probe_at[nm] = via
    pattern_names = [f"blocks.{layer}.attn.hook_pattern" for layer in qk_layers]
    probe_shapes: dict[str, tuple[int, ...]] = {}
    for nm, via in probe_at.items():
        hm = plan.hooks[nm]
        probe_shapes[via] = hook_shape(hm.spec, model.spec, rows, seq)
    for pn in pattern_names:
        probe_shapes[pn] = (rows, model.spec.n_heads, seq, seq)
    dtype = model.dtype
    probes = {p: torch.zeros(shape, dtype=dtype, device=base_t.device, requires_grad=True)
              for p, shape in probe_shapes.items()}
    drop: dict[str, Tensor] = {}
    if groups > 1:
        group_of_row = torch.arange(groups, device=base_t.device).repeat_interleave(c)
        for layer in range(model.spec.n_layers):
            m = (group_of_row == layer + 1)[:, None, None]
            drop[f"blocks.{layer}.hook_attn_out"] = m
            if model.spec.has_mlp:
                drop[f"blocks.{layer}.hook_mlp_out"] = m
    record: dict[str, Tensor] = {}
    wanted_records = set()
    for layer in qk_layers:
        wanted_records |= {f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k"}

    def make(name: str) -> Callable[[Tensor], Tensor]:
        d, p, keep = drop.get(name), probes.get(name), name in wanted_records

        def fn(t: Tensor) -> Tensor:
            if keep:
                record[name] = t[:c].detach()
            if d is not None:
                t = torch.where(d, t.detach(), t)
            if p is not None:
                t = t + p
            return t
        return fn

    fns = {name: make(name) for name in set(probes) | set(drop) | wanted_records}
    with torch.enable_grad():
        logits = _forward(backend, model, fm, base_t[rows_prompt], fns, readout)
        total = metric(logits, rows_prompt).sum()
        grads = torch.autograd.grad(total, list(probes.values()), allow_unused=True)
    grads = {p: (torch.zeros_like(probes[p]) if g is None else g.detach()) for p, g in zip(probes, grads)}
    out = torch.zeros(groups, plan.n_variants, c, dtype=torch.float64)
    idx_cpu = idx.to(base_t.device)
    for nm, via in probe_at.items():
        d = delta[nm][idx_cpu]
        g = grads[via].expand(rows, *grads[via].shape[1:])
        for gi in range(groups):
            out[gi] += _linear(plan, nm, d, g[gi * c:(gi + 1) * c]).cpu()
    for layer in qk_layers:
        q_pre, k_pre = record[f"blocks.{layer}.attn.hook_q"], record[f"blocks.{layer}.attn.hook_k"]
        d_sub = {k: v[idx_cpu] for k, v in delta.items() if k.startswith(f"blocks.{layer}.attn.hook_")}
        gp = grads[f"blocks.{layer}.attn.hook_pattern"]
        for ids, dpat in _qk_patterns(fm, plan, layer, q_pre, k_pre, d_sub, budget):
            for gi in range(groups):
                out[gi][ids.cpu()] += (dpat * gp[gi * c:(gi + 1) * c][None]).sum((2, 3, 4)).to(torch.float64).cpu()
    return out


def atp_star(model: HookedModel, base: Union[Int[Tensor, "batch pos"], Sequence[str]],
             variants: SiteSets, *, metric: Union[Metric, str, Callable],
             **kwargs: Any) -> AtpRun:
    """AtP*: :func:`atp` with the query/key fix and GradDrop (the same arguments otherwise)."""
    return atp(model, base, variants, metric=metric, qk_fix=True, grad_drop=True, **kwargs)


def attribute(
    model: HookedModel,
    pair: PromptPair,
    grid: Union[str, Grid, SiteSets],
    *,
    metric: Union[Metric, str, Callable],
    direction: str = "denoise",
    intervention: Intervention = Replace(),
    estimator: str = "atp",
    by_position: Optional[bool] = None,
    layers: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    backend: str = "auto",
    batch_size: Optional[int] = None,
    memory_budget: Union[int, str, None] = None,
) -> AttributionResult:
    """The attribution counterpart of :func:`~mechpatch.patching.sweep`: same grid, estimated instead of run.

    Args:
        model, pair, grid, metric, direction, intervention, by_position, layers, positions: as ``sweep``.
        estimator: "atp", "atp+qk" (query/key fix), "atp+gd" (GradDrop) or "atp*" (both) (:data:`ESTIMATORS`;
            ``method`` in mechpatch is the engine path: "auto", "fast", "hooks", "reference").
        backend, batch_size, memory_budget: see :func:`atp`.

    Returns:
        :class:`~mechpatch.attribution.base.AttributionResult` whose ``estimate`` is laid out as the sweep's
        :class:`PatchResult` (values = base metric + estimated change) and ``scores`` rank its cells.

    >>> import torch
    >>> from transformer_lens.config import TransformerBridgeConfig
    >>> from mechpatch import PromptPair, load_model
    >>> from mechpatch.attribution import agreement
    >>> from mechpatch.patching import sweep
    >>> cfg = TransformerBridgeConfig(d_model=16, d_head=4, n_heads=2, n_layers=2, n_ctx=8, d_vocab=20, seed=0)
    >>> model = load_model(cfg, device="cpu")
    >>> pair = PromptPair(torch.tensor([[1, 2, 3, 4], [1, 3, 2, 4]]), torch.tensor([[1, 5, 3, 6], [1, 7, 2, 6]]),
    ...                   torch.tensor([[7, 8], [8, 7]]))
    >>> res = attribute(model, pair, "head", metric="logit_diff", by_position=True, estimator="atp*")
    >>> res.estimate.values.shape  # layer x head x position x prompt, as sweep(model, pair, "head", by_position=True)
    torch.Size([2, 2, 4, 2])
    >>> exact = sweep(model, pair, "head", metric="logit_diff", by_position=True)
    >>> agreement(res.effects(), exact.mean() - exact.corrupted.mean()).pearson > 0.7  # measured 0.81
    True
    """
    if estimator not in ESTIMATORS:
        raise AttributionError(f"unknown estimator {estimator!r}; valid: {choices(ESTIMATORS)}")
    check_flag(by_position, "by_position", optional=True)
    check_direction(direction)
    if not isinstance(pair, PromptPair):
        raise AttributionError(f"pair must be a PromptPair (see mechpatch.make_pair), got {type(pair).__name__}")
    if isinstance(grid, str):
        str_tokens = model.to_str_tokens(pair.clean[0]) if model.tokenizer is not None else None
        grid = make_grid(model, grid, pair.seq_len, by_position, layers, positions, str_tokens)
    elif not isinstance(grid, Grid):
        grid = Grid.of(site_sets(model.spec, grid, "grid"))
    metric = as_metric(metric)
    base, source = (pair.corrupted, pair.clean) if direction == "denoise" else (pair.clean, pair.corrupted)
    qk_fix, grad_drop = ESTIMATORS[estimator]
    run = atp(model, base, grid.cells, metric=metric, source=source, intervention=intervention, answers=pair.answers,
              clean="source" if direction == "denoise" else "base", qk_fix=qk_fix, grad_drop=grad_drop,
              backend=backend, batch_size=batch_size, memory_budget=memory_budget)
    clean_v, corrupted_v = ((run.source_values, run.base_values) if direction == "denoise"
                            else (run.base_values, run.source_values))
    values = run.base_values[None, :] + run.estimates
    estimate = PatchResult(
        values=values.reshape(*grid.shape, pair.n_prompts), axes=grid.axes, labels=grid.labels, sites=grid.cells,
        clean=clean_v, corrupted=corrupted_v, noop=(run.estimates == 0).all(-1).reshape(grid.shape),
        metric=metric.name, direction=direction, intervention=type(intervention).__name__,
        meta={"method": run.method, "backend": run.backend, "estimated": True},
    )
    context = {"metric": metric, "intervention": intervention, "direction": direction, "grid": grid}
    return AttributionResult(estimate, run.scores.reshape(grid.shape), run, context)


__all__ = ["BACKENDS", "ESTIMATORS", "atp", "atp_star", "attribute", "resolve_backend"]
