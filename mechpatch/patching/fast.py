"""The fast execution path: per-row patches inside mechpatch's own forward, recomputing only what can change.

For a chunk of variants whose earliest patched layer is L0 and earliest patched position p0, rows
start from the base run's cached residual stream entering L0, at positions >= p0 only, and attend
to the base run's cached keys/values for positions < p0. Everything a patch cannot reach is reused.
Variants are ordered by (L0, p0) so that chunks group patches with similar starting points.
"""

import weakref
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from mechpatch.errors import MechpatchError
from mechpatch.model import HookedModel
from mechpatch.patching import functional as F_
from mechpatch.patching.interventions import Projection
from mechpatch.patching.metrics import Metric, Readout
from mechpatch.patching.plan import PatchPlan, apply_mask

#: Architectures whose functional forward has been verified against the bridge in the tests.
VERIFIED_ARCHITECTURES = (
    "GPT2LMHeadModel", "LlamaForCausalLM", "TransformerLensNative", "GPTNeoXForCausalLM", "GPTJForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM",
    "Olmo2ForCausalLM",
)
#: How far the functional forward's logits may be from the bridge's on the check batch, relative to the logits' scale.
#: Low precision rounds differently in each implementation (fused projections, fused attention): the bound is a few
#: units of the format's resolution, far below what a wrong weight, norm or rotation gives (order 1). Hugging Face
#: models compute some pieces in float32 even in float64 (RoPE tables, RMSNorm, GPT-J's attention scores), so
#: float64 is held to float32's resolution, not float64's.
_CHECK_TOL = {torch.float32: 1e-4, torch.float64: 1e-6, torch.bfloat16: 6e-2, torch.float16: 1e-2}


class FastPathUnavailable(MechpatchError, NotImplementedError):
    """The fast path cannot run this model exactly; use method="hooks" (what "auto" falls back to)."""


_cache: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[int, Optional[str], Optional[F_.FunctionalModel]]]" = (
    weakref.WeakKeyDictionary()
)


def _version(model: HookedModel) -> int:
    """Changes whenever a parameter is modified in place or replaced (so cached weights go stale)."""
    return hash(tuple((id(p), p._version) for p in model.bridge.parameters()))


def resolve(model: HookedModel) -> tuple[Optional[str], Optional[F_.FunctionalModel]]:
    """(why the fast path cannot run this model or None, its weights in functional form).

    Checked once per version of the parameters. Beyond the architecture list, the functional
    forward's logits are compared with the bridge's on a random batch: the fast path is only used
    where it reproduces the bridge.
    """
    version = _version(model)
    hit = _cache.get(model.bridge)
    if hit is not None and hit[0] == version:
        return hit[1], hit[2]
    reason, fm = None, None
    arch = model.spec.architecture
    if arch not in VERIFIED_ARCHITECTURES:
        reason = f"architecture {arch} is not verified for the fast path (verified: {', '.join(VERIFIED_ARCHITECTURES)})"
    elif model.dtype not in _CHECK_TOL:
        held = ", ".join(map(str, _CHECK_TOL))
        reason = f"the fast path is held to the bridge in {held} only; this model runs in {model.dtype}"
    else:
        try:
            fm = F_.extract(model.bridge)
            g = torch.Generator().manual_seed(0)
            toks = torch.randint(0, model.spec.d_vocab, (2, min(8, model.spec.n_ctx)), generator=g).to(model.device)
            with torch.inference_mode():
                ref = model.bridge(toks)
                got = F_.forward(fm, toks)
            err = float((ref - got).abs().max())
            scale = float(ref.abs().max()) or 1.0
            if err > _CHECK_TOL[model.dtype] * max(1.0, scale):
                reason = f"the functional forward differs from the bridge by {err:.3g} on this model"
        except NotImplementedError as exc:
            reason = f"the functional forward does not implement this model: {exc}"
    if reason is not None:
        fm = None
    _cache[model.bridge] = (version, reason, fm)
    return reason, fm


