"""The main job (`make demo`): the bundled default model, an IOI-style task, patching sweeps, a discovered circuit.

Reads a YAML config (configs/demo.yaml) into frozen dataclasses and writes a run directory (``out_dir``, layout
of :mod:`mechpatch.runs.store`): ``report.html`` (self-contained: plotly.js embedded) with the sweep heatmaps,
the circuit EAP finds and the headline numbers; ``manifest.json`` (config and its hash, versions, model and
weights hash, device, times); the sweeps as Parquet tables and safetensors; ``circuit.json`` and
``results/edges.parquet``; one HTML file per figure; ``summary.json``. A finished demo is not recomputed
(``--force`` recomputes); ``mechpatch report out/demo`` redraws the report from the files.
"""

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from mechpatch import make_pair, zoo
from mechpatch.config import load_config
from mechpatch.patching import SWEEP_KINDS, sweep
from mechpatch.report import write_json
from mechpatch.runs.discover import curve_table, discovery_sections, edge_table
from mechpatch.runs.report import build_report, section, write_report_spec
from mechpatch.runs.store import RunStore
from mechpatch.runs.sweep import write_result

DISCOVERY_METHODS = ("eap", "eap-ig", "none")  # ACDC visits every edge: far too slow on a 30-layer model on CPU


@dataclass(frozen=True)
class DemoConfig:
    model: str = "smollm2-135m"
    template: str = "When {A} and {B} went to the store, {S} gave a drink to"
    names: tuple[str, ...] = field(default=("Mary", "John", "Paul", "Anna", "Tom", "Lucy"))
    n_prompts: int = 8
    kinds: tuple[str, ...] = ("resid_pre", "head")
    discovery: str = "eap"  # eap | eap-ig | none
    top_n: int = 200  # edges the discovered circuit keeps
    faithfulness: bool = False  # the MIB faithfulness curve over circuit sizes (about 80 s more on CPU)
    seed: int = 0
    out_dir: str = "out/demo"

    def __post_init__(self) -> None:
        if self.model not in zoo.MODELS:
            raise ValueError(f"model {self.model!r} is not bundled; valid: {', '.join(sorted(zoo.MODELS))}")
        if not all(k in self.template for k in ("{A}", "{B}", "{S}")):
            raise ValueError("template needs the placeholders {A}, {B} (the two names) and {S} (the subject)")
        if len(self.names) < 3 or self.n_prompts < 1:
            raise ValueError("need at least 3 names and 1 prompt")
        for kind in self.kinds:
            if kind not in SWEEP_KINDS:
                raise ValueError(f"kinds {kind!r} is not valid; valid: {', '.join(sorted(SWEEP_KINDS))}")
        if self.discovery not in DISCOVERY_METHODS:
            raise ValueError(f"discovery {self.discovery!r} is not valid; valid: {', '.join(DISCOVERY_METHODS)}")
        if self.top_n < 1:
            raise ValueError(f"top_n must be a positive integer; got {self.top_n}")


