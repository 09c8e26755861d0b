"""Train mechpatch's 2-layer attention-only induction model (mechpatch/zoo/induction.py) on CPU.

    .venv/bin/python experiments/train_induction.py configs/train_induction.yaml

Data: every sequence is BOS (token 0), then ``n_ctx - 1`` random filler tokens from 1 .. d_vocab-1,
in which a block of distinct tokens (drawn without replacement; length uniform in
``data.min_block .. data.max_block``) is written twice: the first copy at a random offset, the second
at a random offset after it. A fixed length or offset would let the model predict the second copy
from positions alone, and no previous-token head would form.

Loss: next-token cross-entropy at every position (filler included, where the best the model can do
is the uniform guess, ln 63 = 4.14); the progress lines and the record also report the held-out
loss on the tokens the induction mechanism can predict (second copy, from its second token on)
and on the first copy.

Writes ``out`` (safetensors, via a temporary file and ``os.replace``) and, next to it, a JSON record:
config, seed, steps, losses, detection scores, versions, date and the sha256 of the weights.
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
import torch.nn.functional as F

from mechpatch._files import file_sha256
from mechpatch.config import load_config
from mechpatch.zoo.induction import ARCHITECTURE, BOS, build_bridge, record_path


@dataclass(frozen=True)
class DataConfig:
    min_block: int = 4
    max_block: int = 15

    def __post_init__(self) -> None:
        longest = (ARCHITECTURE["n_ctx"] - 1) // 2
        if not 2 <= self.min_block <= self.max_block <= longest:
            raise ValueError(
                f"need 2 <= min_block <= max_block <= {longest} (two copies must fit after BOS in "
                f"n_ctx={ARCHITECTURE['n_ctx']}); got min_block={self.min_block}, max_block={self.max_block}"
            )


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_size: int = 512
    threads: int = 2
    data: DataConfig = field(default_factory=DataConfig)
    out: str = "mechpatch/zoo/weights/induction_2l.safetensors"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.grad_clip <= 0:
            raise ValueError("need lr > 0, weight_decay >= 0, warmup_steps >= 0, grad_clip > 0")
        if not self.out.endswith(".safetensors"):
            raise ValueError(f"out must name a .safetensors file, got {self.out!r}")


def make_batch(n: int, data: DataConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` training sequences and two masks over positions: second copy (from its 2nd token), first copy."""
    n_ctx, d_vocab = ARCHITECTURE["n_ctx"], ARCHITECTURE["d_vocab"]
    tokens = torch.randint(1, d_vocab, (n, n_ctx), generator=g)
    tokens[:, 0] = BOS
    lengths = torch.randint(data.min_block, data.max_block + 1, (n,), generator=g).tolist()
    blocks = torch.rand(n, d_vocab - 1, generator=g).argsort(dim=-1) + 1  # each row: tokens 1.. shuffled
    u = torch.rand(n, 2, generator=g).tolist()
    second = torch.zeros(n, n_ctx, dtype=torch.bool)
    first = torch.zeros(n, n_ctx, dtype=torch.bool)
    for i, length in enumerate(lengths):
        a = 1 + int(u[i][0] * (n_ctx - 2 * length))  # first copy starts in 1 .. n_ctx - 2L
        b = a + length + int(u[i][1] * (n_ctx - length - (a + length) + 1))  # second in a+L .. n_ctx-L
        tokens[i, a : a + length] = blocks[i, :length]
        tokens[i, b : b + length] = blocks[i, :length]
        first[i, a + 1 : a + length] = True
        second[i, b + 1 : b + length] = True
    return tokens, second, first


def token_losses(bridge: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each next token [batch, pos]; position 0 (BOS, never predicted) is 0."""
    logits = bridge(tokens)
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    return F.pad(ce.view(tokens.shape[0], -1), (1, 0))


@torch.no_grad()
def evaluate(bridge: torch.nn.Module, tokens: torch.Tensor, second: torch.Tensor, first: torch.Tensor) -> dict:
    bridge.eval()
    ce = token_losses(bridge, tokens)
    # detection scores on [BOS] + r + r, r = 15 distinct random tokens (published_circuits.yaml, induction)
    half = (ARCHITECTURE["n_ctx"] - 1) // 2
    r = torch.rand(tokens.shape[0], ARCHITECTURE["d_vocab"] - 1, generator=torch.Generator().manual_seed(1))
    r = r.argsort(dim=-1)[:, :half] + 1
    rep = torch.cat([torch.full((r.shape[0], 1), BOS), r, r], dim=1)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(ARCHITECTURE["n_layers"])]
    _, cache = bridge.run_with_cache(rep, names_filter=lambda name: name in names)
    patterns = torch.stack([cache[name] for name in names])  # layer batch head query key
    prev = patterns.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(1, -1))
    induction = patterns.diagonal(offset=-(half - 1), dim1=-2, dim2=-1).mean(dim=(1, -1))
    bridge.train()
    return {
        "loss_all": float(ce[:, 1:].mean()),
        "loss_second_copy": float(ce[second].mean()),
        "loss_first_copy": float(ce[first].mean()),
        "prev_token_scores": [[round(float(x), 4) for x in row] for row in prev],
        "induction_scores": [[round(float(x), 4) for x in row] for row in induction],
    }


def best(scores: list[list[float]], layer: int) -> str:
    head = max(range(len(scores[layer])), key=lambda h: scores[layer][h])
    return f"L{layer}H{head} {scores[layer][head]:.2f}"


def save(bridge: torch.nn.Module, path: str) -> None:
    """Tensors only: safetensors writes metadata keys in hash order, which would change the file's sha256
    from run to run; the JSON record carries the metadata instead."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in bridge.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(state, tmp)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config, e.g. configs/train_induction.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(TrainConfig, args.config)

    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    g_train = torch.Generator().manual_seed(cfg.seed)
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
    print(f"training induction-2l: {sum(p.numel() for p in bridge.parameters())} parameters, {cfg}", flush=True)
    start = time.time()
    recent: list[float] = []
    for step in range(1, cfg.steps + 1):
        tokens, _, _ = make_batch(cfg.batch_size, cfg.data, g_train)
        loss = token_losses(bridge, tokens)[:, 1:].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bridge.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-50:]
        if step % cfg.eval_every == 0 or step == cfg.steps:
            ev = evaluate(bridge, *eval_batch)
            print(
                f"step {step:5d}  train {sum(recent) / len(recent):.3f}  eval: all {ev['loss_all']:.3f}, "
                f"first copy {ev['loss_first_copy']:.3f}, second copy {ev['loss_second_copy']:.3f}  "
                f"prev-token {best(ev['prev_token_scores'], 0)}  induction {best(ev['induction_scores'], 1)}  "
                f"{time.time() - start:.0f}s",
                flush=True,
            )
    seconds = time.time() - start
    final = evaluate(bridge, *eval_batch)

    save(bridge, cfg.out)
    record = {
        "name": "induction-2l",
        "script": "experiments/train_induction.py",
        "command": f".venv/bin/python experiments/train_induction.py {args.config}",
        "config": asdict(cfg),
        "architecture": ARCHITECTURE,
        "bos_token": BOS,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "loss": "next-token cross-entropy at every position (mean over batch and positions 1..n_ctx-1)",
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
