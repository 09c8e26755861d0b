"""mechpatch's own induction model: 2 layers, attention only, trained here on repeated random blocks.

A TransformerLens-native model (LayerNorm, learned positions, d_model 64, 4 heads of width 16,
vocabulary 64, context 32) trained by ``experiments/train_induction.py`` with
``configs/train_induction.yaml``. Every training sequence starts with the BOS-like token
:data:`BOS` (0); somewhere in the other 31 positions a block of 4..15 distinct tokens appears
twice (random length, random offsets), the rest is random filler from tokens 1..63. The classic
mechanism forms: previous-token heads in layer 0 feeding induction heads in layer 1 (with init seed 1;
other seeds can find other solutions, see the config).

The weights ship in ``mechpatch/zoo/weights/induction_2l.safetensors`` with a JSON record (config,
seed, losses, versions, date, sha256); :func:`load_induction` checks the file against that record.

>>> model = load_induction(device="cpu")
>>> model
HookedModel('induction-2l', TransformerLensNative, layers=2, heads=4, d_model=64, attn-only, cpu, torch.float32)
"""

import contextlib
import io
import json
import os
from typing import Any, Optional, Union

import torch

from mechpatch._files import file_sha256
from mechpatch.errors import ModelLoadError
from mechpatch.model import HookedModel, load_model

#: The BOS-like token every training sequence starts with; the other tokens are 1 .. d_vocab-1.
BOS = 0
NAME = "induction-2l"
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
WEIGHTS_PATH = os.path.join(WEIGHTS_DIR, "induction_2l.safetensors")

#: The native TransformerLens config (less the init seed), shared by the training script and the loader.
ARCHITECTURE: dict[str, Any] = {
    "d_model": 64,
    "d_head": 16,
    "n_heads": 4,
    "n_layers": 2,
    "n_ctx": 32,
    "d_vocab": 64,
    "attn_only": True,
    "normalization_type": "LN",
    "positional_embedding_type": "standard",
}

PROVENANCE: dict[str, Any] = {
    "name": NAME,
    "what": (
        "2-layer attention-only transformer (LayerNorm, learned positions, d_model 64, 4 heads x d_head 16, "
        "vocab 64, context 32) with a previous-token head in layer 0 and an induction head in layer 1"
    ),
    "how": (
        "trained from scratch on CPU with AdamW on next-token cross-entropy at every position of synthetic "
        "sequences: BOS (token 0), then random filler from tokens 1..63 in which a block of 4..15 distinct "
        "tokens (random length) appears twice at random offsets"
    ),
    "script": "experiments/train_induction.py",
    "config": "configs/train_induction.yaml",
    "command": ".venv/bin/python experiments/train_induction.py configs/train_induction.yaml",
    "seed": 1,
    "bos_token": BOS,
    "weights": "mechpatch/zoo/weights/induction_2l.safetensors",
    "record": "mechpatch/zoo/weights/induction_2l.json",
    "architecture": ARCHITECTURE,
}


def native_config(seed: int = 0) -> Any:
    """The model's ``TransformerBridgeConfig``; ``seed`` only sets the initial weights."""
    from transformer_lens.config import TransformerBridgeConfig

    return TransformerBridgeConfig(**ARCHITECTURE, seed=seed)


def build_bridge(seed: int = 0) -> Any:
    """A freshly initialised native ``TransformerBridge`` of this architecture (in training mode)."""
    from transformer_lens.model_bridge import TransformerBridge

    with contextlib.redirect_stdout(io.StringIO()):
        return TransformerBridge.boot_native(native_config(seed))


def record_path(weights: Union[str, os.PathLike]) -> str:
    """The JSON record that sits next to a weights file (same name, ``.json``)."""
    return os.path.splitext(os.fspath(weights))[0] + ".json"


def load_induction(
    device: Union[str, torch.device, None] = "auto",
    dtype: Union[str, torch.dtype, None] = "float32",
    weights: Optional[Union[str, os.PathLike]] = None,
) -> HookedModel:
    """Load mechpatch's trained 2-layer induction model.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ...
        dtype: ``"float32"`` (the weights' dtype), ``"float64"``, ``"bfloat16"``, ...
        weights: a safetensors file from ``experiments/train_induction.py`` (default: the shipped
            weights). Its JSON record must sit next to it.

    Returns:
        A :class:`~mechpatch.model.HookedModel` named ``"induction-2l"``, in eval mode. It has no
        tokenizer: pass token ids, starting each prompt with :data:`BOS`.

    Raises:
        ModelLoadError: the weights file or its record is missing, their sha256 disagree, or the
            tensors do not fit the architecture.

    >>> model = load_induction(device="cpu")
    >>> model.spec.n_layers, model.spec.n_heads, model.spec.d_vocab
    (2, 4, 64)
    """
    path = os.fspath(weights) if weights is not None else WEIGHTS_PATH
    return load_checked(path, NAME, ARCHITECTURE, PROVENANCE["command"], build_bridge(), device=device, dtype=dtype)


def load_checked(path: str, name: str, architecture: Any, command: str, bridge: Any, *,
                 device: Union[str, torch.device], dtype: Union[str, torch.dtype]) -> HookedModel:
    """Load trained weights into ``bridge`` after checking them against their JSON record's sha256.

    Raises:
        ModelLoadError: the weights or their record are missing, their sha256 disagree, or the tensors do
            not fit the architecture.
    """
    from safetensors.torch import load_file

    record = record_path(path)
    for required in (path, record):
        if not os.path.exists(required):
            raise ModelLoadError(
                f"missing {required!r}; train the model with `{command}` (set `out` in the config to write elsewhere)"
            )
    with open(record, encoding="utf-8") as fh:
        expected = json.load(fh).get("weights_sha256")
    actual = file_sha256(path)
    if expected != actual:
        raise ModelLoadError(
            f"{path!r} has sha256 {actual}, but its record {record!r} says {expected}; the weights were changed "
            "after training: retrain, or restore both files together"
        )
    try:
        bridge.load_state_dict(load_file(path), strict=True)
    except RuntimeError as err:
        raise ModelLoadError(f"{path!r} does not fit the {name} architecture {architecture}: {err}") from err
    return load_model(bridge, device=device, dtype=dtype, name=name)
