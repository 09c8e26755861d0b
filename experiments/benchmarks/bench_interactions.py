"""Interaction recovery: sparse fit from random ablations vs exhaustive pairwise ablation, same model, same run.

Settings (mean ablation, noising, the induction task's log-probability; 1 CPU thread):

- ``heads``: the 16 heads of redundant-induction-2l (8 backup induction heads), 16 prompts. Exhaustive pairs:
  1 + 16 + 120 masks. Sparse: 800 Bernoulli masks at keep 0.8 (about 590 distinct).
- ``head-positions``: the same 16 heads at each of the 10 positions of the repeated block, 160 components,
  8 prompts. Exhaustive pairs: 1 + 160 + 12,720 masks. Sparse: 2,500 masks at keep 0.9.
- ``synthetic``: 144 components with 6 planted AND pairs, 6 OR pairs and 3 three-way ANDs plus noise; 2,500
  masks at keep 0.5, order 3 (no model: recovery and fit time only).

Reported per setting: evaluations (distinct masks run), forwards (engine forward passes), wall seconds (mask
evaluation and fit), held-out R^2, and against the exhaustive truth top-k overlap, sign agreement, Spearman rank
correlation over all pairs and over the union of both top k.
Usage: python experiments/benchmarks/bench_interactions.py [--quick] [--settings heads,head-positions,synthetic]
Last line of output: one JSON object with every figure (also saved in experiments/benchmarks/results/).
"""

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from mechpatch.interactions import compare, exhaustive_interactions, find_function_interactions  # noqa: E402
from mechpatch.interactions import find_interactions  # noqa: E402
from mechpatch.interactions.synthetic import planted  # noqa: E402
from mechpatch.patching import Mean  # noqa: E402
from mechpatch.report import write_json  # noqa: E402
from mechpatch.sites import heads  # noqa: E402
from mechpatch.tasks import make_induction  # noqa: E402
from mechpatch.zoo.redundant_induction import load_redundant_induction  # noqa: E402


def bench_model(name, model, base, metric, comps, n_masks, keep, ks=(5, 10, 20)):
    t = time.perf_counter()
    ex = exhaustive_interactions(model, base, comps, metric=metric, intervention=Mean())
    t_ex = time.perf_counter() - t
    t = time.perf_counter()
    sp = find_interactions(model, base, comps, metric=metric, n_masks=n_masks, keep=keep, intervention=Mean(), seed=0)
    t_sp = time.perf_counter() - t
    row = {
        "setting": name, "components": len(comps), "prompts": int(base.shape[0]),
        "exhaustive_evaluations": ex.evaluations, "exhaustive_forwards": ex.forwards,
        "exhaustive_seconds": round(t_ex, 2),
        "sparse_masks": n_masks, "keep": keep, "sparse_evaluations": sp.evaluations, "sparse_forwards": sp.forwards,
        "sparse_seconds": round(t_sp, 2), "sparse_r2_heldout": round(sp.r2, 4), "sparse_terms": len(sp.moebius),
        "evaluation_ratio": round(ex.evaluations / sp.evaluations, 2), "speedup": round(t_ex / t_sp, 2),
        "top_exhaustive": [[i.label, i.kind, round(i.effect, 4)] for i in ex.top(5)],
        "top_sparse": [[i.label, i.kind, round(i.effect, 4)] for i in sp.top(5)],
    }
    for k in ks:
        c = compare(sp, ex, k=k)
        row[f"top{k}"] = {key: round(v, 3) for key, v in c.items() if key != "k"}
    print(json.dumps(row), flush=True)
    return row


def bench_synthetic(n_masks):
    fn = planted(0)
    ands, ors, threes = fn.ands, fn.ors, fn.threes
    t = time.perf_counter()
    m = find_function_interactions(fn, 144, n_masks=n_masks, keep=0.5, max_order=3, seed=0)
    seconds = time.perf_counter() - t
    pairs = {i.term: i.kind for i in m.interactions(order=2) if abs(i.effect) > 0.2}
    triples = {i.term: i.kind for i in m.interactions(order=3) if abs(i.effect) > 0.2}
    want = {**{p: "synergy" for p in ands}, **{p: "redundancy" for p in ors}}
    sub = fn.pairs_of_threes()
    row = {
        "setting": "synthetic", "components": 144, "evaluations": m.evaluations, "seconds": round(seconds, 2),
        "r2_heldout": round(m.r2, 4), "planted_pairs": len(want),
        "planted_pairs_found_right_sign": sum(pairs.get(p) == k for p, k in want.items()),
        "planted_triples": len(threes), "planted_triples_found": sum(t in triples for t in threes),
        "spurious_pairs": len([p for p in pairs if p not in want and p not in sub]),
        "pairs_screened": m.info["pairs_screened"], "pair_candidates": m.info["pair_candidates"],
        "triple_candidates": m.info.get("triple_candidates"),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer prompts and positions")
    parser.add_argument("--settings", default="heads,head-positions,synthetic")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"benchmark": "bench_interactions", "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
               "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "settings": []}
    model = load_redundant_induction(device="cpu")
    for name in args.settings.split(","):
        if name == "heads":
            task = make_induction(model, n=8 if args.quick else 16, block=10, seed=0)
            (b,) = task.batches
            results["settings"].append(bench_model(name, model, b.clean, task.metric, heads(model.spec), 800, 0.8))
        elif name == "head-positions":
            task = make_induction(model, n=4 if args.quick else 8, block=10, seed=0)
            (b,) = task.batches
            positions = range(11, 15) if args.quick else range(11, 21)
            comps = [h.at(p) for h in heads(model.spec) for p in positions]
            results["settings"].append(bench_model(name, model, b.clean, task.metric, comps,
                                                   1200 if args.quick else 2500, 0.9, ks=(5, 10, 20, 50)))
        elif name == "synthetic":
            results["settings"].append(bench_synthetic(2500))
        else:
            raise SystemExit(f"unknown setting {name!r}; valid: heads, head-positions, synthetic")
    out = os.path.join(os.path.dirname(__file__), "results",
                       f"bench_interactions{'_quick' if args.quick else ''}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_json(out, results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
