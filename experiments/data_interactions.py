"""Data attribution by interactions: which groups of training data, alone and together, make a model right?

The model is mechpatch's key-value toy (:mod:`mechpatch.zoo.facts`: an embedding and a ReLU MLP trained in a fraction
of a second), and the 36 components are groups of its training facts with a planted structure: groups that are the
only teachers of some facts, duplicated groups, groups that outvote a wrong group only together, a mislabelled group
that hurts only while the true copies are there, and filler. The value of a set of groups is the model's accuracy on
the probe facts after retraining on the other groups (each retraining a stored unit of the run directory: an
interrupted run resumes without retraining anything twice, and a damaged unit is named and never used).

Steps:
1. **Ground truth**: every group and every pair dropped (1 + n + n (n - 1) / 2 retrainings over the config's
   ``subset``, all groups by default): exact main and pair effects.
2. **Sparse fits** per backend and budget: random masks (each group kept with probability ``keep``), a held-out
   share for R^2; top-10 pair overlap and signs against the ground truth.
3. **Validation retrainings**: the best fit's top pairs (and its top triples, when ``max_order`` is 3), retrained on
   every subset, predicted effect against retrained effect.

Writes results.json, figure.html and report.html in the run directory; the last line of output is one JSON object.
Usage: python experiments/data_interactions.py configs/data_interactions.yaml [--force]
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mechpatch.config import load_config
from mechpatch.interactions.data import (
    data_game,
    data_interactions,
    exhaustive_data_interactions,
    retrained_effects,
)
from mechpatch.interactions.results import compare
from mechpatch.interactions.run import BACKENDS
from mechpatch.report import write_json, write_report
from mechpatch.runs.executor import function_executor, parse_executor
from mechpatch.runs.store import RunStore
from mechpatch.zoo import facts


@dataclass(frozen=True)
class DataInteractionsConfig:
    trainer: str = "mechpatch.zoo.facts:train_facts"
    metric: str = "accuracy"
    seeds: tuple[int, ...] = (0,)
    subset: tuple[str, ...] = ()  # groups of the exhaustive ground truth (empty: all)
    budgets: tuple[int, ...] = (200, 400, 800)
    backends: tuple[str, ...] = ("mechpatch", "proxy")
    keep: float = 0.8
    max_order: int = 2
    holdout: float = 0.2
    top_pairs: int = 10
    seed: int = 0
    threads: int = 1
    executor: Any = "local"
    out_dir: str = "out/data_interactions"

    def __post_init__(self) -> None:
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad or not self.backends:
            raise ValueError(f"backends must be some of {', '.join(BACKENDS)}; got {list(self.backends)}")
        if not self.budgets or any(b < 20 for b in self.budgets):
            raise ValueError(f"budgets must be mask counts >= 20; got {list(self.budgets)}")
        if not 0.0 < self.keep < 1.0 or not 0.0 < self.holdout < 1.0:
            raise ValueError(f"keep and holdout must lie in (0, 1); got {self.keep}, {self.holdout}")
        if self.max_order not in (1, 2, 3) or self.top_pairs < 1 or self.threads < 1:
            raise ValueError("max_order must be 1, 2 or 3, top_pairs and threads >= 1")
        unknown = [g for g in self.subset if g not in facts.group_labels()]
        if unknown:
            raise ValueError(f"subset names unknown groups {unknown}; valid: {', '.join(facts.group_labels())}")
        parse_executor(self.executor)  # a typed ConfigError before any work


def pair_rows(fit, truth) -> list[dict]:
    """The fit's top pairs within the ground truth's groups, with their true effects."""
    sub = fit.restrict(truth.components)
    return [{"pair": i.label, "fit": round(i.effect, 4), "truth": round(truth.effect(*i.labels), 4), "kind": i.kind}
            for i in sub.top(10, order=2)]


def figure(truth, best, validation: list[dict]):
    """Four panels: main effects (retrained) by group, the ground truth's and the best fit's pair matrices, and the
    validation retrainings (predicted against retrained effect)."""
    from plotly.subplots import make_subplots

    kinds = {g.label: g.kind for g in facts.GROUPS}
    colors = {"unique": "#1f77b4", "redundant": "#2ca02c", "synergy": "#d62728", "conflict": "#9467bd",
              "filler": "#7f7f7f"}
    fig = make_subplots(rows=2, cols=2, subplot_titles=(
        "dropping one group (retrained): change in accuracy", "pairs, retrained (ground truth)",
        f"pairs, sparse fit ({best.method}, {best.evaluations} retrainings)",
        "validation: the fit's top terms retrained"), vertical_spacing=0.14, horizontal_spacing=0.12)
    labels = truth.components
    fig.add_bar(x=list(labels), y=[truth.effect(g) for g in labels], marker_color=[colors[kinds[g]] for g in labels],
                showlegend=False, row=1, col=1)
    scale = max(abs(v) for t, v in truth.moebius.items() if len(t) == 2) or 1.0
    for col, (m, row) in enumerate(((truth, 1), (best.restrict(labels), 2))):
        fig.add_heatmap(z=m.pair_matrix().tolist(), x=list(labels), y=list(labels), zmin=-scale, zmax=scale,
                        colorscale="RdBu", showscale=col == 0, row=row, col=2 if row == 1 else 1)
    fig.add_scatter(x=[v["predicted"] for v in validation], y=[v["retrained"] for v in validation], mode="markers+text",
                    text=[v["term"] for v in validation], textposition="top center", showlegend=False, row=2, col=2)
    lim = max([abs(v["predicted"]) for v in validation] + [abs(v["retrained"]) for v in validation] + [0.01])
    fig.add_scatter(x=[-lim, lim], y=[-lim, lim], mode="lines", line={"dash": "dot", "color": "#999"},
                    showlegend=False, row=2, col=2)
    fig.update_xaxes(title_text="predicted effect", row=2, col=2)
    fig.update_yaxes(title_text="retrained effect", row=2, col=2)
    fig.update_layout(title="Data attribution by interactions: the facts toy (colours: unique, redundant, synergy, "
                            "conflict, filler)", height=1100, width=1200)
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config, e.g. configs/data_interactions.yaml")
    parser.add_argument("--force", action="store_true", help="retrain everything (default: resume)")
    args = parser.parse_args(argv)
    cfg = load_config(DataInteractionsConfig, args.config)
    torch.set_num_threads(cfg.threads)
    labels = facts.group_labels()
    data_game(cfg.trainer, labels, seeds=cfg.seeds)  # the trainer and seeds are checked before the store is touched
    store = RunStore(cfg.out_dir, "data-interactions", asdict(cfg))
    if store.check(force=args.force):  # this run finished here, intact: its results stand
        with open(os.path.join(cfg.out_dir, "results.json"), encoding="utf-8") as fh:
            summary = json.load(fh)
        print(f"{cfg.out_dir}: finished already (--force to run again)", flush=True)
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
        return 0
    start = time.perf_counter()
    common = dict(metric=cfg.metric, seeds=cfg.seeds, chunks=store)
    with store.locked():
        store.begin(force=args.force, seed=cfg.seed)
        with function_executor(cfg.executor) as ex:
            store.note_attempt(workers=ex.workers)
            t = time.perf_counter()
            truth = exhaustive_data_interactions(cfg.trainer, labels, subset=cfg.subset or None, executor=ex, **common)
            truth_seconds = time.perf_counter() - t
            print(f"ground truth: {truth.evaluations} retrainings, {truth_seconds:.0f} s", flush=True)
            n = len(truth.components)
            k = min(10, max(1, n * (n - 1) // 4))  # a top-k of every pair of a small subset would match trivially
            runs, fits = [], {}
            for backend in cfg.backends:
                for budget in cfg.budgets:
                    t = time.perf_counter()
                    m = data_interactions(cfg.trainer, labels, n_masks=budget, keep=cfg.keep, max_order=cfg.max_order,
                                          holdout=cfg.holdout, backend=backend, seed=cfg.seed, executor=ex, **common)
                    c = compare(m.restrict(truth.components), truth, k=k)
                    fits[(backend, budget)] = m
                    runs.append({"backend": backend, "masks": budget, "retrainings": m.evaluations,
                                 "r2_heldout": round(m.r2, 4), "k": k, "top10_overlap": c["topk_overlap"],
                                 "top10_sign": c["topk_sign"], "seconds": round(time.perf_counter() - t, 1),
                                 "top_pairs": pair_rows(m, truth)[:5]})
                    print({k: v for k, v in runs[-1].items() if k != "top_pairs"}, flush=True)
            best_run = max(runs, key=lambda r: (r["top10_overlap"], r["r2_heldout"], -r["masks"]))
            best = fits[(best_run["backend"], best_run["masks"])]
            terms = [i.term for i in best.top(cfg.top_pairs, order=2)]
            if cfg.max_order == 3:
                terms += [i.term for i in best.top(3, order=3)]
            t = time.perf_counter()
            validation, validation_retrainings = [], 0
            if terms:  # a fit too small to find any pair has nothing to validate
                check = retrained_effects(cfg.trainer, labels, terms, executor=ex, **common)
                validation = [{"term": " x ".join(labels[i] for i in term),
                               "predicted": round(best.moebius.get(term, 0.0), 4),
                               "retrained": round(check.effect(*term), 4)} for term in terms]
                validation_retrainings = check.evaluations
            validation_seconds = time.perf_counter() - t
        agree = sum(1 for v in validation if v["predicted"] * v["retrained"] > 0)
        fig = figure(truth, best, validation)
        store.write_figure("groups", fig)
        n_probe = len(facts.PROBE_KEYS)
        summary = {
            "experiment": "data_interactions", "groups": len(labels), "probe_facts": n_probe,
            "full_data_accuracy": round(truth.base_value, 4),
            "truth": {"retrainings": truth.evaluations, "seconds": round(truth_seconds, 1),
                      "top_pairs": [{"pair": i.label, "effect": round(i.effect, 4), "kind": i.kind}
                                    for i in truth.top(10, order=2)],
                      "mains": {g: round(truth.effect(g), 4) for g in truth.components}},
            "runs": runs, "best": {"backend": best_run["backend"], "masks": best_run["masks"]},
            "validation": {"terms": validation, "retrainings": validation_retrainings,
                           "seconds": round(validation_seconds, 1),
                           "sign_agreement": round(agree / len(validation), 4) if validation else None,
                           "max_abs_error": round(max(abs(v["predicted"] - v["retrained"]) for v in validation), 4)
                           if validation else None},
            "distinct_retrainings": sum(len(os.listdir(d.path)) for d in os.scandir(os.path.join(cfg.out_dir, "chunks"))
                                        if d.name.startswith("retrain")),
            "seconds": round(time.perf_counter() - start, 1), "executor": cfg.executor, "threads": cfg.threads,
            "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "config": asdict(cfg),
        }
        write_json(store.path("results.json"), summary)
        write_report(store.path("report.html"), "Data attribution by interactions (facts toy)",
                     {k: v for k, v in summary.items() if k in ("groups", "probe_facts", "full_data_accuracy",
                                                                "best", "seconds", "distinct_retrainings")},
                     {"groups and pairs": fig}, notes=__doc__.split("\n\n")[1])
        store.finish(seconds=summary["seconds"])
    print(json.dumps({k: v for k, v in summary.items() if k not in ("config",)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
