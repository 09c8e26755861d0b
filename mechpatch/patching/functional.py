"""mechpatch's own forward pass over a TransformerBridge's weights, for the fast patching path.

Reproduces ``bridge(tokens)`` and the bridge's hook values (to float32 rounding; held to 1e-5 by
the tests) with two savings the engine needs:

- start from a cached residual stream at layer L and run only blocks L..N-1 (TransformerLens 4's
  ``start_at_layer`` returns the right numbers but still runs every block);
- recompute only positions >= p, attending to cached (post-RoPE) keys/values of positions < p.

Weights come from the bridge's per-block accessors (``attn.W_Q`` ... ``mlp.W_out``), which on a
default bridge are the raw Hugging Face / native weights (nothing folded). Verified architectures
(``fast.VERIFIED_ARCHITECTURES``; each tested on random-weight models from its Hugging Face config class):
GPT-2 (learned positions, ``gelu_new``), TransformerLens-native (LN/RMS/pre-norms, standard or rotary
with adjacent-pair RoPE, MHA or GQA, attention-only or MLP, gated MLP), Llama (RMSNorm, rotate-half
RoPE, GQA, SwiGLU, Llama 3 RoPE scaling), GPT-NeoX/Pythia (parallel attention and MLP, partial rotary),
GPT-J (parallel block with one norm, interleaved partial rotary), Gemma 2/3 (``1 + w`` RMSNorm before and
after each sublayer, GeGLU, soft-capping, sliding windows, scaled embeddings, per-layer-type RoPE), Qwen 2.5
(q/k/v biases), Qwen 3 (per-head q/k norms), Mistral (sliding window) and OLMo 2 (post-norms only, q/k norms
over all heads). Anything else raises NotImplementedError at :func:`extract`, and the engine additionally
checks the logits against the bridge once per model before trusting this path.

Attention is computed by ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels on GPU) where
nothing reads or writes a layer's scores or pattern, and by the explicit softmax of
:func:`attention_pattern` otherwise; both apply the same mask (causal, sliding window, cached prefix).

Traps worth knowing (measured): native rotary models use adjacent-pair RoPE although
``cfg.rotary_adjacent_pairs`` is False; GPT-2's ``gelu_new`` is the tanh approximation while native
``"gelu"`` is exact; the GPT-2 and Llama bridges fill masked scores with ``finfo.min``; ``hook_q/k``
are pre-RoPE and pre-q/k-norm; per-head ``hook_result`` excludes ``b_O``; the Llama ``hook_post`` is
silu(gate) * up; ``hook_attn_out``/``hook_mlp_out`` fire after Gemma's and OLMo 2's post-norms; parallel
blocks have no ``hook_resid_mid``; the GPT-J bridge ignores writes to ``hook_pattern``/``hook_attn_scores``
and the GPT-J and Pythia bridges writes to ``hook_rot_q``/``hook_rot_k``.
"""

import inspect
from dataclasses import dataclass
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

Tensor = torch.Tensor
HookFn = Callable[[Tensor], Optional[Tensor]]

# ----------------------------------------------------------------------------- weights


@dataclass
class Norm:
    kind: Optional[str]  # "LN" | "RMS" | "LNPre" | "RMSPre" | None (identity)
    w: Optional[Tensor]
    b: Optional[Tensor]
    eps: float
    #: RMS only: multiply by the weight in float32 before casting back (Gemma's ``1 + w`` and OLMo 2) rather than
    #: casting first and multiplying in the model's dtype (Llama); equal in float32, not in bfloat16
    float_weight: bool = False


@dataclass
class LayerWeights:
    ln1: Norm
    ln2: Optional[Norm]  # None for attn_only
    # uniform (TL) form
    W_Q: Tensor  # [H, D, dh]
    b_Q: Optional[Tensor]  # [H, dh]
    W_K: Tensor  # [Hkv, D, dh]
    b_K: Optional[Tensor]
    W_V: Tensor  # [Hkv, D, dh]
    b_V: Optional[Tensor]
    W_O: Tensor  # [H, dh, D]
    b_O: Optional[Tensor]  # [D]
    W_in: Optional[Tensor]  # [D, M]   (gated: the "up"/linear branch)
    b_in: Optional[Tensor]
    W_gate: Optional[Tensor]  # [D, M]  (gated MLP only; act is applied to this branch)
    W_out: Optional[Tensor]  # [M, D]
    b_out: Optional[Tensor]
    ln1_post: Optional[Norm] = None  # norm of the attention output before it joins the residual (Gemma, OLMo 2)
    ln2_post: Optional[Norm] = None  # norm of the MLP output before it joins the residual
    q_norm: Optional[Norm] = None  # RMSNorm of the queries before RoPE (Qwen 3, Gemma 3, OLMo 2)
    k_norm: Optional[Norm] = None
    qk_norm_per_head: bool = True  # q/k norms over each head's d_head (Qwen 3, Gemma 3) or all heads at once (OLMo 2)
    window: Optional[int] = None  # sliding window: a query sees the last ``window`` positions (itself included)
    rot_cos: Optional[Tensor] = None  # [n_ctx, rotary_dim] this layer's RoPE tables (Gemma 3 differs per layer type)
    rot_sin: Optional[Tensor] = None
    # flat forms for F.linear (built by _finalize): views of the model's own weights where its layout allows, so the
    # fast path holds no second copy of a large model
    Wq: Optional[Tensor] = None  # [H*dh, D]
    Wk: Optional[Tensor] = None  # [Hkv*dh, D]
    Wv: Optional[Tensor] = None
    bq: Optional[Tensor] = None
    bk: Optional[Tensor] = None
    bv: Optional[Tensor] = None
    Wo: Optional[Tensor] = None  # [D, H*dh]
    Wgate: Optional[Tensor] = None  # [M, D] (gated MLP only)
    Wup: Optional[Tensor] = None  # [M, D]
    bup: Optional[Tensor] = None
    Wdown: Optional[Tensor] = None  # [D, M]


