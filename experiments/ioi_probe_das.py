"""Where is "which name is the subject" in SmolLM2 on IOI? A probe says where the information is; DAS and the full
interchange say where the model uses it.

Prompts: one IOI template (so that every prompt has one length and S2 and END sit at one position), names drawn at
random, half in ABBA order (the subject is the second name of the first clause) and half in BABA order (the first).
The variable: the subject's position in the first clause (ABBA/BABA).

Per layer (the residual stream entering it) and per position (S2, the subject's second mention; END):
- **probe**: a logistic probe for the order on the residual stream (held-out accuracy), and its Hewitt & Liang control
  task with the subject name as the type (a probe that memorises names scores on the control task too);
- **full interchange**: the whole residual vector at that position taken from a source prompt of the other order with
  four other names; the model should then answer the base prompt's *subject* (the variable flipped). The share of
  pairs where logit(S) > logit(IO) is the interchange's accuracy with every dimension (run through the engine);
- **DAS**: a ``k``-dimensional subspace trained for the same interchange (held-out IIA; readout over the two names).

Writes results.json, figure.html and report.html under the config's out_dir (atomically); results are kept per cell as
they finish, so an interrupted run resumes where it stopped. Last line of output: one JSON object.
Usage: python experiments/ioi_probe_das.py configs/ioi_probe_das.yaml
"""

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch

from mechpatch import zoo
from mechpatch.config import load_config
from mechpatch.das import das
from mechpatch.patching import run_patches
from mechpatch.patching.metrics import LogitDiff
from mechpatch.probes import probe_sites
from mechpatch.report import write_json, write_report
from mechpatch.sites import Resid
from mechpatch.tasks import make_ioi

ROLES = ("S2", "END")


@dataclass(frozen=True)
class ProbeDASConfig:
    model: str = "smollm2-135m"
    n_prompts: int = 200
    template: int = 0
    seed: int = 0
    layers: tuple[int, ...] = (0, 3, 6, 9, 12, 15, 18, 21, 24, 27)
    roles: tuple[str, ...] = ROLES
    k: int = 2
    steps: int = 100
    lr: float = 0.02
    batch_size: int = 32
    out_dir: str = "out/ioi_probe_das"

    def __post_init__(self) -> None:
        if self.model not in zoo.MODELS:
            raise ValueError(f"model {self.model!r} is not bundled; valid: {', '.join(sorted(zoo.MODELS))}")
        bad = [r for r in self.roles if r not in ROLES]
        if bad or not self.roles:
            raise ValueError(f"roles must be some of {', '.join(ROLES)}; got {list(self.roles)}")
        for key in ("n_prompts", "k", "steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1; got {getattr(self, key)}")
        if self.n_prompts < 8:
            raise ValueError(f"n_prompts must be >= 8 (held-out pairs for the probe and DAS); got {self.n_prompts}")

    def key(self) -> str:
        """What the per-cell results depend on (out_dir aside): a resumed run must have the same."""
        d = asdict(self)
        d.pop("out_dir")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def make_pairs(model, cfg: ProbeDASConfig):
    """Prompts of one template, and per base prompt a source of the other order sharing no name with it."""
    task = make_ioi(model, n=cfg.n_prompts, seed=cfg.seed, templates=(cfg.template,))
    batch = max(task, key=lambda b: b.clean.shape[0])  # one template: every prompt has one length, bar rare names
    order = torch.tensor([label.startswith("ABBA") for label in batch.labels]).long()
    names = [set(a.tolist()) for a in batch.answers]
    g = torch.Generator().manual_seed(cfg.seed)
    source = []
    for i in range(len(order)):
        pool = [j for j in range(len(order)) if order[j] != order[i] and not names[j] & names[i]]
        if not pool:
            raise SystemExit(f"prompt {i} has no source of the other order with other names: raise n_prompts")
        source.append(pool[int(torch.randint(0, len(pool), (1,), generator=g))])
    return batch, order, torch.tensor(source)