def weights(model: HookedModel) -> F_.FunctionalModel:
    """The model's weights in functional form (FastPathUnavailable if the fast path cannot run it)."""
    reason, fm = resolve(model)
    if reason is not None:
        raise FastPathUnavailable(f"method='fast' is not available: {reason}; use method='hooks' or 'auto'")
    return fm


def split_weights(model: HookedModel) -> F_.FunctionalModel:
    """:func:`weights` for the per-receiver forward of edge-level methods, which have no hooks path to fall back to
    (FastPathUnavailable, saying so, where the functional forward cannot run the model)."""
    reason, fm = resolve(model)
    if reason is not None:
        raise FastPathUnavailable(f"edge-level methods are not available for {model.spec.architecture}: they run "
                                  f"mechpatch's functional forward, and {reason}")
    return fm


@dataclass
class FastState:
    fm: F_.FunctionalModel
    tokens: Tensor  # base tokens [prompt, pos]
    resid_pre: list[Tensor]  # per layer, base run [prompt, pos, d_model]
    kv: list[tuple[Tensor, Tensor]]  # per layer, base run post-RoPE (K, V) [prompt, kv_head, pos, d_head]
    hook_cache: dict[str, Tensor]  # base-run values of the hooks the plan patches
    logits: Tensor  # base-run logits at the metric's positions
    order: Tensor  # variant ids sorted by (first layer, first position)
    starts: list[tuple[int, int]]  # per variant: (first layer, first position)


def _forward_caching(
    fm: F_.FunctionalModel, tokens: Tensor, names: "set[str]", readout: Readout, return_kv: bool = False
):
    """One functional forward keeping the hooks in ``names`` and the ``readout`` logits only."""
    cache: dict[str, Tensor] = {}

    def keep(name: str):
        def fn(t: Tensor) -> None:
            cache[name] = t.detach().expand(tokens.shape[0], *t.shape[1:]).clone()

        return fn

    hooks = {n: keep(n) for n in names}
    with torch.inference_mode():
        x = F_.embed(fm, tokens, 0, F_.Hooks(hooks, None))
        out = F_.run_blocks(fm, x, 0, None, 0, None, return_kv, hooks)
        resid, kv = out if return_kv else (out, None)
        logits = F_.unembed(fm, resid if readout.positions is None else resid[:, readout.positions], readout.columns)
    return cache, logits, kv


def hook_values(
    fm: F_.FunctionalModel, tokens: Tensor, names: "list[str]", readout: Readout
) -> tuple[dict[str, Tensor], Tensor]:
    """Full hook tensors for ``names`` and the ``readout`` logits from one functional forward."""
    cache, logits, _ = _forward_caching(fm, tokens, set(names), readout)
    return cache, logits


def prepare(fm: F_.FunctionalModel, plan: PatchPlan, base: Tensor, readout: Readout) -> FastState:
    """Run the base prompts once through the functional forward, caching what chunks start from."""
    names = set(plan.hooks)
    want = {f"blocks.{l}.hook_resid_pre" for l in range(fm.n_layers)} | names
    cache, logits, kv = _forward_caching(fm, base, want, readout, return_kv=True)
    starts = [(plan.first_layer([v]), plan.first_position([v])) for v in range(plan.n_variants)]
    # chunks of equal first position waste no positions; within a chunk rows join at their first layer
    order = torch.tensor(sorted(range(plan.n_variants), key=lambda v: (starts[v][1], starts[v][0])), dtype=torch.long)
    return FastState(
        fm=fm,
        tokens=base,
        resid_pre=[cache[f"blocks.{l}.hook_resid_pre"] for l in range(fm.n_layers)],
        kv=kv,
        hook_cache={n: cache[n] for n in names},
        logits=logits,
        order=order,
        starts=starts,
    )


