"""The IOI paper's circuit-finding method on the bundled real model (SmolLM2-135M-Instruct).

1. IOI prompts (mechpatch.tasks.ioi) and their p_ABC corruptions: the model's logit difference and accuracy.
2. Direct effect of every head at END: path patching head -> logits (noising: the head's output from
   p_ABC, everything else clean). The heads with the largest effects are classed by sign and by where END
   attends: negative and attending IO = name-mover-like, positive and attending IO = negative-name-mover-like,
   negative and attending S = pushes S down.
3. Path patching from every earlier head into the top name-mover-like heads' queries at END: heads whose
   effect through those queries is most negative are S-inhibition-like (their attention END -> S2 reported).
4. Induction and previous-token head scores on repeated random tokens.

Writes results.json, figures and report.html (atomically) under the config's out_dir.
Usage: python experiments/ioi_smollm2.py configs/ioi_smollm2.yaml
"""

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch

from mechpatch import zoo
from mechpatch.cache import cache_activations
from mechpatch.config import load_config
from mechpatch.patching.paths import path_patch
from mechpatch.plotting import heatmap
from mechpatch.report import write_json, write_report
from mechpatch.sites import Head, Pattern, Query, heads
from mechpatch.tasks import TaskData, head_scores, make_induction, make_ioi


