"""Docstring in attn-only-4l (Heimersheim & Janiak 2023; ACDC's ground truth), reproduced: the logit
difference, then the heads that matter, compared with the published circuit.

1. Every head's output patched from the corrupted prompt (ACDC's random_random by default) into the
   clean run, at all positions (noising): the heads that lower the logit difference most are compared
   with the published circuit.
2. Every head's direct effect on the logits (path patching head -> logits): the most negative are
   compared with the published argument movers.

Writes a JSON results file (``out`` in the config) and prints the comparison tables.

Run: ``python experiments/published/docstring_attn_only_4l.py configs/published/docstring_attn_only_4l.yaml``
"""

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from mechpatch.model import HookedModel
from mechpatch.sites import heads
from mechpatch.tasks.docstring import CORRUPTIONS, make_docstring

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # published.py, beside this script
from published import (  # noqa: E402
    cli,
    finish,
    compare_units,
    load_original,
    load_reference,
    patch_effects,
    path_effects,
    top_units,
)

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference.yaml")


@dataclass(frozen=True)
class DocstringConfig:
    model: str = "NeelNanda/Attn_Only_4L512W_C4_Code"  # hub name, local directory, or bundled zoo name
    device: str = "auto"
    dtype: str = "float32"
    n_prompts: int = 50
    seed: int = 0
    corruption: str = "random_random"
    n_circuit_heads: int = 6
    n_argument_movers: int = 2
    batch_size: int = 16  # sender sets per forward pass in path patching
    out: str = "out/published/docstring_attn_only_4l.json"

    def __post_init__(self) -> None:
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {self.corruption!r}; valid: {', '.join(CORRUPTIONS)}")
        if self.n_prompts < 1 or self.batch_size < 1 or min(self.n_circuit_heads, self.n_argument_movers) < 0:
            raise ValueError("n_prompts and batch_size must be at least 1, head counts non-negative")


def run(cfg: DocstringConfig, model: Optional[HookedModel] = None) -> dict[str, Any]:
    """The whole experiment; ``model`` replaces loading ``cfg.model`` (a hook for tests and notebooks)."""
    start = time.time()
    ref = load_reference(REFERENCE, "docstring")
    if model is None:
        model = load_original(cfg.model, device=cfg.device, dtype=cfg.dtype)
    task = make_docstring(model, n=cfg.n_prompts, seed=cfg.seed, corruption=cfg.corruption)
    scores = task.evaluate(model)
    measured = {"logit_diff": float(scores.clean.mean()), "accuracy": scores.accuracy}

    sites = heads(model.spec)
    units = [(s.layer, s.head) for s in sites]
    effects = {
        "heads_all_positions": dict(zip(units, patch_effects(model, task, lambda b: sites).tolist())),
        "direct_on_logits": dict(zip(units, path_effects(
            model, task, sites, lambda b: "logits", batch_size=cfg.batch_size).tolist())),
    }
    comparisons = [
        compare_units("circuit", top_units(effects["heads_all_positions"], cfg.n_circuit_heads, sign=-1),
                      ref.heads("circuit")),
        compare_units("argument_mover", top_units(effects["direct_on_logits"], cfg.n_argument_movers, sign=-1),
                      ref.heads("argument_mover")),
    ]
    return finish("docstring_attn_only_4l", cfg, model, ref, task, {**task.meta, **scores.summary()}, measured, effects, comparisons,
                  time.time() - start)


def main(argv: Optional[list[str]] = None) -> int:
    return cli(__doc__, DocstringConfig, run, "configs/published/docstring_attn_only_4l.yaml", argv)


if __name__ == "__main__":
    sys.exit(main())