@dataclass
class FunctionalModel:
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    attn_only: bool
    gated_mlp: bool
    act_fn: str
    attn_scale: float  # scores = q.k * attn_scale   (= 1/sqrt(d_head) normally)
    W_E: Tensor  # [V, D]
    W_pos: Optional[Tensor]  # [n_ctx, D] (standard pos only)
    rot_style: Optional[str]  # "halves" (HF llama rotate_half) | "adjacent" (TL-native, GPT-J); tables per layer
    ln_final: Norm
    W_U: Tensor  # [D, V]
    b_U: Optional[Tensor]  # [V]
    layers: list[LayerWeights]
    W_U_rows: Optional[Tensor] = None  # [V, D] contiguous, for F.linear (built by _finalize)
    causal: bool = True  # False: bidirectional attention (tracr's compiled models); no KV-cache resumption
    parallel: bool = False  # attention and MLP both read the block's input (GPT-NeoX, GPT-J)
    embed_scale: Optional[Tensor] = None  # token embeddings are multiplied by this scalar (Gemma: sqrt(d_model))
    attn_softcap: Optional[float] = None  # scores -> cap * tanh(scores / cap) before the mask (Gemma 2)
    logit_softcap: Optional[float] = None  # logits -> cap * tanh(logits / cap) (Gemma 2)

    @property
    def rotary(self) -> bool:
        return self.rot_style is not None

    @property
    def rotary_dim(self) -> int:
        return 0 if self.layers[0].rot_cos is None else self.layers[0].rot_cos.shape[-1]


def _act(name: str) -> Callable[[Tensor], Tensor]:
    name = (name or "gelu").lower()
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    if name == "relu":
        return F.relu
    if name in ("silu", "swish"):
        return F.silu
    if name in ("solu",):
        return lambda x: x * F.softmax(x, dim=-1)
    # NotImplementedError: the fast path's check (fast.resolve) then falls back to the bridge's hooks
    raise NotImplementedError(
        f"unsupported act_fn {name!r}; the functional forward implements gelu_new, gelu_pytorch_tanh, gelu_fast, "
        "gelu, relu, silu, swish, solu"
    )


def _norm_from_module(mod: Optional[torch.nn.Module], cfg_eps: float) -> Norm:
    """Describe the wrapped (HF / native) norm module behind a NormalizationBridge."""
    mod = getattr(mod, "original_component", mod)  # a bridge wrapper the bridge put in the HF module's place
    if mod is None or isinstance(mod, torch.nn.Identity):
        return Norm(None, None, None, 0.0)
    name = type(mod).__name__
    eps = getattr(mod, "eps", None)
    if eps is None:
        eps = getattr(mod, "variance_epsilon", None)  # HF LlamaRMSNorm
    if eps is None:
        eps = cfg_eps
    w = getattr(mod, "weight", None)
    b = getattr(mod, "bias", None)
    w = None if w is None else w.detach()
    b = None if b is None else b.detach()
    if isinstance(mod, torch.nn.LayerNorm):
        return Norm("LN", w, b, float(eps))
    if name == "NativeLayerNormPre":
        return Norm("LNPre", None, None, float(eps))
    if name == "NativeRMSNormPre":
        return Norm("RMSPre", None, None, float(eps))
    if "RMS" in name.upper():
        if "Gemma" in name:  # x * (1 + w), in float32, then cast
            return Norm("RMS", None if w is None else 1.0 + w.float(), None, float(eps), float_weight=True)
        if getattr(mod, "offset", None):
            raise NotImplementedError(f"RMSNorm with weight offset ({name}) not handled")
        return Norm("RMS", w, None, float(eps), float_weight="Olmo" in name)
    raise NotImplementedError(f"unknown norm module {name}")


def _orig(bridge_component) -> Optional[torch.nn.Module]:
    if bridge_component is None:
        return None
    return getattr(bridge_component, "original_component", None)


