"""Random-weight models of the architectures researchers use, built from each one's Hugging Face config class.

No hub is needed: the config class and the model class ship with ``transformers``, the weights are drawn at
random and then perturbed (so that norm weights and biases, which initialise to 1 and 0, are not trivial). Two
shapes per architecture: ``"tiny"`` (2 layers, d_model 64, vocabulary 100: the tests) and ``"base"`` (12 layers,
d_model 768, about 100M parameters: the benchmarks), plus ``"1b"`` (about 1B parameters: the memory check).

>>> sorted(ARCHITECTURES)[:4]
['gemma2', 'gemma3', 'gpt2', 'gptj']
"""

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch

from mechpatch.errors import InvalidArgumentError, choices


@dataclass(frozen=True)
class Architecture:
    """One architecture: its config and model classes, what it adds to the forward, and its shapes' settings."""

    name: str
    config: str  # transformers config class
    model: str  # transformers causal-LM class (its name is the architecture string the bridge and fast path see)
    features: str  # what this architecture adds to the forward, for humans
    tiny: dict[str, Any] = field(default_factory=dict)  # settings beyond the common tiny shape
    base: dict[str, Any] = field(default_factory=dict)  # settings beyond the common 12-layer shape


_LLAMA_LIKE_TINY = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                        intermediate_size=128, max_position_embeddings=64)
_LLAMA_LIKE_BASE = dict(hidden_size=768, num_attention_heads=12, num_key_value_heads=4, num_hidden_layers=12,
                        intermediate_size=2048, max_position_embeddings=512)
_SLIDING = ["sliding_attention", "full_attention"]

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in [
        Architecture(
            "gpt2", "GPT2Config", "GPT2LMHeadModel", "learned positions, LayerNorm, gelu_new",
            tiny=dict(n_layer=2, n_head=4, n_embd=64, n_positions=64),
            base=dict(n_layer=12, n_head=12, n_embd=768, n_positions=512),
        ),
        Architecture(
            "llama3", "LlamaConfig", "LlamaForCausalLM", "RMSNorm, SwiGLU, GQA, RoPE with Llama 3 frequency scaling",
            tiny=dict(**_LLAMA_LIKE_TINY, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                            high_freq_factor=4.0, original_max_position_embeddings=8)),
            base=dict(**_LLAMA_LIKE_BASE, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                            high_freq_factor=4.0, original_max_position_embeddings=64)),
        ),
        Architecture(
            "pythia", "GPTNeoXConfig", "GPTNeoXForCausalLM",
            "GPT-NeoX: parallel attention and MLP, partial rotary (25% of each head), biases everywhere, LayerNorm",
            tiny=dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=256,
                      max_position_embeddings=64, rotary_pct=0.25, hidden_act="gelu"),
            base=dict(hidden_size=768, num_attention_heads=12, num_hidden_layers=12, intermediate_size=3072,
                      max_position_embeddings=512, rotary_pct=0.25, hidden_act="gelu"),
        ),
        Architecture(
            "gptj", "GPTJConfig", "GPTJForCausalLM",
            "GPT-J: parallel block with one shared LayerNorm, interleaved (adjacent-pair) partial rotary, LM-head bias",
            tiny=dict(n_embd=64, n_head=4, n_layer=2, n_positions=64, rotary_dim=8),
            base=dict(n_embd=768, n_head=12, n_layer=12, n_positions=512, rotary_dim=32),
        ),
        Architecture(
            "gemma2", "Gemma2Config", "Gemma2ForCausalLM",
            "Gemma 2: GeGLU, (1 + w) RMSNorm before and after attention and MLP, attention and final-logit "
            "soft-capping, alternating sliding-window layers, embeddings scaled by sqrt(d_model), query "
            "pre-attention scalar",
            tiny=dict(**_LLAMA_LIKE_TINY, head_dim=16, sliding_window=4, query_pre_attn_scalar=24,
                      attn_logit_softcapping=3.0, final_logit_softcapping=5.0, layer_types=_SLIDING),
            base=dict(**_LLAMA_LIKE_BASE, head_dim=64, sliding_window=64, query_pre_attn_scalar=64),
        ),
        Architecture(
            "gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM",
            "Gemma 3: Gemma 2's block with per-head q/k RMSNorm, no soft-capping, a separate RoPE base for the "
            "sliding-window layers",
            tiny=dict(**_LLAMA_LIKE_TINY, head_dim=16, sliding_window=4, query_pre_attn_scalar=24, layer_types=_SLIDING,
                      rope_scaling=None),
            base=dict(**_LLAMA_LIKE_BASE, head_dim=64, sliding_window=64, query_pre_attn_scalar=64),
        ),
        Architecture(
            "qwen2", "Qwen2Config", "Qwen2ForCausalLM", "Qwen 2.5: Llama's block with q/k/v biases",
            tiny=dict(_LLAMA_LIKE_TINY), base=dict(_LLAMA_LIKE_BASE),
        ),
        Architecture(
            "qwen3", "Qwen3Config", "Qwen3ForCausalLM", "Qwen 3: Llama's block with per-head q/k RMSNorm",
            tiny=dict(**_LLAMA_LIKE_TINY, head_dim=16), base=dict(**_LLAMA_LIKE_BASE, head_dim=64),
        ),
        Architecture(
            "mistral", "MistralConfig", "MistralForCausalLM", "Mistral: Llama's block with sliding-window attention",
            tiny=dict(**_LLAMA_LIKE_TINY, sliding_window=4), base=dict(**_LLAMA_LIKE_BASE, sliding_window=64),
        ),
        Architecture(
            "olmo2", "Olmo2Config", "Olmo2ForCausalLM",
            "OLMo 2: RMSNorm after attention and MLP only (no pre-norms), q/k RMSNorm over all heads at once",
            tiny=dict(_LLAMA_LIKE_TINY), base=dict(_LLAMA_LIKE_BASE),
        ),
    ]
}

