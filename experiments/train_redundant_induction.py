"""Train mechpatch's induction model with backup heads (mechpatch/zoo/redundant_induction.py) on CPU.

    .venv/bin/python experiments/train_redundant_induction.py configs/train_redundant_induction.yaml

Data, loss and optimiser are those of ``experiments/train_induction.py`` (its ``make_batch`` and
``token_losses`` are reused: same context 32 and vocabulary 64). The one change is **head dropout**:
at every training step each head of the layers in ``dropout_layers`` has its output (``hook_z``) zeroed
with probability ``head_dropout``, independently per sequence, and the surviving heads are scaled by
``1 / (1 - head_dropout)``. The model cannot rely on any one head, so several heads learn induction and
each can stand in for the others: at evaluation (no dropout) ablating one of them costs little.

The progress lines report the held-out second-copy loss with every head on and the largest increase
from zero-ablating one head of layer 1 (small when backups exist). The JSON record next to the weights
also holds, for every layer-1 head, the second-copy loss with that head ablated, and the head scores.
"""

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_induction import DataConfig, make_batch, save, token_losses  # noqa: E402

from mechpatch.config import load_config  # noqa: E402
from mechpatch.zoo.redundant_induction import ARCHITECTURE, BOS, NAME, build_bridge  # noqa: E402
from mechpatch._files import file_sha256  # noqa: E402
from mechpatch.zoo.induction import record_path  # noqa: E402


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    head_dropout: float = 0.5
    dropout_layers: tuple[int, ...] = (1,)
    dropout_start: int = 0  # steps trained without head dropout first (lets the circuit form before it is split)
    eval_every: int = 250
    eval_size: int = 512
    threads: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    out: str = "mechpatch/zoo/weights/redundant_induction_2l.safetensors"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.grad_clip <= 0:
            raise ValueError("need lr > 0, weight_decay >= 0, warmup_steps >= 0, grad_clip > 0")
        if self.dropout_start < 0:
            raise ValueError(f"dropout_start must be >= 0, got {self.dropout_start}")
        if not 0 <= self.head_dropout < 1:
            raise ValueError(f"head_dropout must be in [0, 1), got {self.head_dropout}")
        bad = [layer for layer in self.dropout_layers if not 0 <= layer < ARCHITECTURE["n_layers"]]
        if bad:
            raise ValueError(f"dropout_layers {bad} out of range; valid: 0..{ARCHITECTURE['n_layers'] - 1}")
        if not self.out.endswith(".safetensors"):
            raise ValueError(f"out must name a .safetensors file, got {self.out!r}")


def head_dropout_hooks(p: float, layers: tuple[int, ...], g: torch.Generator) -> list:
    """Forward hooks that drop whole heads (per sequence) with probability ``p``, rescaling survivors."""

    def drop(z: torch.Tensor, hook: object = None) -> torch.Tensor:  # z: batch pos head d_head
        keep = (torch.rand(z.shape[0], 1, z.shape[2], 1, generator=g) >= p).to(z.dtype)
        return z * keep / (1 - p)

    return [(f"blocks.{layer}.attn.hook_z", drop) for layer in layers] if p > 0 else []


def ablation_hooks(layer: int, head: int) -> list:
    def zero(z: torch.Tensor, hook: object = None) -> torch.Tensor:
        z = z.clone()
        z[:, :, head] = 0
        return z

    return [(f"blocks.{layer}.attn.hook_z", zero)]