@torch.no_grad()
def extract(bridge) -> FunctionalModel:
    """Pull weights from a TransformerBridge into a uniform FunctionalModel.

    Uses the bridge's own per-block accessors (attn.W_Q/W_K/W_V/W_O, b_*, mlp.W_in/
    W_gate/W_out) -- these are raw (unfolded) HF/native weights on a default bridge.
    Norm eps is read off the wrapped module (HF GPT-2 LN 1e-5, Llama rms_norm_eps 1e-6,
    native cfg.eps). What the architecture adds (parallel blocks, post-norms, q/k norms,
    sliding windows, soft-capping, scaled embeddings) is read off the wrapped Hugging Face
    modules and config.
    """
    cfg = bridge.cfg
    hf_cfg = getattr(getattr(bridge, "original_model", None), "config", None)
    cfg_eps = float(getattr(cfg, "eps", 1e-5))
    layers = [_layer_weights(blk, cfg, hf_cfg, cfg_eps) for blk in bridge.blocks]
    W_pos = bridge.W_pos.detach() if cfg.positional_embedding_type == "standard" else None
    rot_style = _rotary(bridge, cfg, layers)
    b_U = bridge.b_U
    embed_mod = _orig(bridge.embed)
    embed_scale = getattr(embed_mod, "embed_scale", None)  # Gemma's scaled word embedding
    fm = FunctionalModel(
        n_layers=len(layers), d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=cfg.n_key_value_heads or cfg.n_heads,
        d_head=cfg.d_head, attn_only=bool(cfg.attn_only), gated_mlp=bool(getattr(cfg, "gated_mlp", False)),
        act_fn=cfg.act_fn, attn_scale=_attn_scale(bridge, cfg), W_E=bridge.W_E.detach(), W_pos=W_pos,
        rot_style=rot_style, ln_final=_norm_from_module(_orig(bridge.ln_final), cfg_eps),
        W_U=bridge.W_U.detach(), b_U=None if b_U is None else b_U.detach(), layers=layers,
        causal=getattr(cfg, "attention_dir", "causal") != "bidirectional",
        parallel=bool(getattr(cfg, "parallel_attn_mlp", False)),
        embed_scale=None if embed_scale is None else embed_scale.detach().to(bridge.W_E.dtype).clone(),
        attn_softcap=_cap(hf_cfg, "attn_logit_softcapping") or _cap(cfg, "attn_scores_soft_cap"),
        logit_softcap=_cap(hf_cfg, "final_logit_softcapping") or _cap(cfg, "output_logits_soft_cap"),
    )
    _finalize(fm)
    return fm


def _cap(cfg, key: str) -> Optional[float]:
    value = getattr(cfg, key, None)
    return float(value) if value is not None and float(value) > 0 else None


def _layer_weights(blk, cfg, hf_cfg, cfg_eps: float) -> LayerWeights:
    """One block's norms, attention and MLP weights in the uniform (TransformerLens) form."""
    H, Hkv, dh, D = cfg.n_heads, cfg.n_key_value_heads or cfg.n_heads, cfg.d_head, cfg.d_model
    a = blk.attn
    has_mlp = "mlp" in blk._modules

    def d(t):
        return None if t is None else t.detach()  # a view of the bridge's parameter: no copy

    def norm(key: str) -> Optional[Norm]:
        return _norm_from_module(_orig(getattr(blk, key, None)), cfg_eps) if key in blk._modules else None

    ln1 = norm("ln1") or Norm(None, None, None, 0.0)
    lw = LayerWeights(
        ln1=ln1,
        # GPT-J's parallel block has one norm that both attention and MLP read
        ln2=(norm("ln2") or (ln1 if getattr(cfg, "parallel_attn_mlp", False) else Norm(None, None, None, 0.0)))
        if has_mlp else None,
        W_Q=d(a.W_Q), b_Q=d(a.b_Q), W_K=d(a.W_K), b_K=d(a.b_K),
        W_V=d(a.W_V), b_V=d(a.b_V), W_O=d(a.W_O), b_O=d(a.b_O),
        W_in=None, b_in=None, W_gate=None, W_out=None, b_out=None,
        ln1_post=norm("ln1_post"), ln2_post=norm("ln2_post"),
    )
    hf_attn = _orig(a)
    for which in ("q_norm", "k_norm"):
        mod = getattr(hf_attn, which, None)
        if mod is not None and not isinstance(mod, torch.nn.Identity):
            n = _norm_from_module(mod, cfg_eps)
            setattr(lw, which, n)
            lw.qk_norm_per_head = n.w is None or n.w.shape[-1] == dh
    if hasattr(hf_attn, "sliding_window"):  # Gemma 2/3, Qwen 2/3: per layer type
        lw.window = hf_attn.sliding_window
    elif hf_cfg is not None and getattr(hf_cfg, "model_type", "") == "mistral":  # Mistral: every layer
        lw.window = getattr(hf_cfg, "sliding_window", None)
    if has_mlp:
        m = blk.mlp
        lw.W_in, lw.b_in, lw.W_out, lw.b_out = d(m.W_in), d(m.b_in), d(m.W_out), d(m.b_out)
        lw.W_gate = d(m.W_gate) if getattr(cfg, "gated_mlp", False) else None
    if lw.W_Q.shape != (H, D, dh) or lw.W_K.shape != (Hkv, D, dh) or lw.W_O.shape != (H, dh, D):
        raise NotImplementedError(
            f"unexpected attention weight shapes W_Q {tuple(lw.W_Q.shape)}, W_K {tuple(lw.W_K.shape)}, "
            f"W_O {tuple(lw.W_O.shape)}"
        )
    return lw