_COMMON = {"tiny": dict(vocab_size=100), "base": dict(vocab_size=32000), "1b": dict(vocab_size=32000)}
#: the "1b" shape: 18 layers of d_model 2048 (0.98B parameters with a 32k vocabulary, untied embeddings)
_ONE_B = dict(hidden_size=2048, num_attention_heads=16, num_key_value_heads=8, num_hidden_layers=18,
              intermediate_size=5632, max_position_embeddings=512)
SIZES = ("tiny", "base", "1b")


def _check(name: str, size: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise InvalidArgumentError(f"unknown architecture {name!r}; valid: {choices(ARCHITECTURES)}")
    if size not in SIZES:
        raise InvalidArgumentError(f"unknown size {size!r}; valid: {choices(SIZES)}")
    if size == "1b" and name not in ("llama3", "qwen2", "mistral"):
        raise InvalidArgumentError(f"the '1b' shape is defined for llama3, qwen2 and mistral only, not {name!r}")
    return ARCHITECTURES[name]


def hf_config(name: str, size: str = "tiny") -> Any:
    """The Hugging Face config of architecture ``name`` at ``size`` ("tiny", "base" or "1b")."""
    import transformers

    arch = _check(name, size)
    settings = {"tiny": arch.tiny, "base": arch.base, "1b": _ONE_B}[size]
    cfg = getattr(transformers, arch.config)(**settings, **_COMMON[size], bos_token_id=0, eos_token_id=0,
                                             pad_token_id=0)
    cfg.architectures = [arch.model]
    return cfg


def hf_model(name: str, size: str = "tiny", *, seed: int = 0, noise: Optional[float] = None,
             dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A random-weight Hugging Face model of architecture ``name``, in eval mode.

    ``noise`` (default 0.1 for "tiny", 0 otherwise) is the standard deviation of Gaussian noise added to every
    parameter after initialisation, so that norm weights and biases differ from 1 and 0.
    """
    import transformers

    cfg = hf_config(name, size)
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = getattr(transformers, ARCHITECTURES[name].model)(cfg).to(dtype).eval()
    noise = (0.1 if size == "tiny" else 0.0) if noise is None else noise
    if noise:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_((noise * torch.randn(p.shape, generator=g)).to(p.dtype))
    return model


def random_model(name: str, size: str = "tiny", *, seed: int = 0, noise: Optional[float] = None,
                 device: Union[str, torch.device] = "cpu", dtype: Union[str, torch.dtype] = "float32",
                 tokenizer: Any = None) -> Any:
    """A :class:`~mechpatch.model.HookedModel` of architecture ``name`` with random weights (see :func:`hf_model`)."""
    from mechpatch.model import load_model, resolve_dtype, resolve_device

    dt = resolve_dtype(dtype, resolve_device(device))
    hf = hf_model(name, size, seed=seed, noise=noise, dtype=dt)
    return load_model(hf, tokenizer=tokenizer, device=device, dtype=dt, name=f"random-{name}-{size}")


__all__ = ["ARCHITECTURES", "Architecture", "SIZES", "hf_config", "hf_model", "random_model"]
