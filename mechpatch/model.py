"""Loading a patchable model (TransformerBridge), device/dtype choice, and the site -> hook table.

One entry point, :func:`load_model`, accepts a Hugging Face name or local directory, a
``TransformerBridgeConfig`` (native model), an in-memory Hugging Face module, or an existing
``TransformerBridge``, and returns a :class:`HookedModel` in eval mode on the chosen device/dtype.

Which TransformerLens hook carries each site kind is data: :data:`HOOK_TABLE` (the common table)
plus per-architecture overrides in :data:`ARCHITECTURE_TABLES`. TransformerLens 4 fires many hooks
under two spellings and some only behind a flag; the table names one canonical hook per site and the
flag it needs, and :meth:`HookedModel.gates` turns flags on only while needed.
"""

import contextlib
import io
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from mechpatch.errors import (
    DeviceError,
    EmptyInputError,
    GatedHookError,
    ModelLoadError,
    TokenizerError,
    UnknownSiteKindError,
    choices,
)
from mechpatch.sites import ModelSpec, Site, parse_site, resolve_positions

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")


@dataclass(frozen=True)
class HookSpec:
    """Where a site kind lives: a hook-name template, the flag that gates it, and its tensor layout.

    ``axes`` names the hook tensor's axes (docs/architecture.md, "Tensor axis names"); ``unit_axis`` is the axis a
    site's head/group/neuron index selects and ``pos_axis`` the axis its positions select.
    """

    template: str
    axes: tuple[str, ...]
    unit_axis: Optional[int] = None
    pos_axis: int = 1
    gate: Optional[str] = None
    #: When writing to ``template`` does not reach the rest of the forward pass, the hook whose
    #: write does, and the hook holding what must be subtracted: set ``template`` to Y by setting
    #: ``write_via`` to Y - value(``write_offset``) (residual = offset + write_via's value).
    write_via: Optional[str] = None
    write_offset: Optional[str] = None

    def name(self, layer: Optional[int]) -> str:
        return self.template.format(layer=layer)


@dataclass(frozen=True)
class HookPoint:
    """A resolved site: the canonical hook name and how to index the site inside that hook's tensor."""

    site: Site
    name: str
    spec: HookSpec

    def index(self, seq_len: int) -> tuple[Any, ...]:
        """An index tuple selecting this site (unit and positions) from the full hook tensor."""
        idx: list[Any] = [slice(None)] * len(self.spec.axes)
        if self.spec.unit_axis is not None:
            idx[self.spec.unit_axis] = self.site.unit
        pos = self.site.pos
        if pos is not None:
            resolved = resolve_positions(pos, seq_len, what=f"{self.site.label}: position")
            idx[self.spec.pos_axis] = resolved[0] if len(resolved) == 1 else torch.tensor(resolved)
        return tuple(idx)