def _rotary(bridge, cfg, layers: list[LayerWeights]) -> Optional[str]:
    """Fill each layer's rotary tables (cos, sin [n_ctx, rotary_dim]); return their style (None without RoPE)."""
    if cfg.positional_embedding_type != "rotary":
        return None
    n = int(cfg.n_ctx)
    rot_mod = getattr(bridge, "rotary_emb", None)
    hf_attn = _orig(bridge.blocks[0].attn)
    if rot_mod is None and hasattr(hf_attn, "embed_positions"):  # GPT-J: [sin | cos] halves, interleaved pairs
        rd = hf_attn.embed_positions.shape[-1]
        sincos = hf_attn.embed_positions[:n]
        sin, cos = sincos[:, : rd // 2].repeat_interleave(2, -1), sincos[:, rd // 2:].repeat_interleave(2, -1)
        style = "adjacent"
        tables = {None: (cos, sin)}
    elif rot_mod is None:  # TL-native: NativeRotary shared by all NativeAttention modules
        nat_rot = bridge.original_model.rotary
        tables = {None: (nat_rot.cos_cached.clone(), nat_rot.sin_cached.clone())}
        style = "adjacent"
    else:  # HF style: RotaryEmbedding(x, position_ids[, layer_type]) -> (cos, sin), already * attention_scaling
        if getattr(cfg, "rotary_adjacent_pairs", False) or getattr(cfg, "rotary_interleaved_cos_sin", False):
            raise NotImplementedError("adjacent-pair HF rotary not handled")
        hf_rot = _orig(rot_mod)
        x, ids = torch.zeros(1, n, cfg.d_model), torch.arange(n).unsqueeze(0)
        types = getattr(bridge.original_model.config, "layer_types", None)
        if "layer_type" in inspect.signature(hf_rot.forward).parameters and types:  # Gemma 3: a base per layer type
            tables = {t: tuple(c[0].clone() for c in hf_rot(x, ids, t)) for t in set(types)}
        else:
            cos, sin = hf_rot(x, ids)
            tables = {None: (cos[0].clone(), sin[0].clone())}
            types = None
        style = "halves"
    dtype = layers[0].W_Q.dtype  # computed in float32, used in the model's dtype (as Hugging Face does)
    tables = {t: (c.to(dtype), s.to(dtype)) for t, (c, s) in tables.items()}
    for i, lw in enumerate(layers):
        lw.rot_cos, lw.rot_sin = tables[types[i] if rot_mod is not None and types else None]
    return style


def _attn_scale(bridge, cfg) -> float:
    """The factor scores are multiplied by (1/sqrt(d_head) unless the model says otherwise)."""
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
        raise NotImplementedError("scale_attn_by_inverse_layer_idx")
    first_attn = _orig(bridge.blocks[0].attn)
    if hasattr(first_attn, "scaling"):  # HF llama-likes (Gemma: query_pre_attn_scalar ** -0.5)
        return float(first_attn.scaling)
    if hasattr(first_attn, "scale_attn"):  # GPT-J divides by sqrt(d_head)
        return 1.0 / float(first_attn.scale_attn)
    if getattr(cfg, "use_attn_scale", True) and getattr(cfg, "attn_scale", -1.0) > 0:
        return 1.0 / float(cfg.attn_scale)
    return cfg.d_head ** -0.5


def _flat_bias(b: Optional[Tensor], n: int, like: Tensor) -> Tensor:
    """A projection's bias as one flat vector of ``n``; zeros where the projection has none."""
    return torch.zeros(n, dtype=like.dtype, device=like.device) if b is None else b.reshape(-1)


def _finalize(fm: FunctionalModel) -> None:
    """The flat forms F.linear takes, from the uniform per-head form (views of the same storage where the layout
    allows: Hugging Face's [out, in] linear weights come back as themselves)."""
    H, Hkv, dh, D = fm.n_heads, fm.n_kv_heads, fm.d_head, fm.d_model
    fm.W_U_rows = fm.W_U.T
    for lw in fm.layers:
        lw.Wq = lw.W_Q.permute(0, 2, 1).reshape(H * dh, D)
        lw.Wk = lw.W_K.permute(0, 2, 1).reshape(Hkv * dh, D)
        lw.Wv = lw.W_V.permute(0, 2, 1).reshape(Hkv * dh, D)
        if lw.b_Q is not None or lw.b_K is not None or lw.b_V is not None:
            lw.bq, lw.bk, lw.bv = (_flat_bias(b, n * dh, lw.Wq) for b, n in ((lw.b_Q, H), (lw.b_K, Hkv), (lw.b_V, Hkv)))
        lw.Wo = lw.W_O.reshape(H * dh, D).T
        if lw.W_in is not None:
            if lw.W_gate is not None and lw.b_in is not None:
                raise NotImplementedError("gated MLP with biases")
            lw.Wgate = None if lw.W_gate is None else lw.W_gate.T
            lw.Wup, lw.bup = lw.W_in.T, lw.b_in
            lw.Wdown = lw.W_out.T


# ----------------------------------------------------------------------------- forward


def apply_norm(n: Norm, x: Tensor) -> Tensor:
    if n.kind is None:
        return x
    if n.kind == "LN":
        return F.layer_norm(x, (x.shape[-1],), n.w, n.b, n.eps)
    if n.kind == "LNPre":
        x = x - x.mean(-1, keepdim=True)
        return x / (x.pow(2).mean(-1, keepdim=True) + n.eps).sqrt()
    # RMS (HF LlamaRMSNorm / NativeRMSNorm): fp32 variance, x * rsqrt(var + eps), then * w
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + n.eps)
    if n.kind == "RMSPre" or n.w is None:
        return y.to(x.dtype)
    if n.float_weight:
        return (y * n.w.float()).to(x.dtype)
    return n.w * y.to(x.dtype)