@dataclass(frozen=True)
class IOIConfig:
    model: str = "smollm2-135m"
    n_prompts: int = 60
    seed: int = 0
    templates: Optional[tuple[int, ...]] = None  # indices of the 15 IOI templates to draw from (default: all)
    name_movers: int = 3
    top_k: int = 8
    induction_prompts: int = 16
    induction_block: int = 20
    batch_size: int = 32
    out_dir: str = "out/ioi_smollm2"

    def __post_init__(self) -> None:
        if self.model not in zoo.MODELS:
            raise ValueError(f"model {self.model!r} is not bundled; valid: {', '.join(sorted(zoo.MODELS))}")
        for key in ("n_prompts", "name_movers", "top_k", "induction_prompts", "induction_block", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1; got {getattr(self, key)}")


def direct_effects(model, task: TaskData, batch_size: int) -> torch.Tensor:
    """Per head and prompt: change in logit difference when the head's p_ABC output reaches the logits directly."""
    senders = heads(model.spec)
    out = []
    for b in task:
        run = path_patch(model, b.clean, senders, receivers="logits", metric=task.metric, source=b.corrupted,
                         answers=b.answers, batch_size=batch_size, progress=True)
        out.append(run.effect)
    return torch.cat(out, dim=1)  # [head, prompt]


def query_path_effects(model, task: TaskData, receivers: list[Head], batch_size: int):
    """Per earlier head and prompt: change in logit difference through the receivers' queries at END."""
    last = max(r.layer for r in receivers)
    senders = [h for h in heads(model.spec) if h.layer < last]
    out = []
    for b in task:
        end = b.position("END")
        recs = [Query(r.layer, r.head, pos=end) for r in receivers]
        run = path_patch(model, b.clean, senders, receivers=recs, metric=task.metric, source=b.corrupted,
                         answers=b.answers, batch_size=batch_size, progress=True)
        out.append(run.effect)
    return senders, torch.cat(out, dim=1)


def attention_from_end(model, task: TaskData, chosen: list[Head]) -> dict[str, dict[str, float]]:
    """Mean attention of each chosen head from END to the IO, S1 and S2 tokens (clean prompts)."""
    sums: dict[str, dict[str, float]] = {h.label: {"IO": 0.0, "S1": 0.0, "S2": 0.0} for h in chosen}
    for b in task:
        cache = cache_activations(model, b.clean, [Pattern(h.layer, h.head) for h in chosen])
        rows = torch.arange(b.n_prompts)
        end = b.positions["END"]
        for h in chosen:
            pat = cache[Pattern(h.layer, h.head)].float()  # batch query key
            for role in ("IO", "S1", "S2"):
                sums[h.label][role] += float(pat[rows, end, b.positions[role]].sum())
    return {k: {r: round(v / task.n_prompts, 4) for r, v in d.items()} for k, d in sums.items()}


#: head classes from the sign of the direct effect (noising: negative = the head carries the IOI answer)
#: and from where END mostly attends: the IO token, or a subject token (S1/S2), or neither (< 0.1).
CLASSES = ("name_mover_like", "pushes_S_down", "unclear_negative", "negative_name_mover_like", "other_positive")


def classify(effect: float, attention: dict[str, float]) -> str:
    to_s = max(attention["S1"], attention["S2"])
    to_io = attention["IO"] > to_s and attention["IO"] >= 0.1
    if effect < 0:
        return "name_mover_like" if to_io else "pushes_S_down" if to_s >= 0.1 else "unclear_negative"
    return "negative_name_mover_like" if to_io else "other_positive"


def ranked(values: torch.Tensor, labels: list[str], k: int, descending: bool) -> list[dict[str, Any]]:
    order = torch.argsort(values, descending=descending)[:k]
    return [{"head": labels[int(i)], "effect": round(float(values[i]), 4)} for i in order]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config, e.g. configs/ioi_smollm2.yaml")
    cfg = load_config(IOIConfig, parser.parse_args(argv).config)
    os.makedirs(cfg.out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    start = time.time()
    model = zoo.load(cfg.model, device="auto")
    spec = model.spec
    print(model, flush=True)

    task = make_ioi(model, n=cfg.n_prompts, seed=cfg.seed, templates=cfg.templates)
    scores = task.evaluate(model)
    print(task, scores.summary(), flush=True)

    t = time.time()
    direct = direct_effects(model, task, cfg.batch_size)  # [head, prompt]
    direct_mean = direct.mean(1)
    all_heads = heads(spec)
    labels = [h.label for h in all_heads]
    direct_seconds = time.time() - t
    # the heads with the largest direct effects, classed as in the IOI paper by sign and by what END attends to
    strongest = torch.argsort(direct_mean.abs(), descending=True)[: 3 * cfg.top_k]
    candidates = [all_heads[int(i)] for i in strongest]
    attention = attention_from_end(model, task, candidates)
    classes: dict[str, list[dict[str, Any]]] = {k: [] for k in CLASSES}
    for h in candidates:
        att = attention[h.label]
        effect = float(direct_mean[labels.index(h.label)])
        entry = {"head": h.label, "effect": round(effect, 4), "attention": att}
        classes[classify(effect, att)].append(entry)
    for k, v in classes.items():
        classes[k] = v[: cfg.top_k]
        print(f"{k}:", [(x["head"], x["effect"]) for x in classes[k]], flush=True)
    chosen = classes["name_mover_like"] or classes["pushes_S_down"]
    receivers = [all_heads[labels.index(x["head"])] for x in chosen[: cfg.name_movers]]
    t = time.time()
    senders, via_q = query_path_effects(model, task, receivers, cfg.batch_size)
    via_q_mean = via_q.mean(1)
    s_inhibition = ranked(via_q_mean, [h.label for h in senders], cfg.top_k, descending=False)
    path_seconds = time.time() - t
    s_att = attention_from_end(model, task, [next(h for h in senders if h.label == x["head"]) for x in s_inhibition])
    for x in s_inhibition:
        x["attention"] = s_att[x["head"]]
    print("S-inhibition-like (most negative effect via name-mover queries):",
          [(x["head"], x["effect"], x["attention"]["S2"]) for x in s_inhibition], flush=True)

    induction_task = make_induction(model, n=cfg.induction_prompts, block=cfg.induction_block, seed=cfg.seed)
    prev, ind = head_scores(model, induction_task)
    induction_scores = induction_task.evaluate(model)

    grid = lambda v: v.reshape(spec.n_layers, spec.n_heads)  # noqa: E731
    via_q_grid = torch.full((spec.n_layers, spec.n_heads), float("nan"))
    for h, v in zip(senders, via_q_mean):
        via_q_grid[h.layer, h.head] = v
    hx, ly = [str(i) for i in range(spec.n_heads)], [str(i) for i in range(spec.n_layers)]
    figs = {
        "direct effect on logit(IO) - logit(S) per head (path patching head -> logits, p_ABC)": heatmap(
            grid(direct_mean), hx, ly, x_title="head", y_title="layer", colorbar_title="change in logit diff"),
        f"effect through the queries of {', '.join(r.label for r in receivers)} at END": heatmap(
            via_q_grid, hx, ly, x_title="head", y_title="layer", colorbar_title="change in logit diff"),
        "induction score per head (repeated random tokens)": heatmap(
            ind, hx, ly, x_title="head", y_title="layer", zmid=None, colorbar_title="induction score"),
    }
    for i, fig in enumerate(figs.values()):
        fig.write_html(os.path.join(cfg.out_dir, f"figure{i + 1}.html"), include_plotlyjs=True)

    order = torch.argsort(ind.flatten(), descending=True)[: cfg.top_k]
    porder = torch.argsort(prev.flatten(), descending=True)[: cfg.top_k]
    weights_note = getattr(__import__("mechpatch.zoo.smollm2", fromlist=["x"]), "WEIGHTS_NOTE", "")
    summary = {
        "model": repr(model),
        "weights": weights_note if cfg.model.startswith("smollm2") else zoo.MODELS[cfg.model].summary,
        "task": repr(task),
        "ioi": scores.summary(),
        "direct_effect_classes": classes,
        "name_mover_receivers": [r.label for r in receivers],
        "s_inhibition_like": s_inhibition,
        "induction_heads": [{"head": labels[int(i)], "score": round(float(ind.flatten()[i]), 4)} for i in order],
        "previous_token_heads": [{"head": labels[int(i)], "score": round(float(prev.flatten()[i]), 4)} for i in porder],
        "induction_task": induction_scores.summary(),
        "seconds": {"direct_effects": round(direct_seconds, 1), "query_path_patching": round(path_seconds, 1),
                    "total": round(time.time() - start, 1)},
        "config": asdict(cfg),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "device": str(model.device),
    }
    headline = {
        "model": summary["model"], "weights": summary["weights"], "prompts": summary["task"],
        "clean logit diff (IO - S)": f"{scores.summary()['clean_logit_diff']:.3f} ± {scores.summary()['clean_logit_diff_sem']:.3f}",
        "accuracy (IO above S)": f"{scores.accuracy:.3f}",
        **{k.replace("_", " "): ", ".join(f"{x['head']} ({x['effect']:+.2f})" for x in v[:5]) or "none"
           for k, v in classes.items()},
        "S-inhibition-like heads": ", ".join(f"{x['head']} ({x['effect']:+.2f})" for x in s_inhibition[:5]),
        "induction heads": ", ".join(f"{x['head']} ({x['score']:.2f})" for x in summary["induction_heads"][:5]),
        "seconds": summary["seconds"]["total"],
    }
    write_json(os.path.join(cfg.out_dir, "results.json"), summary)
    write_report(os.path.join(cfg.out_dir, "report.html"), "IOI on SmolLM2-135M-Instruct (mechpatch)", headline, figs,
                 notes="Effects are changes in logit(IO) - logit(S) at END when a head's p_ABC output is sent "
                       "along the named path only (noising); negative = the head carries the IOI signal.")
    print(json_line(summary))
    return 0


def json_line(summary: dict) -> str:
    import json

    return json.dumps({k: summary[k] for k in ("ioi", "name_mover_receivers", "seconds")})


if __name__ == "__main__":
    sys.exit(main())