def ioi_prompts(model, cfg: DemoConfig):
    """Clean prompts (S = B, the answer is A) and ABC-corrupted ones (S replaced by a third name)."""
    names = [n for n in cfg.names if len(model.tokenizer.encode(" " + n, add_special_tokens=False)) == 1]
    if len(names) < 3:
        raise ValueError(f"fewer than 3 of the names are single tokens for this tokenizer: {names}")
    rng = random.Random(cfg.seed)
    clean, corrupted, answers = [], [], []
    for _ in range(cfg.n_prompts):
        a, b, c = rng.sample(names, 3)
        clean.append(cfg.template.format(A=a, B=b, S=b))
        corrupted.append(cfg.template.format(A=a, B=b, S=c))
        answers.append([" " + a, " " + b])
    return clean, corrupted, answers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    parser.add_argument("--force", action="store_true", help="recompute a finished demo")
    args = parser.parse_args(argv)
    cfg = load_config(DemoConfig, args.config)
    store = RunStore(cfg.out_dir, "demo", cfg)
    if store.check(force=args.force):
        print(f"{cfg.out_dir}: already finished (config {store.config_hash[:12]}); see "
              f"{os.path.join(cfg.out_dir, 'report.html')} (--force recomputes)")
        return 0
    start = time.time()
    torch.manual_seed(cfg.seed)

    model = zoo.load(cfg.model, device="auto")
    store.begin(model, cfg.model, cfg.seed, force=args.force)
    print(model, flush=True)
    clean, corrupted, answers = ioi_prompts(model, cfg)
    pair = make_pair(model, clean, corrupted, answers=answers)
    print(f"{pair.n_prompts} prompts x {pair.seq_len} tokens, e.g. {clean[0]!r} / {corrupted[0]!r}", flush=True)

    t = time.time()
    results = {}
    for kind in cfg.kinds:
        results[kind] = sweep(model, pair, kind, metric="logit_diff", progress=True)
        write_result(store, kind, results[kind])
        print(results[kind], flush=True)
    sweep_seconds = time.time() - t
    first = next(iter(results.values()))
    headline = {
        "model": repr(model),
        "weights": getattr(__import__(f"mechpatch.zoo.{'smollm2' if cfg.model.startswith('smollm2') else 'induction'}",
                                      fromlist=["x"]), "WEIGHTS_NOTE", "") or zoo.MODELS[cfg.model].summary,
        "weights sha256": store.manifest["model"]["weights_sha256"],
        "task": f"IOI-style, ABC corruption; e.g. clean {clean[0]!r}, corrupted {corrupted[0]!r}",
        "prompts": f"{pair.n_prompts} x {pair.seq_len} tokens",
        "clean logit diff (IO - S)":
            f"{float(first.clean.mean()):.3f} ± {float(first.clean.std() / pair.n_prompts ** 0.5):.3f}",
        "corrupted logit diff": f"{float(first.corrupted.mean()):.3f}",
        "IOI accuracy (clean, IO above S)": f"{float((first.clean > 0).float().mean()):.2f}",
    }
    if "head" in results:
        heads = results["head"]
        norm = heads.normalized().flatten()
        top = torch.argsort(norm.abs(), descending=True)[:8]
        n_heads = model.spec.n_heads
        headline["largest head effects (normalised, denoising)"] = "; ".join(
            f"L{int(i) // n_heads}H{int(i) % n_heads}: {float(norm[i]):+.3f}" for i in top)
    headline.update({
        "patches run": sum(int(r.noop.numel()) for r in results.values()),
        "no-op patches": sum(int(r.noop.sum()) for r in results.values()),
        "sweep seconds": round(sweep_seconds, 1),
        "engine method": first.meta["method"],
    })
    sections = [section("patch", kind, f"tensors/{kind}.safetensors", title)
                for kind, title in zip(cfg.kinds, _titles(cfg.kinds))]
    if "head" in results:
        headline.update(_attention_beside_effect(model, pair, results["head"], store))
        sections.append(section("attention_effect", "attention_effect", "results/attention_effect.parquet",
                                "attention END -> IO beside each head's effect (attention is not use)"))

    if cfg.discovery != "none":
        from mechpatch.circuit import discover, faithfulness_curve

        res = discover(cfg.discovery, model, pair.clean, metric="logit_diff", source=pair.corrupted,
                       answers=pair.answers, top_n=cfg.top_n)
        print(res, flush=True)
        graph = res.to_graph().with_meta(task="IOI-style (demo prompts)", prompts=pair.n_prompts, config=asdict(cfg))
        graph.to_json(os.path.join(cfg.out_dir, "circuit.json"))
        store.write_table("edges", edge_table(graph))
        full, kept = res.full_metric, res.final_metric
        base = float(first.corrupted.mean())
        headline.update({
            "circuit": f"{cfg.discovery.upper()}: the {len(res.edges)} highest-scoring of {res.layout.n_edges} edges",
            "circuit logit diff (every other edge ablated, exact)":
                f"{kept:.3f} (full model {full:.3f}, corrupted {base:.3f}: "
                f"{(kept - base) / (full - base):.0%} recovered)",
            "circuit's strongest edges": ", ".join(e.label for e in sorted(
                res.edges, key=lambda e: -abs(res.scores[e]))[:10]),
            "discovery seconds": round(res.seconds, 1),
        })
        discovered = discovery_sections()[:1]
        if cfg.faithfulness:
            curve = faithfulness_curve(model, pair.clean, res.scores, metric="logit_diff", source=pair.corrupted,
                                       answers=pair.answers)
            store.write_table("faithfulness", curve_table(curve))
            headline["faithfulness CPR / CMD"] = f"{curve.cpr:.3f} / {curve.cmd:.3f}"
            discovered = discovery_sections()
        sections += discovered

    headline["config hash"] = store.config_hash
    write_report_spec(cfg.out_dir, "mechpatch demo", headline, sections)
    written = build_report(cfg.out_dir)
    summary = {**headline, "config": asdict(cfg), **written, "seconds": round(time.time() - start, 1)}
    write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
    store.finish(**written, summary="summary.json")
    print(json.dumps(summary))
    return 0


def _attention_beside_effect(model, pair, heads, store) -> dict:
    """Each head's attention from the last token to the indirect object (IO, the answer's name) beside its patching
    effect; the table is a result file of the run, and the heads where the two disagree go in the headline."""
    from mechpatch.attention import attention_patterns, attention_to, attention_vs_effect

    patterns = attention_patterns(model, pair.clean)
    io_pos = (pair.clean == pair.answers[:, :1].to(pair.clean.device)).int().argmax(1).cpu()
    table = attention_vs_effect(attention_to(patterns, -1, io_pos), heads.normalized())
    store.write_table("attention_effect", table)
    odd = table[table["disagreement"] == "effect without attention"]
    return {"heads with a large effect and little attention to IO": "; ".join(
        f"{r.head} (effect {r.effect:+.3f}, attention {r.attention:.2f})" for r in odd.itertuples()) or "none"}


def _titles(kinds):
    names = {"resid_pre": "residual stream (resid_pre) by layer and position",
             "head": "attention heads (all positions)"}
    return [names.get(k, k) for k in kinds]


if __name__ == "__main__":
    sys.exit(main())