def rope(
    x: Float[Tensor, "*batch pos unit d_head"], cos: Float[Tensor, "pos rot"], sin: Float[Tensor, "pos rot"], style: str,
) -> Float[Tensor, "*batch pos unit d_head"]:
    """Rotary position embedding of queries or keys ``x`` (the first ``rot`` dims of each head rotate).

    ``style`` "halves" is Hugging Face's ``rotate_half`` (Llama); "adjacent" rotates adjacent pairs (TransformerLens
    native models).
    """
    rd = cos.shape[-1]
    cos = cos[:, None, :]
    sin = sin[:, None, :]
    xr, xp = (x, None) if rd == x.shape[-1] else (x[..., :rd], x[..., rd:])
    if style == "halves":  # HF llama: rotate_half(x) = cat(-x2, x1) over halves
        x1, x2 = xr[..., : rd // 2], xr[..., rd // 2:]
        rot = torch.cat((-x2, x1), dim=-1)
    else:  # TL-native adjacent pairs: (x0, x1) -> (-x1, x0)
        rot = torch.stack((-xr[..., 1::2], xr[..., 0::2]), dim=-1).flatten(-2)
    out = xr * cos + rot * sin
    return out if xp is None else torch.cat([out, xp], -1)


class Hooks:
    """Tiny hook runner: optional fn per name (return None = unchanged) + optional cache."""

    __slots__ = ("fns", "cache", "active")

    def __init__(self, fns: Optional[dict[str, HookFn]] = None, cache: Optional[dict[str, Tensor]] = None):
        self.fns = fns or {}
        self.cache = cache
        self.active = bool(self.fns) or cache is not None

    def wants(self, name: str) -> bool:
        """Whether the tensor ``name`` is read or written (so it must be computed, not fused away)."""
        return self.cache is not None or name in self.fns

    def __call__(self, name: str, t: Tensor) -> Tensor:
        fn = self.fns.get(name)
        if fn is not None:
            r = fn(t)
            if r is not None:
                t = r
        if self.cache is not None:
            self.cache[name] = t
        return t


NO_HOOKS = Hooks()
KV = tuple[Tensor, Tensor]  # (K, V) each [B, Hkv, T, dh]; K is post-RoPE


def attention_pattern(
    fm: FunctionalModel, q: Float[Tensor, "batch head query d_head"], k: Float[Tensor, "batch kv_head key d_head"],
    hk: Hooks = NO_HOOKS, layer: int = 0,
) -> Float[Tensor, "batch head query key"]:
    """The attention pattern of post-RoPE queries (the last ``query`` positions) over keys (every position so far).

    The one place mechpatch computes a softmax over key positions: the fused forward, the per-receiver forward
    and AtP*'s query/key fix all come here. Scores are scaled by ``fm.attn_scale`` and, in causal models, a query
    at absolute position ``key - query + i`` sees keys up to itself (masked scores get ``finfo.min``, as the
    bridges fill them). Hooks ``hook_attn_scores`` and ``hook_pattern`` of ``layer`` run when ``hk`` is active.
    """
    B, H, S, dh = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    # GQA without materialising repeat_interleave: query head h uses kv head h // (H // Hkv)
    qg = q.reshape(B, Hkv, (H // Hkv) * S, dh)
    scores = torch.matmul(qg, k.transpose(-1, -2)).view(B, H, S, T) * fm.attn_scale
    if fm.attn_softcap is not None:
        scores = torch.tanh(scores / fm.attn_softcap) * fm.attn_softcap
    hidden = _hidden_keys(fm, layer, S, T, q.device)
    if hidden is not None:
        scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
    pre = f"blocks.{layer}.attn."
    if hk.active:
        scores = hk(pre + "hook_attn_scores", scores)
    pattern = torch.softmax(scores, dim=-1)
    if hk.active:
        pattern = hk(pre + "hook_pattern", pattern)
    return pattern


def _hidden_keys(fm: FunctionalModel, layer: int, S: int, T: int, device: torch.device) -> Optional[Tensor]:
    """[S, T] True where the last ``S`` of ``T`` positions may not attend (later keys; keys out of a sliding window),
    or None where every query sees every key."""
    window = fm.layers[layer].window
    if not fm.causal or (S == 1 and window is None):
        return None
    P = T - S
    hidden = torch.ones(S, T, dtype=torch.bool, device=device).triu_(P + 1)
    if window is not None and T > window:
        hidden |= torch.ones(S, T, dtype=torch.bool, device=device).tril_(P - window)
    return hidden


#: Use fused scaled-dot-product attention where no pattern or score is read or written (the tests turn it off to show
#: that every method's attention goes through :func:`attention_pattern` otherwise).
FUSED = True


def attend(
    fm: FunctionalModel, q: Float[Tensor, "batch head query d_head"], k: Float[Tensor, "batch kv_head key d_head"],
    v: Float[Tensor, "batch kv_head key d_head"], hk: Hooks = NO_HOOKS, layer: int = 0,
) -> Float[Tensor, "batch query head d_head"]:
    """Each head's mix of values ``z`` (TransformerLens's ``hook_z``) under :func:`attention_pattern`.

    Where nothing reads or writes the layer's scores or pattern and the model has no score soft-capping, the same
    numbers come from ``torch.nn.functional.scaled_dot_product_attention`` with the same mask (fused kernels on GPU).
    """
    B, H, S, dh = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    pre = f"blocks.{layer}.attn."
    if FUSED and fm.attn_softcap is None and not (hk.wants(pre + "hook_pattern") or hk.wants(pre + "hook_attn_scores")):
        hidden = _hidden_keys(fm, layer, S, T, q.device)
        z = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if hidden is None else ~hidden, scale=fm.attn_scale, enable_gqa=H != Hkv,
        )
        return z.transpose(1, 2)
    pattern = attention_pattern(fm, q, k, hk, layer)
    return torch.matmul(pattern.view(B, Hkv, (H // Hkv) * S, T), v).view(B, H, S, dh).transpose(1, 2)


def finish_qk(
    fm: FunctionalModel, L: int, q: Float[Tensor, "*batch pos head d_head"], k: Float[Tensor, "*batch pos kv_head d_head"],
    positions: Int[Tensor, " pos"], hk: Hooks = NO_HOOKS, normed: bool = False,
) -> tuple[Float[Tensor, "*batch pos head d_head"], Float[Tensor, "*batch pos kv_head d_head"]]:
    """Queries and keys as layer ``L``'s attention scores them: from ``hook_q``/``hook_k`` through the q/k norms (not
    with ``normed``: already applied) and RoPE at absolute ``positions`` (``hook_rot_q``/``hook_rot_k`` fire on the
    result)."""
    lw = fm.layers[L]
    if lw.q_norm is not None and not normed:
        q, k = _qk_norm(lw, lw.q_norm, q), _qk_norm(lw, lw.k_norm, k)
    if lw.rot_cos is not None:
        cos, sin = lw.rot_cos[positions], lw.rot_sin[positions]
        q = rope(q, cos, sin, fm.rot_style)
        k = rope(k, cos, sin, fm.rot_style)
        if hk.active:
            q = hk(f"blocks.{L}.attn.hook_rot_q", q)
            k = hk(f"blocks.{L}.attn.hook_rot_k", k)
    return q, k


def _qk_norm(lw: LayerWeights, n: Norm, x: Tensor) -> Tensor:
    if lw.qk_norm_per_head:
        return apply_norm(n, x)
    return apply_norm(n, x.flatten(-2)).view(x.shape)  # OLMo 2: one norm over every head


def attention(
    fm: FunctionalModel, L: int, x_ln: Tensor, positions: Tensor,
    past: Optional[KV], hk: Hooks, want_kv: bool,
) -> tuple[Tensor, Optional[KV]]:
    """One attention layer for S new query positions (absolute `positions`, contiguous),
    attending causally to `past` (positions 0..P-1) + themselves. Returns (attn_out, kv)."""
    lw = fm.layers[L]
    B, S, _ = x_ln.shape
    H, Hkv, dh = fm.n_heads, fm.n_kv_heads, fm.d_head
    pre = f"blocks.{L}.attn."
    q = F.linear(x_ln, lw.Wq, lw.bq).view(B, S, H, dh)
    k = F.linear(x_ln, lw.Wk, lw.bk).view(B, S, Hkv, dh)
    v = F.linear(x_ln, lw.Wv, lw.bv).view(B, S, Hkv, dh)
    if hk.active:
        q = hk(pre + "hook_q", q)
        k = hk(pre + "hook_k", k)
        v = hk(pre + "hook_v", v)
    q, k = finish_qk(fm, L, q, k, positions, hk)
    kh = k.transpose(1, 2)  # [B, Hkv, S, dh]
    vh = v.transpose(1, 2)
    if past is not None:
        pk, pv = past
        if pk.shape[0] != B:  # broadcast a batch-1 clean cache over a patch batch
            pk, pv = pk.expand(B, -1, -1, -1), pv.expand(B, -1, -1, -1)
        kh = torch.cat([pk, kh], 2)
        vh = torch.cat([pv, vh], 2)
    z = attend(fm, q.transpose(1, 2), kh, vh, hk, L)
    if hk.active:
        z = hk(pre + "hook_z", z)
        # TL convention: hook_result = per-head z_h @ W_O_h, WITHOUT b_O
        if (pre + "hook_result") in hk.fns or hk.cache is not None:
            res = torch.einsum("bshd,hdm->bshm", z, lw.W_O)
            res = hk(pre + "hook_result", res)
            out = res.sum(-2)
            if lw.b_O is not None:
                out = out + lw.b_O
            return out, ((kh, vh) if want_kv else None)
    out = F.linear(z.reshape(B, S, H * dh), lw.Wo, lw.b_O)
    return out, ((kh, vh) if want_kv else None)


def mlp(fm: FunctionalModel, L: int, x_ln: Tensor, hk: Hooks = NO_HOOKS) -> Tensor:
    lw = fm.layers[L]
    pre = f"blocks.{L}.mlp."
    act = _act(fm.act_fn)
    h = F.linear(x_ln, lw.Wup, lw.bup)
    if lw.Wgate is not None:
        g, u = F.linear(x_ln, lw.Wgate), h
        if hk.active:
            g = hk(pre + "hook_pre", g)  # bridge: hook_pre = gate.hook_out (pre-act)
            u = hk(pre + "hook_pre_linear", u)  # bridge: in.hook_out (up proj)
        post = act(g) * u
    else:
        if hk.active:
            h = hk(pre + "hook_pre", h)
        post = act(h)
    if hk.active:
        post = hk(pre + "hook_post", post)  # gated: act(gate) * up
    return F.linear(post, lw.Wdown, lw.b_out)


def run_blocks(
    fm: FunctionalModel,
    resid: Float[Tensor, "batch pos d_model"],
    start_layer: int = 0,
    end_layer: Optional[int] = None,
    pos_offset: int = 0,
    past_kv: Optional[list[Optional[KV]]] = None,
    return_kv: bool = False,
    hooks: Optional[dict[str, HookFn]] = None,
    cache: Optional[dict[str, Tensor]] = None,
):
    """Run blocks [start_layer, end_layer) on resid [B, S, D] = residual entering
    start_layer for absolute positions pos_offset..pos_offset+S-1.

    past_kv[L] = (K, V) [B or 1, Hkv, pos_offset, dh] for positions < pos_offset (indexed by
    absolute layer L; entries for layers < start_layer are ignored). Required iff pos_offset>0.
    Returns resid (after end_layer-1) and, if return_kv, list kv[L] of the full (past + new)
    K/V per layer (None for layers not run).
    """
    end_layer = fm.n_layers if end_layer is None else end_layer
    hk = Hooks(hooks, cache)
    B, S, _ = resid.shape
    positions = torch.arange(pos_offset, pos_offset + S, device=resid.device)
    if pos_offset > 0 and past_kv is None:
        raise ValueError("pos_offset > 0 requires past_kv")
    kv_out: list[Optional[KV]] = [None] * fm.n_layers
    for L in range(start_layer, end_layer):
        past = past_kv[L] if past_kv is not None else None
        resid, kv_out[L] = block(fm, L, resid, positions, past, hk, return_kv)
    return (resid, kv_out) if return_kv else resid


def block(
    fm: FunctionalModel, L: int, resid: Tensor, positions: Tensor, past: Optional[KV], hk: Hooks, want_kv: bool
) -> tuple[Tensor, Optional[KV]]:
    """One transformer block on resid [B, S, D] at absolute ``positions``, attending to ``past`` too."""
    lw = fm.layers[L]
    if hk.active:
        resid = hk(f"blocks.{L}.hook_resid_pre", resid)
    x_ln = apply_norm(lw.ln1, resid)
    a, kv = attention(fm, L, x_ln, positions, past, hk, want_kv)
    if lw.ln1_post is not None:
        a = apply_norm(lw.ln1_post, a)
    if hk.active:
        a = hk(f"blocks.{L}.hook_attn_out", a)
    if fm.parallel:  # attention and MLP both read the block's input (GPT-J: through the same norm)
        m = mlp(fm, L, x_ln if lw.ln2 is lw.ln1 else apply_norm(lw.ln2, resid), hk)
        if hk.active:
            m = hk(f"blocks.{L}.hook_mlp_out", m)
        resid = resid + a + m
    else:
        resid = resid + a
    if not fm.attn_only and not fm.parallel:
        if hk.active:
            resid = hk(f"blocks.{L}.hook_resid_mid", resid)
        m = mlp(fm, L, apply_norm(lw.ln2, resid), hk)
        if lw.ln2_post is not None:
            m = apply_norm(lw.ln2_post, m)
        if hk.active:
            m = hk(f"blocks.{L}.hook_mlp_out", m)
        resid = resid + m
    if hk.active:
        resid = hk(f"blocks.{L}.hook_resid_post", resid)
    return resid, kv


def embed(fm: FunctionalModel, tokens: Int[Tensor, "batch pos"], pos_offset: int = 0,
          hk: Optional[Hooks] = None) -> Float[Tensor, "batch pos d_model"]:
    x = F.embedding(tokens, fm.W_E)
    if fm.embed_scale is not None:
        x = x * fm.embed_scale
    if hk is not None and hk.active:
        x = hk("hook_embed", x)
    if fm.W_pos is not None:
        p = fm.W_pos[pos_offset: pos_offset + tokens.shape[1]]
        if hk is not None and hk.active:
            p = hk("hook_pos_embed", p.expand(tokens.shape[0], -1, -1))
        x = x + p
    return x


def unembed(fm: FunctionalModel, resid: Float[Tensor, "batch *pos d_model"],
            columns: Optional[Int[Tensor, " column"]] = None) -> Float[Tensor, "batch *pos vocab"]:
    """Final norm and unembedding; with ``columns``, only those vocabulary entries (in that order)."""
    x = apply_norm(fm.ln_final, resid)
    if columns is None:
        logits = F.linear(x, fm.W_U_rows, fm.b_U)
    else:
        logits = F.linear(x, fm.W_U_rows[columns], None if fm.b_U is None else fm.b_U[columns])
    if fm.logit_softcap is not None:
        logits = torch.tanh(logits / fm.logit_softcap) * fm.logit_softcap
    return logits


def forward(
    fm: FunctionalModel, tokens: Tensor, hooks: Optional[dict[str, HookFn]] = None,
    cache: Optional[dict[str, Tensor]] = None, return_kv: bool = False,
):
    """Full forward: tokens [B, S] -> logits [B, S, V] (optionally + per-layer K/V)."""
    hk = Hooks(hooks, cache)
    x = embed(fm, tokens, 0, hk)
    out = run_blocks(fm, x, 0, None, 0, None, return_kv, hooks, cache)
    if return_kv:
        resid, kv = out
        return unembed(fm, resid), kv
    return unembed(fm, out)


def slice_kv(kv: list[Optional[KV]], p: int) -> list[Optional[KV]]:
    """Keep cached K/V for positions < p only."""
    return [None if e is None else (e[0][:, :, :p], e[1][:, :, :p]) for e in kv]


# ----------------------------------------------------------------------------- the per-receiver forward

#: receivers of one layer, in the order :func:`run_split` reads them
RECEIVER_KINDS = ("q", "k", "v", "mlp", "logits")
#: ``read(layer, kind, resid)``: a receiver's inputs [rows, unit, pos, d_model] from the residual stream expanded to its
#: units (q: heads; k and v: key/value heads; mlp and logits: one), or None where they are the residual stream itself
ReadFn = Callable[[int, str, Tensor], Optional[Tensor]]
#: ``write(layer, kind, out)``: a sender stage's outputs (kind "heads": [rows, pos, head, d_model], each head's
#: output without b_O; "mlp": [rows, pos, d_model]) -> the outputs the model continues with
WriteFn = Callable[[int, str, Tensor], Tensor]


def unit_qkv(
    fm: FunctionalModel, L: int, xq: Float[Tensor, "batch q_unit pos d_model"],
    xk: Float[Tensor, "batch k_unit pos d_model"], xv: Float[Tensor, "batch v_unit pos d_model"],
) -> tuple[Float[Tensor, "batch head pos d_head"], Float[Tensor, "batch kv_head pos d_head"],
           Float[Tensor, "batch kv_head pos d_head"]]:
    """Post-RoPE queries, keys and values of layer ``L`` when each head reads its own query input and each key/value
    head its own key and value inputs (pre-norm residual streams; a unit axis of 1 is shared by every unit).

    Where the q/k norms span every head (OLMo 2), a head's query is its slice of all heads' queries computed from its
    own input and normalised together, so that it depends on its own input only (likewise keys)."""
    lw = fm.layers[L]
    R, _, S, D = xq.shape
    H, G = fm.n_heads, fm.n_kv_heads
    nq = apply_norm(lw.ln1, xq)
    nk = nq if xk is xq else apply_norm(lw.ln1, xk)
    nv = nk if xv is xk else apply_norm(lw.ln1, xv)
    v = torch.einsum("rgpd,gde->rpge", nv.expand(R, G, S, D), lw.W_V)
    v = v if lw.b_V is None else v + lw.b_V
    positions = torch.arange(S, device=xq.device)
    if lw.q_norm is not None and not lw.qk_norm_per_head and (nq.shape[1] > 1 or nk.shape[1] > 1):
        q, k = _own_slice(lw.q_norm, nq, lw.W_Q, lw.b_Q), _own_slice(lw.k_norm, nk, lw.W_K, lw.b_K)
        q, k = finish_qk(fm, L, q, k, positions, normed=True)
    else:
        q = torch.einsum("rhpd,hde->rphe", nq.expand(R, H, S, D), lw.W_Q)
        k = torch.einsum("rgpd,gde->rpge", nk.expand(R, G, S, D), lw.W_K)
        if lw.b_Q is not None:
            q, k = q + lw.b_Q, k + lw.b_K
        q, k = finish_qk(fm, L, q, k, positions)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def _own_slice(n: Norm, x: Float[Tensor, "batch #unit pos d_model"], W: Float[Tensor, "unit d_model d_head"],  # noqa: F821 ("#unit")
               b: Optional[Tensor]) -> Float[Tensor, "batch pos unit d_head"]:
    """Each unit's slice of a projection over all units from that unit's own input, normalised over all units."""
    U = W.shape[0]
    full = torch.einsum("rupd,hde->rpuhe", x.expand(x.shape[0], U, *x.shape[2:]), W)  # [R, pos, unit, all units, dh]
    full = full if b is None else full + b
    normed = apply_norm(n, full.flatten(-2)).view(full.shape)
    own = torch.arange(U, device=x.device)
    return normed[:, :, own, own]


def post_attention(fm: FunctionalModel, L: int, heads: Float[Tensor, "*batch pos d_model"]
                   ) -> Float[Tensor, "*batch pos d_model"]:
    """What layer ``L``'s attention adds to the residual stream, given the sum of its heads' outputs (without b_O):
    the sum plus b_O, through the post-attention norm where the model has one (Gemma 2/3, OLMo 2)."""
    lw = fm.layers[L]
    out = heads if lw.b_O is None else heads + lw.b_O
    return out if lw.ln1_post is None else apply_norm(lw.ln1_post, out)


def run_split(
    fm: FunctionalModel, resid: Float[Tensor, "batch pos d_model"], *, start: int = 0,
    read: Optional[ReadFn] = None, write: Optional[WriteFn] = None, trace: Optional[list[Tensor]] = None,
) -> Float[Tensor, "batch pos d_model"]:
    """Run layers ``[start, n_layers)`` from the residual stream entering ``start``, every receiver reading its own input.

    This is the forward of edge patching and edge attribution: each head's query, each key/value head's key and value,
    each MLP and the logits read the residual stream through ``read`` (which may subtract ablated senders' outputs or
    add a gradient probe), and each stage's outputs pass through ``write`` (which may record or replace them).
    The attention itself is :func:`attend`'s. Heads' outputs are written before a post-attention norm (their sum goes
    through :func:`post_attention`), an MLP's after its post-norm. Returns the input of the logits (before the final
    norm); ``trace`` collects each layer's entering residual stream and, last, that input.
    """
    R, S, D = resid.shape
    H, G = fm.n_heads, fm.n_kv_heads

    def inputs(layer: int, kind: str, units: int, x: Tensor) -> Tensor:
        got = None if read is None else read(layer, kind, x.expand(R, units, S, D))
        return x if got is None else got

    for layer in range(start, fm.n_layers):
        lw = fm.layers[layer]
        if trace is not None:
            trace.append(resid)
        x = resid[:, None]
        q, k, v = unit_qkv(fm, layer, inputs(layer, "q", H, x), inputs(layer, "k", G, x), inputs(layer, "v", G, x))
        result = torch.einsum("rphe,hem->rphm", attend(fm, q, k, v, layer=layer), lw.W_O)  # per-head outputs, without b_O
        if write is not None:
            result = write(layer, "heads", result)
        mlp_in = resid  # a parallel block's MLP reads the heads' input
        resid = resid + post_attention(fm, layer, result.sum(2))
        if not fm.attn_only:
            mlp_in = mlp_in if fm.parallel else resid
            out = mlp(fm, layer, apply_norm(lw.ln2, inputs(layer, "mlp", 1, mlp_in[:, None])[:, 0]))
            if lw.ln2_post is not None:  # an MLP sender's output is taken after its post-norm (as hook_mlp_out is)
                out = apply_norm(lw.ln2_post, out)
            if write is not None:
                out = write(layer, "mlp", out)
            resid = resid + out
    final = inputs(fm.n_layers, "logits", 1, resid[:, None])[:, 0]
    if trace is not None:
        trace.append(final)
    return final
