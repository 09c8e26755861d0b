"""The main job (`make demo`): load the default model, cache activations, write figures and a report.

Reads a YAML config (configs/demo.yaml) into frozen dataclasses; writes everything under ``out_dir``.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from mechpatch import Pattern, Resid, cache_activations, load_model
from mechpatch.config import load_config


@dataclass(frozen=True)
class BuiltModel:
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 128
    d_mlp: int = 512
    n_ctx: int = 64
    d_vocab: int = 256
    seed: int = 0


@dataclass(frozen=True)
class DemoConfig:
    model: BuiltModel = field(default_factory=BuiltModel)
    n_prompts: int = 8
    seq_len: int = 16
    seed: int = 0
    out_dir: str = "out/demo"


def build_model(cfg: BuiltModel):
    from transformer_lens.config import TransformerBridgeConfig

    native = TransformerBridgeConfig(
        d_model=cfg.d_model, d_head=cfg.d_model // cfg.n_heads, n_heads=cfg.n_heads, n_layers=cfg.n_layers,
        n_ctx=cfg.n_ctx, d_vocab=cfg.d_vocab, d_mlp=cfg.d_mlp, act_fn="gelu", normalization_type="LN",
        seed=cfg.seed,
    )
    return load_model(native, device="auto", name=f"built-gpt2-{cfg.n_layers}L")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(DemoConfig, args.config)
    os.makedirs(cfg.out_dir, exist_ok=True)
    start = time.time()
    torch.manual_seed(cfg.seed)

    model = build_model(cfg.model)
    print(model)
    # repeated random tokens: [r, r] so attention to the earlier copy is visible in the patterns
    half = cfg.seq_len // 2
    r = torch.randint(0, model.spec.d_vocab, (cfg.n_prompts, half))
    tokens = torch.cat([r, r], dim=1)
    sites = [Pattern(l, h) for l in range(model.spec.n_layers) for h in range(model.spec.n_heads)]
    sites += [Resid(l, "post") for l in range(model.spec.n_layers)]
    cache = cache_activations(model, tokens, sites)
    print(cache)

    from mechpatch.plotting import heatmap

    patterns = torch.stack([cache[Pattern(l, h)].mean(0) for l in range(model.spec.n_layers)
                            for h in range(model.spec.n_heads)])
    induction = torch.stack([p.diagonal(offset=-(half - 1)).mean() for p in patterns]).reshape(
        model.spec.n_layers, model.spec.n_heads)
    norms = torch.stack([cache[Resid(l, "post")].norm(dim=-1).mean(0) for l in range(model.spec.n_layers)])
    figs = {
        "induction_scores": heatmap(induction, x_labels=[f"H{h}" for h in range(model.spec.n_heads)],
                                    y_labels=[f"L{l}" for l in range(model.spec.n_layers)],
                                    title="Induction score per head (repeated random tokens)", x_title="head",
                                    y_title="layer"),
        "resid_norms": heatmap(norms, x_labels=[str(p) for p in range(cfg.seq_len)],
                               y_labels=[f"L{l}" for l in range(model.spec.n_layers)],
                               title="Residual-stream norm after each layer", x_title="position", y_title="layer"),
    }
    for name, fig in figs.items():
        fig.write_html(os.path.join(cfg.out_dir, f"{name}.html"), include_plotlyjs=True)
    summary = {
        "model": repr(model),
        "config": asdict(cfg),
        "cache": repr(cache),
        "max_induction_score": float(induction.max()),
        "figures": [f"{n}.html" for n in figs],
        "seconds": round(time.time() - start, 2),
    }
    with open(os.path.join(cfg.out_dir, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