def forward_rows(
    state: FastState,
    rows_prompt: Tensor,
    rows_start: list[int],
    pos0: int,
    hooks: dict,
    readout: Readout,
    from_embedding: bool = False,
) -> Tensor:
    """Final logits (readout) of rows that each start at their own layer, positions >= ``pos0`` only.

    Rows must be sorted by start layer: at layer l, the rows starting there join the batch with the
    base run's cached residual stream, so no row computes a layer before its first patched layer.
    Positions < ``pos0`` attend from the base run's cached keys/values. With ``from_embedding``, every
    row starts at the embeddings (embedding patches).
    """
    fm = state.fm
    seq_len = state.tokens.shape[1]
    device = state.tokens.device
    positions = torch.arange(pos0, seq_len, device=device)
    hk = F_.Hooks(hooks, None)
    if from_embedding:
        rows_start = [0] * len(rows_start)
        resid = F_.embed(fm, state.tokens[rows_prompt, pos0:], pos0, hk)
    else:
        resid = state.resid_pre[rows_start[0]][rows_prompt[:0], pos0:]
    bounds = torch.tensor(rows_start)
    for layer in range(rows_start[0], fm.n_layers):
        active = int((bounds <= layer).sum())
        if active > resid.shape[0]:
            joining = rows_prompt[resid.shape[0] : active]
            resid = torch.cat([resid, state.resid_pre[layer][joining, pos0:]])
        past = None
        if pos0 > 0:
            k, v = state.kv[layer]
            prompts = rows_prompt[:active]
            past = (k[prompts, :, :pos0], v[prompts, :, :pos0])
        resid, _ = F_.block(fm, layer, resid, positions, past, hk, False)
    metric_pos = list(range(seq_len)) if readout.positions is None else readout.positions
    return F_.unembed(fm, resid[:, [p - pos0 for p in metric_pos]], readout.columns)


def run_chunk(
    state: FastState, plan: PatchPlan, sources: "object", alpha: Union[float, Projection], metric: Metric,
    readout: Readout, ids: Tensor
) -> Tensor:
    """Metric values [len(ids), prompt] for one chunk of variants."""
    n, seq_len = state.tokens.shape
    device = state.tokens.device
    id_list = sorted(ids.tolist(), key=lambda v: state.starts[v][0])  # by start layer: rows join in order
    pos0 = min(state.starts[v][1] for v in id_list)
    metric_pos = list(range(seq_len)) if readout.positions is None else readout.positions
    pos0 = min(pos0, min(metric_pos))
    if not state.fm.causal:  # every position attends to every other: a patch reaches all of them
        pos0 = 0
    ids_dev = torch.tensor(id_list, device=device)
    rows_prompt = torch.arange(n, device=device).repeat(len(id_list))
    rows_start = [state.starts[v][0] for v in id_list for _ in range(n)]

    hooks = {}
    for name, hm in plan.hooks.items():
        pos_axis = hm.spec.pos_axis
        mask = hm.mask.index_select(0, ids_dev)
        if mask.shape[pos_axis] > 1:
            mask = mask.narrow(pos_axis, pos0, seq_len - pos0)
        mask = mask.repeat_interleave(n, dim=0)
        src = sources.source[name].narrow(pos_axis, pos0, seq_len - pos0)[rows_prompt]

        def fn(t: Tensor, mask: Tensor = mask, src: Tensor = src) -> Tensor:
            rows = t.shape[0]  # the rows active at this layer: a prefix of the chunk
            s = src[:rows]
            return apply_mask(t, mask[:rows], s.expand_as(t) if s.shape != t.shape else s, alpha)

        hooks[name] = fn

    from_embedding = any(k in hooks for k in ("hook_embed", "hook_pos_embed"))
    with torch.inference_mode():
        logits = forward_rows(state, rows_prompt, rows_start, pos0, hooks, readout, from_embedding)
    out = metric(logits, rows_prompt).reshape(len(id_list), n)
    # back to the order of ``ids``
    return out[torch.tensor([id_list.index(v) for v in ids.tolist()])]
