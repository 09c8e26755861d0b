"""The main job (`make demo`): load the default model, cache activations, run patching sweeps, write a report.

Reads a YAML config (configs/demo.yaml) into frozen dataclasses and writes, under ``out_dir``:
``report.html`` (self-contained: plotly.js embedded), one HTML file per figure, ``summary.json``.
"""

import argparse
import html
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from mechpatch import Pattern, cache_activations, load_model, make_pair
from mechpatch.config import load_config
from mechpatch.patching import sweep
from mechpatch.plotting import heatmap, patch_heatmap


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


def write_report(path: str, title: str, headline: dict, figures: dict) -> None:
    """One self-contained page: plotly.js embedded once, then every figure."""
    parts = []
    for i, (name, fig) in enumerate(figures.items()):
        parts.append(f"<h2>{html.escape(name)}</h2>" + fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in headline.items())
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body style='font-family:sans-serif;max-width:1100px;margin:auto'><h1>{html.escape(title)}</h1>"
        f"<table>{rows}</table>{''.join(parts)}</body></html>"
    )
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(page)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(DemoConfig, args.config)
    os.makedirs(cfg.out_dir, exist_ok=True)
    start = time.time()
    torch.manual_seed(cfg.seed)

    model = build_model(cfg.model)
    spec = model.spec
    print(model)
    # repeated random tokens [r, r]; the corrupted prompts change one token of the first copy
    half = cfg.seq_len // 2
    g = torch.Generator().manual_seed(cfg.seed)
    r = torch.randint(0, spec.d_vocab, (cfg.n_prompts, half), generator=g)
    clean = torch.cat([r, r], dim=1)
    corrupted = clean.clone()
    corrupted[:, half - 1] = (corrupted[:, half - 1] + 1 + torch.randint(0, spec.d_vocab - 1, (cfg.n_prompts,),
                                                                          generator=g)) % spec.d_vocab
    # answer: the token that the repeat predicts next (clean) vs a random other token
    answers = torch.stack([clean[:, 0], (clean[:, 0] + 1) % spec.d_vocab], dim=1)
    pair = make_pair(model, clean, corrupted, answers=answers)

    sites = [Pattern(l, h) for l in range(spec.n_layers) for h in range(spec.n_heads)]
    cache = cache_activations(model, pair.clean, sites)
    patterns = torch.stack([cache[s].mean(0) for s in sites])
    induction = torch.stack([p.diagonal(offset=-(half - 1)).mean() for p in patterns]).reshape(spec.n_layers, spec.n_heads)

    t = time.time()
    resid = sweep(model, pair, "resid_pre", metric="logit_diff")
    heads = sweep(model, pair, "head", metric="logit_diff")
    sweep_seconds = time.time() - t
    print(resid)
    print(heads)
    figs = {
        "resid_pre_by_position": patch_heatmap(resid),
        "heads": patch_heatmap(heads),
        "induction_scores": heatmap(
            induction, x_labels=[f"H{h}" for h in range(spec.n_heads)], y_labels=[f"L{l}" for l in range(spec.n_layers)],
            title="Induction score per head (repeated random tokens)", x_title="head", y_title="layer",
        ),
    }
    for name, fig in figs.items():
        fig.write_html(os.path.join(cfg.out_dir, f"{name}.html"), include_plotlyjs=True)
    headline = {
        "model": repr(model),
        "note": "random weights built in code (the bundled pretrained default model arrives with the reference-models work)",
        "prompts": f"{cfg.n_prompts} x {cfg.seq_len} tokens",
        "clean logit diff": f"{float(resid.clean.mean()):.4f}",
        "corrupted logit diff": f"{float(resid.corrupted.mean()):.4f}",
        "patches run": int(resid.noop.numel() + heads.noop.numel()),
        "no-op patches": int(resid.noop.sum() + heads.noop.sum()),
        "sweep seconds": round(sweep_seconds, 2),
        "engine method": resid.meta["method"],
    }
    write_report(os.path.join(cfg.out_dir, "report.html"), "mechpatch demo", headline, figs)
    summary = {**headline, "config": asdict(cfg), "figures": [f"{n}.html" for n in figs] + ["report.html"],
               "seconds": round(time.time() - start, 2)}
    with open(os.path.join(cfg.out_dir, "summary.json.tmp"), "w") as fh:
        json.dump(summary, fh, indent=2)
    os.replace(os.path.join(cfg.out_dir, "summary.json.tmp"), os.path.join(cfg.out_dir, "summary.json"))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