_R = ("batch", "pos", "d_model")
#: The common site -> hook table; TransformerLens 4 normalises hook names across architectures.
HOOK_TABLE: Mapping[str, HookSpec] = {
    "embed": HookSpec("hook_embed", _R),
    "pos_embed": HookSpec("hook_pos_embed", _R),
    "resid_pre": HookSpec("blocks.{layer}.hook_resid_pre", _R),
    # TransformerLens 4.3 fires hook_resid_mid as LN2's input: a hook that *returns* a new tensor
    # changes the MLP's input but not the residual stream that flows on (an in-place edit changes
    # both; measured). mechpatch patches the residual stream whatever the hook style, so writes go
    # through attn_out: resid_mid = resid_pre + attn_out.
    "resid_mid": HookSpec(
        "blocks.{layer}.hook_resid_mid", _R, write_via="blocks.{layer}.hook_attn_out",
        write_offset="blocks.{layer}.hook_resid_pre",
    ),
    "resid_post": HookSpec("blocks.{layer}.hook_resid_post", _R),
    "attn_out": HookSpec("blocks.{layer}.hook_attn_out", _R),
    "mlp_out": HookSpec("blocks.{layer}.hook_mlp_out", _R),
    "head": HookSpec("blocks.{layer}.attn.hook_z", ("batch", "pos", "head", "d_head"), unit_axis=2),
    "head_result": HookSpec(
        "blocks.{layer}.attn.hook_result", ("batch", "pos", "head", "d_model"), unit_axis=2, gate="use_attn_result"
    ),
    "query": HookSpec("blocks.{layer}.attn.hook_q", ("batch", "pos", "head", "d_head"), unit_axis=2),
    "key": HookSpec("blocks.{layer}.attn.hook_k", ("batch", "pos", "kv_head", "d_head"), unit_axis=2),
    "value": HookSpec("blocks.{layer}.attn.hook_v", ("batch", "pos", "kv_head", "d_head"), unit_axis=2),
    "pattern": HookSpec(
        "blocks.{layer}.attn.hook_pattern", ("batch", "head", "query", "key"), unit_axis=1, pos_axis=2
    ),
    "neuron": HookSpec("blocks.{layer}.mlp.hook_post", ("batch", "pos", "d_mlp"), unit_axis=2),
}

#: Per-architecture differences from :data:`HOOK_TABLE` (architecture name -> kind -> HookSpec).
#: Empty entries are architectures checked against the common table in the tests.
ARCHITECTURE_TABLES: Mapping[str, Mapping[str, HookSpec]] = {
    "GPT2LMHeadModel": {},
    "LlamaForCausalLM": {},
    "TransformerLensNative": {},
}

#: Hook kinds whose writes a TransformerLens 4.3 bridge silently drops on an architecture (measured: halving the
#: tensor in a hook leaves the logits unchanged). mechpatch's own forward applies them; the hook-based methods refuse.
BRIDGE_IGNORES_WRITES: Mapping[str, tuple[str, ...]] = {"GPTJForCausalLM": ("pattern",)}

_SIZES = {
    "d_model": lambda s: s.d_model,
    "d_head": lambda s: s.d_head,
    "head": lambda s: s.n_heads,
    "kv_head": lambda s: s.n_kv_heads,
    "d_mlp": lambda s: s.d_mlp,
}