def figure(cells: dict, cfg: ProbeDASConfig):
    """One panel per position: probe accuracy and selectivity, full-interchange accuracy, DAS IIA, by layer."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(cfg.roles), subplot_titles=[f"at {r}" for r in cfg.roles], shared_yaxes=True)
    series = (("probe_accuracy", "probe accuracy (held-out)", "#1f77b4", "solid"),
              ("probe_selectivity", "probe selectivity (vs name control)", "#1f77b4", "dot"),
              ("full_interchange", "interchange, all dimensions", "#7f7f7f", "dash"),
              ("das_iia", f"DAS IIA, k={cfg.k} (held-out)", "#d62728", "solid"))
    for col, role in enumerate(cfg.roles, start=1):
        layers = [layer for layer in cfg.layers if f"{role}/{layer}" in cells]
        for key, name, color, dash in series:
            fig.add_scatter(x=layers, y=[cells[f"{role}/{layer}"][key] for layer in layers], name=name,
                            line={"color": color, "dash": dash}, mode="lines+markers", legendgroup=key,
                            showlegend=col == 1, row=1, col=col)
        fig.update_xaxes(title_text="layer (residual stream entering it)", row=1, col=col)
    fig.update_yaxes(title_text="accuracy", range=[-0.05, 1.05], row=1, col=1)
    fig.update_layout(title="SmolLM2 IOI, 'the subject is the first or second name': probing vs intervention",
                      height=450, width=1100)
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config, e.g. configs/ioi_probe_das.yaml")
    parser.add_argument("--force", action="store_true", help="recompute every cell (default: resume)")
    args = parser.parse_args(argv)
    cfg, force = load_config(ProbeDASConfig, args.config), args.force
    os.makedirs(cfg.out_dir, exist_ok=True)
    start = time.time()
    model = zoo.load(cfg.model, device="auto")
    bad = [layer for layer in cfg.layers if not 0 <= layer < model.spec.n_layers]
    if bad:
        raise SystemExit(f"layers {bad} are outside 0..{model.spec.n_layers - 1}")
    torch.manual_seed(cfg.seed)
    batch, order, src = make_pairs(model, cfg)
    base, source, answers = batch.clean, batch.clean[src], batch.answers
    with torch.no_grad():
        accuracy = float((model.bridge(base)[:, -1].gather(1, answers).diff(dim=1) < 0).double().mean())
    print(f"{len(order)} prompts of {base.shape[1]} tokens, {int(order.sum())} ABBA; model accuracy "
          f"(logit IO > logit S) {accuracy:.3f}", flush=True)

    partial = os.path.join(cfg.out_dir, "cells.json")
    cells: dict = {}
    if os.path.exists(partial) and not force:
        with open(partial, encoding="utf-8") as fh:
            saved = json.load(fh)
        if saved.get("key") == cfg.key():
            cells = saved["cells"]
            print(f"resuming: {len(cells)} cells done", flush=True)
    flipped = answers[:, [1, 0]]  # LogitDiff reads column 0 as correct: logit(S) - logit(IO), > 0 when flipped
    for role in cfg.roles:
        pos = int(batch.positions[role][0])
        if not bool((batch.positions[role] == pos).all()):
            raise SystemExit(f"{role} is not at one position in every prompt")
        sites = [Resid(layer, "pre", pos=pos) for layer in cfg.layers]
        probes = probe_sites(model, base, [Resid(layer, "pre") for layer in cfg.layers], labels=order, position=pos, types=answers[:, 1].tolist(),
                             seed=cfg.seed)
        full = run_patches(model, base, sites, metric=LogitDiff(), source=source, answers=flipped, progress=False)
        for i, layer in enumerate(cfg.layers):
            cell = f"{role}/{layer}"
            if cell in cells:
                continue
            t = time.time()
            r = das(model, base, sites[i], source=source, targets=answers[:, 1], candidates=answers, k=cfg.k,
                    steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed)
            engine = run_patches(model, base, [sites[i]], metric=LogitDiff(), source=source, answers=flipped,
                                 intervention=r.intervention, progress=False)
            p = probes.probes[Resid(layer, "pre").label]
            cells[cell] = {"role": role, "layer": layer, "position": pos, "probe_accuracy": round(p.accuracy, 4),
                           "probe_control_accuracy": round(p.control_accuracy, 4),
                           "probe_selectivity": round(p.selectivity, 4),
                           "full_interchange": round(float((full.values[i] > 0).double().mean()), 4),
                           "das_iia": round(r.iia, 4), "das_train_iia": round(r.train_iia, 4),
                           "das_engine_iia_all_pairs": round(float((engine.values[0] > 0).double().mean()), 4),
                           "das_seconds": round(time.time() - t, 1)}
            write_json(partial, {"key": cfg.key(), "cells": cells})
            print(cell, cells[cell], flush=True)

    fig = figure(cells, cfg)
    fig.write_html(os.path.join(cfg.out_dir, "figure.html"), include_plotlyjs=True)
    summary = {"experiment": "ioi_probe_das", "model": repr(model), "prompts": len(order), "tokens": base.shape[1],
               "model_accuracy": round(accuracy, 4), "cells": [cells[f"{r}/{layer}"] for r in cfg.roles
                                                               for layer in cfg.layers],
               "config": asdict(cfg), "seconds": round(time.time() - start, 1), "date": time.strftime("%Y-%m-%d"),
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    for role in cfg.roles:
        row = [cells[f"{role}/{layer}"] for layer in cfg.layers]
        best = max(row, key=lambda c: c["das_iia"])
        summary[f"{role}_best_das"] = {"layer": best["layer"], "iia": best["das_iia"]}
        summary[f"{role}_probe_min"] = min(c["probe_accuracy"] for c in row)
    write_json(os.path.join(cfg.out_dir, "results.json"), summary)
    write_report(os.path.join(cfg.out_dir, "report.html"), "Probing vs intervention: the IOI subject on SmolLM2",
                 {k: v for k, v in summary.items() if k not in ("cells", "config")}, {"by layer": fig},
                 notes=__doc__.split("\n\n")[2])
    print(json.dumps({k: v for k, v in summary.items() if k != "cells"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