@torch.no_grad()
def evaluate(bridge: torch.nn.Module, tokens: torch.Tensor, second: torch.Tensor, first: torch.Tensor) -> dict:
    bridge.eval()
    ce = token_losses(bridge, tokens)
    n_layers, n_heads = ARCHITECTURE["n_layers"], ARCHITECTURE["n_heads"]
    ablated = []
    for head in range(n_heads):
        with bridge.hooks(fwd_hooks=ablation_hooks(n_layers - 1, head)):
            ablated.append(float(token_losses(bridge, tokens)[second].mean()))
    half = (ARCHITECTURE["n_ctx"] - 1) // 2
    r = torch.rand(tokens.shape[0], ARCHITECTURE["d_vocab"] - 1, generator=torch.Generator().manual_seed(1))
    r = r.argsort(dim=-1)[:, :half] + 1
    rep = torch.cat([torch.full((r.shape[0], 1), BOS), r, r], dim=1)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    _, cache = bridge.run_with_cache(rep, names_filter=lambda name: name in names)
    patterns = torch.stack([cache[name] for name in names])  # layer batch head query key
    prev = patterns.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(1, -1))
    induction = patterns.diagonal(offset=-(half - 1), dim1=-2, dim2=-1).mean(dim=(1, -1))
    bridge.train()
    return {
        "loss_all": float(ce[:, 1:].mean()),
        "loss_second_copy": float(ce[second].mean()),
        "loss_first_copy": float(ce[first].mean()),
        "loss_second_copy_layer1_head_ablated": [round(x, 4) for x in ablated],
        "prev_token_scores": [[round(float(x), 4) for x in row] for row in prev],
        "induction_scores": [[round(float(x), 4) for x in row] for row in induction],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config, e.g. configs/train_redundant_induction.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(TrainConfig, args.config)

    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    g_train = torch.Generator().manual_seed(cfg.seed)
    g_drop = torch.Generator().manual_seed(cfg.seed + 2)
    eval_batch = make_batch(cfg.eval_size, cfg.data, torch.Generator().manual_seed(cfg.seed + 1))

    bridge = build_bridge(cfg.seed)
    bridge.train()
    decay = [p for p in bridge.parameters() if p.ndim >= 2]
    no_decay = [p for p in bridge.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.99),
    )

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine down to 10%
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    hooks = head_dropout_hooks(cfg.head_dropout, cfg.dropout_layers, g_drop)
    print(f"training {NAME}: {sum(p.numel() for p in bridge.parameters())} parameters, {cfg}", flush=True)
    start = time.time()
    recent: list[float] = []
    for step in range(1, cfg.steps + 1):
        tokens, _, _ = make_batch(cfg.batch_size, cfg.data, g_train)
        with bridge.hooks(fwd_hooks=hooks if step > cfg.dropout_start else []):
            loss = token_losses(bridge, tokens)[:, 1:].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bridge.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-50:]
        if step % cfg.eval_every == 0 or step == cfg.steps:
            ev = evaluate(bridge, *eval_batch)
            worst = max(ev["loss_second_copy_layer1_head_ablated"]) - ev["loss_second_copy"]
            ind = ev["induction_scores"][1]
            print(
                f"step {step:5d}  train {sum(recent) / len(recent):.3f}  eval: all {ev['loss_all']:.3f}, second "
                f"copy {ev['loss_second_copy']:.3f} (worst one-head ablation +{worst:.3f})  induction heads >= 0.3: "
                f"{sum(s >= 0.3 for s in ind)}  {time.time() - start:.0f}s",
                flush=True,
            )
    seconds = time.time() - start
    final = evaluate(bridge, *eval_batch)

    save(bridge, cfg.out)
    record = {
        "name": NAME,
        "script": "experiments/train_redundant_induction.py",
        "command": f".venv/bin/python experiments/train_redundant_induction.py {args.config}",
        "config": asdict(cfg),
        "architecture": ARCHITECTURE,
        "bos_token": BOS,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "loss": "next-token cross-entropy at every position (mean over batch and positions 1..n_ctx-1), "
                "with head dropout in training",
        "final": {"train_loss_last_50_steps": sum(recent) / len(recent), **final},
        "train_seconds": round(seconds, 1),
        "versions": {
            "python": platform.python_version(),
            "torch": version("torch"),
            "transformer_lens": version("transformer-lens"),
            "safetensors": version("safetensors"),
        },
        "threads": cfg.threads,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights_file": os.path.basename(cfg.out),
        "weights_sha256": file_sha256(cfg.out),
    }
    rec = record_path(cfg.out)
    with open(rec + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=2)
        fh.write("\n")
    os.replace(rec + ".tmp", rec)
    print(f"wrote {cfg.out} and {rec} ({seconds:.0f}s of training)", flush=True)
    print(json.dumps(record["final"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