def hook_shape(spec: HookSpec, model_spec: ModelSpec, batch: int, seq_len: int) -> tuple[int, ...]:
    """The shape a hook's tensor has for ``batch`` prompts of ``seq_len`` tokens (no forward needed)."""
    out = []
    for axis in spec.axes:
        if axis == "batch":
            out.append(batch)
        elif axis in ("pos", "query", "key"):
            out.append(seq_len)
        else:
            out.append(_SIZES[axis](model_spec))
    return tuple(out)


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU; anything else is checked to exist here.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"unknown device {device!r}; valid: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'") from err
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
        ["mps"] if torch.backends.mps.is_available() else []
    )
    if dev.type not in available:
        raise DeviceError(f"device {str(dev)!r} is not available on this machine; available: {choices(available)}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {str(dev)!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def resolve_dtype(dtype: Union[str, torch.dtype, None], device: torch.device) -> torch.dtype:
    """A dtype name or torch dtype, checked to work for matrix products on ``device``.

    >>> resolve_dtype("bf16", torch.device("cpu"))
    torch.bfloat16
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise DeviceError(f"unknown dtype {dtype!r}; valid: {choices(DTYPES)}")
        dtype = DTYPES[dtype]
    if dtype not in set(DTYPES.values()):
        raise DeviceError(f"dtype {dtype} is not a floating dtype mechpatch runs models in; valid: {choices(DTYPES)}")
    try:
        x = torch.ones(2, 2, dtype=dtype, device=device)
        (x @ x).sum().item()
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"this machine cannot run {dtype} matrix products on {device}: {err}") from err
    return dtype


def _spec_from_cfg(cfg: Any) -> ModelSpec:
    attn_only = bool(getattr(cfg, "attn_only", False))
    return ModelSpec(
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx),
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
        d_mlp=None if attn_only else int(cfg.d_mlp),
        attn_only=attn_only,
        positional=str(getattr(cfg, "positional_embedding_type", "standard")),
        normalization=str(getattr(cfg, "normalization_type", "LN")),
        architecture=str(getattr(cfg, "architecture", None) or "unknown"),
        parallel=bool(getattr(cfg, "parallel_attn_mlp", False)),
    )


class HookedModel:
    """A TransformerBridge with its shape (:class:`ModelSpec`), device, dtype and hook table.

    Use :func:`load_model` to make one. The bridge stays reachable as ``.bridge`` for anything
    mechpatch does not wrap.
    """

    def __init__(self, bridge: nn.Module, name: str = "model") -> None:
        self.bridge = bridge
        self.name = name
        self.spec = _spec_from_cfg(bridge.cfg)
        overrides = ARCHITECTURE_TABLES.get(self.spec.architecture, {})
        self.hook_table: Mapping[str, HookSpec] = {**HOOK_TABLE, **overrides}
        bridge.eval()

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"HookedModel({self.name!r}, {s.architecture}, layers={s.n_layers}, heads={s.n_heads}"
            f"{f'/kv={s.n_kv_heads}' if s.is_gqa else ''}, d_model={s.d_model}, "
            f"{'attn-only' if s.attn_only else f'd_mlp={s.d_mlp}'}, {self.device}, {self.dtype})"
        )

    @property
    def tokenizer(self) -> Any:
        return getattr(self.bridge, "tokenizer", None)

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.bridge.parameters()).dtype

    # ----------------------------------------------------------------- sites and hooks
    def hook_spec(self, kind: str) -> HookSpec:
        if kind not in self.hook_table:
            raise UnknownSiteKindError(f"unknown site kind {kind!r}; valid: {choices(self.hook_table)}")
        return self.hook_table[kind]

    def hook_point(self, site: Union[Site, str], seq_len: Optional[int] = None) -> HookPoint:
        """Validate ``site`` (a Site or its label, e.g. ``"L9H6"``) against this model and resolve its hook."""
        if isinstance(site, str):
            site = parse_site(site)
        site = site.validate(self.spec, seq_len)
        spec = self.hook_spec(site.hook_kind)
        return HookPoint(site, spec.name(site.layer_index), spec)

    @contextlib.contextmanager
    def gates(self, sites: Iterable[Site] = (), flags: Iterable[str] = ()) -> Iterator[None]:
        """Turn on the TransformerLens flags that ``sites`` (or ``flags``) need; restore them on exit.

        Raises:
            GatedHookError: this architecture's bridge cannot enable a needed flag.
        """
        needed = set(flags) | {self.hook_spec(s.hook_kind).gate for s in sites} - {None}
        cfg = self.bridge.cfg
        saved = {flag: bool(getattr(cfg, flag, False)) for flag in needed}
        try:
            for flag in sorted(needed):
                if not saved[flag]:
                    setter = getattr(self.bridge, f"set_{flag}", None)
                    if setter is None:
                        raise GatedHookError(f"TransformerLens has no setter for flag {flag!r} on this bridge")
                    try:
                        setter(True)
                    except (NotImplementedError, ValueError, AttributeError) as err:
                        raise GatedHookError(
                            f"cannot enable {flag!r} on this {self.spec.architecture} model, so the sites that "
                            f"need it ({', '.join(sorted({s.kind for s in sites if self.hook_spec(s.hook_kind).gate == flag}))}) "
                            f"are not available here: {err}"
                        ) from err
            yield
        finally:
            for flag, value in saved.items():
                if bool(getattr(cfg, flag, False)) != value:
                    getattr(self.bridge, f"set_{flag}")(value)

    # ----------------------------------------------------------------- tokens
    def to_tokens(
        self, prompts: Union[str, Sequence[str]], prepend_bos: Optional[bool] = None
    ) -> Int[Tensor, "batch pos"]:
        """Tokenize prompts (all must have the same token count; mechpatch does not pad).

        Raises:
            TokenizerError: no tokenizer, or prompts of different token lengths.
            EmptyInputError: no prompts.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise EmptyInputError("the prompt list is empty")
        if self.tokenizer is None:
            raise TokenizerError(
                "this model has no tokenizer, so text prompts cannot be used; pass token ids "
                "(an int tensor [batch, pos]) or load the model with tokenizer=..."
            )
        rows = [self.bridge.to_tokens(p, prepend_bos=prepend_bos, padding_side="right")[0] for p in prompts]
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            detail = "; ".join(f"#{i}: {len(r)} tokens" for i, r in enumerate(rows[:8]))
            raise TokenizerError(
                f"prompts tokenize to different lengths ({detail}{'; ...' if len(rows) > 8 else ''}); "
                "mechpatch patches aligned positions and does not pad: group prompts by length or "
                "rewrite them to equal token counts"
            )
        return torch.stack(rows).to(self.device)

    def to_str_tokens(self, tokens: Int[Tensor, " pos"]) -> list[str]:
        if self.tokenizer is None:
            return [str(int(t)) for t in tokens]
        return [self.tokenizer.decode([int(t)]) for t in tokens]

    def token_id(self, text: str) -> int:
        """The id of ``text`` when it is exactly one token (no BOS), else a TokenizerError."""
        if self.tokenizer is None:
            raise TokenizerError(f"cannot tokenize answer {text!r}: this model has no tokenizer; pass token ids")
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            raise TokenizerError(f"answer {text!r} is {len(ids)} tokens {pieces}, not one; answers must be single tokens")
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if unk is not None and ids[0] == unk and text.strip() != str(self.tokenizer.unk_token):
            raise TokenizerError(f"{text!r} is not in the tokenizer's vocabulary (it encodes as the unknown token "
                                 f"{self.tokenizer.unk_token!r})")
        return int(ids[0])

    def __call__(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        with torch.inference_mode():
            return self.bridge(tokens)


# --------------------------------------------------------------------- loading


def _load_tokenizer(source: Any) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    if len(tok) == 0:
        raise TokenizerError(f"tokenizer loaded from {source!r} has an empty vocabulary")
    return tok


def _bridge_from_module(source: nn.Module, architecture: Optional[str], tokenizer: Any,
                        name: Optional[str]) -> tuple[Any, str]:
    """A TransformerBridge wrapping an in-memory Hugging Face module, and its display name."""
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    hf_config = getattr(source, "config", None)
    if hf_config is None:
        raise ModelLoadError(
            f"in-memory module {type(source).__name__} has no .config; pass a Hugging Face "
            "PreTrainedModel, a TransformerBridgeConfig, or a TransformerBridge"
        )
    arch = architecture or (getattr(hf_config, "architectures", None) or [type(source).__name__])[0]
    try:
        bridge = build_bridge_from_module(source, arch, hf_config=hf_config, tokenizer=tokenizer)
    except Exception as err:
        raise ModelLoadError(f"TransformerLens cannot wrap a {arch} module: {err}") from err
    return bridge, name or arch


def _bridge_from_path(path: str, dev: torch.device, dt: torch.dtype, tokenizer: Any,
                      name: Optional[str]) -> tuple[Any, str]:
    """A TransformerBridge loaded from a Hugging Face name or a local directory, and its display name."""
    from transformer_lens.model_bridge import TransformerBridge

    if os.path.isdir(path):
        if tokenizer is None:
            present = [f for f in TOKENIZER_FILES if os.path.exists(os.path.join(path, f))]
            if not present:
                raise TokenizerError(
                    f"directory {path!r} has no tokenizer files (looked for {choices(TOKENIZER_FILES)}); "
                    "TransformerLens would silently use an empty vocabulary. Save the tokenizer there "
                    "(tokenizer.save_pretrained) or pass tokenizer=<tokenizer or its directory>"
                )
            tokenizer = _load_tokenizer(path)
    elif os.path.sep in path and not os.path.exists(path) and path.startswith((".", "/")):
        raise ModelLoadError(f"no such model directory: {path!r}")
    from transformer_lens.model_bridge.sources import tl_legacy

    # NeelNanda/*, ArthurConmy/* (attn-only-4l, ...) are TransformerLens-format repos, not HF models
    legacy = not os.path.isdir(path) and path.startswith(tl_legacy.TL_LEGACY_PREFIXES)
    boot = tl_legacy.boot if legacy else TransformerBridge.boot_transformers
    try:
        bridge = boot(path, device=str(dev), dtype=dt, tokenizer=tokenizer)
    except (OSError, ValueError, KeyError, NotImplementedError) as err:
        raise ModelLoadError(
            f"could not load {path!r} through TransformerLens ({type(err).__name__}: {err}). A hub name "
            "needs network access or a populated Hugging Face cache; a directory needs config.json and weights"
        ) from err
    return bridge, name or os.path.basename(path.rstrip("/")) or path


def load_model(
    source: Any,
    *,
    device: Union[str, torch.device, None] = "auto",
    dtype: Union[str, torch.dtype, None] = "float32",
    tokenizer: Any = None,
    architecture: Optional[str] = None,
    name: Optional[str] = None,
) -> HookedModel:
    """Load a patchable model from any source TransformerLens 4 can wrap.

    Args:
        source: a Hugging Face model name (TransformerLens-format repos such as
            ``NeelNanda/Attn_Only_4L512W_C4_Code`` included), a local directory with a saved model, a
            ``TransformerBridgeConfig`` (a native model with fresh weights), an in-memory
            Hugging Face ``PreTrainedModel``, or an existing ``TransformerBridge``.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        dtype: ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"float64"`` or a torch dtype.
        tokenizer: a tokenizer object or a path to one. Local directories without tokenizer files
            need it; in-memory modules and native configs are tokenizer-less without it.
        architecture: HF architecture name for an in-memory module when its config does not say.
        name: a display name (defaults to the source's name).

    Returns:
        A :class:`HookedModel` in eval mode on ``device`` in ``dtype``.

    >>> from transformer_lens.config import TransformerBridgeConfig
    >>> cfg = TransformerBridgeConfig(d_model=16, d_head=4, n_heads=4, n_layers=1, n_ctx=8, d_vocab=10,
    ...                               attn_only=True, seed=0)
    >>> load_model(cfg, device="cpu").spec.n_heads
    4
    """
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = _load_tokenizer(tokenizer)

    if isinstance(source, TransformerBridge):
        bridge, label = source, name or "bridge"
    elif isinstance(source, TransformerBridgeConfig):
        bridge = TransformerBridge.boot_native(source)
        if tokenizer is not None:
            bridge.tokenizer = tokenizer
        label = name or "native"
    elif isinstance(source, nn.Module):
        bridge, label = _bridge_from_module(source, architecture, tokenizer, name)
    elif isinstance(source, (str, os.PathLike)):
        bridge, label = _bridge_from_path(os.fspath(source), dev, dt, tokenizer, name)
    else:
        raise ModelLoadError(
            f"cannot load a model from {type(source).__name__}; valid sources: a Hugging Face name or "
            "directory (str/Path), a TransformerBridgeConfig, a Hugging Face PreTrainedModel, a TransformerBridge"
        )

    with contextlib.redirect_stdout(io.StringIO()):  # TransformerLens prints on every .to()
        bridge = bridge.to(device=dev, dtype=dt)
    return HookedModel(bridge, name=label)
