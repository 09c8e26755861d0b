"""IOI in GPT-2 small (Wang et al. 2023), reproduced: the logit difference and accuracy, then the head
classes the paper found by path patching, compared with its lists.

1. Direct effect of every head on the logits (path patching head -> logits, p_ABC into p_IOI): the
   most negative are the name movers, the most positive the negative name movers.
2. Path patching from every head into the top name movers' queries at END: the most negative are the
   S-inhibition heads.
3. Path patching from every head into the S-inhibition heads' values at S2: the most negative are the
   induction and duplicate-token heads (compared with the two published classes together).

Writes a JSON results file (``out`` in the config) and prints the comparison tables.

Run: ``python experiments/published/ioi_gpt2.py configs/published/ioi_gpt2.yaml``
"""

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from mechpatch.model import HookedModel
from mechpatch.sites import Query, Value, heads
from mechpatch.tasks.ioi import make_ioi

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # published.py, beside this script
from published import (  # noqa: E402
    cli,
    finish,
    compare_units,
    load_original,
    load_reference,
    path_effects,
    top_units,
)

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference.yaml")


@dataclass(frozen=True)
class IOIConfig:
    model: str = "gpt2"  # hub name, local directory, or bundled zoo name
    device: str = "auto"
    dtype: str = "float32"
    n_prompts: int = 100
    seed: int = 0
    templates: Optional[tuple[int, ...]] = None  # indices of the 15 templates to draw from (None: all)
    batch_size: int = 16  # sender sets per forward pass in path patching
    n_name_movers: int = 3
    n_negative_name_movers: int = 2
    n_s_inhibition: int = 4
    n_s2_heads: int = 7  # induction + duplicate-token heads
    out: str = "out/published/ioi_gpt2.json"

    def __post_init__(self) -> None:
        if self.n_prompts < 1 or self.batch_size < 1:
            raise ValueError("n_prompts and batch_size must be at least 1")
        counts = (self.n_name_movers, self.n_negative_name_movers, self.n_s_inhibition, self.n_s2_heads)
        if min(counts) < 0:
            raise ValueError("head counts must be non-negative")


def _io_probability(model: HookedModel, task) -> float:
    probs = []
    for b in task:
        logits = model(b.clean.to(model.device))[:, -1]
        probs.append(logits.float().softmax(-1).gather(1, b.answers[:, :1].to(logits.device))[:, 0].cpu())
    return float(torch.cat(probs).mean())


def run(cfg: IOIConfig, model: Optional[HookedModel] = None) -> dict[str, Any]:
    """The whole experiment; ``model`` replaces loading ``cfg.model`` (a hook for tests and notebooks)."""
    start = time.time()
    ref = load_reference(REFERENCE, "ioi")
    if model is None:
        model = load_original(cfg.model, device=cfg.device, dtype=cfg.dtype)
    task = make_ioi(model, n=cfg.n_prompts, seed=cfg.seed, templates=cfg.templates)
    scores = task.evaluate(model)
    measured = {"logit_diff": float(scores.clean.mean()), "accuracy": scores.accuracy,
                "io_probability": _io_probability(model, task)}

    senders = heads(model.spec)
    units = [(s.layer, s.head) for s in senders]
    direct = dict(zip(units, path_effects(model, task, senders, lambda b: "logits", batch_size=cfg.batch_size).tolist()))
    name_movers = top_units(direct, cfg.n_name_movers, sign=-1)
    negative = top_units(direct, cfg.n_negative_name_movers, sign=+1)

    effects = {"direct_on_logits": direct}
    s_inhibition: list = []
    s2_heads: list = []
    if name_movers:
        def queries(b):
            return [Query(l, h, pos=b.position("END")) for l, h in name_movers]

        effects["into_name_mover_queries"] = dict(zip(units, path_effects(
            model, task, senders, queries, batch_size=cfg.batch_size).tolist()))
        s_inhibition = top_units(effects["into_name_mover_queries"], cfg.n_s_inhibition, sign=-1)
    if s_inhibition:
        per_group = model.spec.n_heads // model.spec.n_kv_heads

        def values(b):
            groups = dict.fromkeys((l, h // per_group) for l, h in s_inhibition)
            return [Value(l, g, pos=b.position("S2")) for l, g in groups]

        effects["into_s_inhibition_values_at_S2"] = dict(zip(units, path_effects(
            model, task, senders, values, split_by="S2", batch_size=cfg.batch_size).tolist()))
        s2_heads = top_units(effects["into_s_inhibition_values_at_S2"], cfg.n_s2_heads, sign=-1)

    comparisons = [
        compare_units("name_mover", name_movers, ref.heads("name_mover")),
        compare_units("negative_name_mover", negative, ref.heads("negative_name_mover")),
        compare_units("s_inhibition", s_inhibition, ref.heads("s_inhibition")),
        compare_units("induction+duplicate_token", s2_heads, ref.heads("induction") + ref.heads("duplicate_token")),
    ]
    return finish("ioi_gpt2", cfg, model, ref, task, {**task.meta, **scores.summary()}, measured, effects, comparisons,
                  time.time() - start)


def main(argv: Optional[list[str]] = None) -> int:
    return cli(__doc__, IOIConfig, run, "configs/published/ioi_gpt2.yaml", argv)


if __name__ == "__main__":
    sys.exit(main())
