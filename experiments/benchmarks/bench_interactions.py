"""Interaction recovery: sparse fit from random ablations vs exhaustive pairwise ablation, same model, same run.

Settings (mean ablation, noising, the induction task's log-probability; 1 CPU thread):

- ``heads``: the 16 heads of redundant-induction-2l (8 backup induction heads), 16 prompts. Exhaustive pairs:
  1 + 16 + 120 masks. Sparse: 800 Bernoulli masks at keep 0.8 (about 590 distinct).
- ``head-positions``: the same 16 heads at each of the 10 positions of the repeated block, 160 components,
  8 prompts. Exhaustive pairs: 1 + 160 + 12,720 masks. Sparse: 2,500 masks at keep 0.9.
- ``tokens-smollm2``: token interactions on SmolLM2 (the zoo's real model; filler token " the"): two sentiment
  prompts with a negation ("Review: the movie was not bad. Sentiment:", logit(" positive") - logit(" negative")) and
  an IOI prompt (logit(IO) - logit(S)), every token but BOS a component (11 and 13). Exact: all 2^n masks and
  their Moebius transform. Sparse: 2^n / 4 masks at keep 0.5, pairs. Against the exact transform: top-10 pair
  overlap and signs, R^2 on held-out masks and on all 2^n. Shapley interaction indices (SII) of the sparse model
  beside shapiq's KernelSHAPIQ and SVARMIQ at the same budget, all queried from the exact table (no extra forwards),
  each against shapiq's ExactComputer.
- ``synthetic``: 144 components with 6 planted AND pairs, 6 OR pairs and 3 three-way ANDs plus noise; 2,500
  masks at keep 0.5, order 3 (no model: recovery and fit time only).

Reported per setting: evaluations (distinct masks run), forwards (engine forward passes), wall seconds (mask
evaluation and fit), held-out R^2, and against the exhaustive truth top-k overlap, sign agreement, Spearman rank
correlation over all pairs and over the union of both top k.
Usage: python experiments/benchmarks/bench_interactions.py [--quick] [--settings heads,head-positions,synthetic,tokens-smollm2]
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


DEFAULT_SETTINGS = "heads,head-positions,synthetic"
TOKEN_PROMPTS = (
    ("sentiment-not-bad", "Review: the movie was not bad. Sentiment:", (" positive", " negative")),
    ("sentiment-not-good", "Review: the movie was not good. Sentiment:", (" positive", " negative")),
    ("ioi", "When Mary and John went to the store, John gave it to", (" Mary", " John")),
)


def _sii_agreement(estimate: dict, truth: dict, k: int = 10) -> dict:
    """Top-k overlap (by |value|) and sign agreement of pair indices, against truth's top k."""
    pairs = sorted(truth)
    top_t = sorted(pairs, key=lambda t: -abs(truth[t]))[:k]
    top_e = set(sorted(pairs, key=lambda t: -abs(estimate.get(t, 0.0)))[:k])
    return {"top10_overlap": len(set(top_t) & top_e) / k,
            "top10_sign": sum(1 for t in top_t if estimate.get(t, 0.0) * truth[t] > 0) / k}


def bench_tokens(quick: bool) -> dict:
    import itertools

    import numpy as np

    from mechpatch import zoo
    from mechpatch.interactions.tokens import token_interactions
    from mechpatch.patching.metrics import LogitDiff

    shapiq = None
    try:
        import shapiq
    except ImportError:
        print("shapiq is not installed (pip install 'mechpatch[spex]'): no shapiq comparison", flush=True)
    model = zoo.load("smollm2-135m", device="cpu")
    tok = model.tokenizer
    rows = []
    for name, text, (good, bad) in TOKEN_PROMPTS[:1] if quick else TOKEN_PROMPTS:
        answers = torch.tensor([[tok.encode(good, add_special_tokens=False)[0], tok.encode(bad, add_special_tokens=False)[0]]])
        tokens = model.to_tokens(text)
        t = time.perf_counter()
        exact = token_interactions(model, tokens, metric=LogitDiff(), answers=answers, filler=" the", exact=True,
                                   progress=False)
        t_exact = time.perf_counter() - t
        n = exact.n_components
        budget = 2 ** n // 4
        t = time.perf_counter()
        sparse = token_interactions(model, tokens, metric=LogitDiff(), answers=answers, filler=" the",
                                    n_masks=budget, keep=0.5, seed=0, progress=False)
        t_sparse = time.perf_counter() - t
        every = torch.tensor(list(itertools.product([False, True], repeat=n)))
        values = exact.predict(every)
        c = compare(sparse, exact, k=10, order=2)
        top = [{"pair": i.label, "effect": round(i.effect, 4), "kind": i.kind} for i in exact.top(8, order=2)]
        row = {"prompt": name, "text": text, "tokens": n, "value": round(exact.base_value, 4),
               "exact_masks": exact.evaluations, "exact_seconds": round(t_exact, 1), "sparse_masks": budget,
               "sparse_evaluations": sparse.evaluations, "sparse_seconds": round(t_sparse, 1),
               "top10": {"topk_overlap": c["topk_overlap"], "topk_sign": c["topk_sign"],
                         "spearman_top": round(c["spearman_top"], 4)},
               "r2_heldout": round(sparse.r2, 4), "r2_all_masks": round(sparse.r2_on(every, values), 4),
               "top_pairs_exact": top, "mains_exact": {lab: round(exact.moebius[(i,)], 4)
                                                       for i, lab in enumerate(exact.components)}}
        sii_exact = exact.shapley(order=2)
        row["sii"] = {"sparse": _sii_agreement(sparse.shapley(order=2), sii_exact)}
        if shapiq is not None:
            def game(coalitions: np.ndarray) -> np.ndarray:  # shapiq: True = token present (kept)
                return exact.predict(torch.from_numpy(~coalitions.astype(bool))).numpy()

            truth = shapiq.ExactComputer(n_players=n, game=game)(index="SII", order=2)
            truth_pairs = {p: float(truth[p]) for p in itertools.combinations(range(n), 2)}
            ours = {p: exact.polarity * v for p, v in sii_exact.items()}
            row["sii"]["mechpatch_exact_vs_shapiq_exact_max_abs"] = max(abs(ours[p] - truth_pairs[p])
                                                                        for p in truth_pairs)
            row["sii"]["sparse"] = _sii_agreement({p: exact.polarity * v for p, v in
                                                   sparse.shapley(order=2).items()}, truth_pairs)
            for cls in (shapiq.KernelSHAPIQ, shapiq.SVARMIQ):
                t = time.perf_counter()
                approx = cls(n=n, max_order=2, index="SII", random_state=0).approximate(budget=budget, game=game)
                est = {p: float(approx[p]) for p in truth_pairs}
                row["sii"][cls.__name__] = dict(_sii_agreement(est, truth_pairs),
                                                seconds=round(time.perf_counter() - t, 2))
        print(json.dumps(row), flush=True)
        rows.append(row)
    worst = lambda key: min(r["top10"][key] for r in rows)  # noqa: E731
    return {"setting": "tokens-smollm2", "prompts": len(rows), "tokens": [r["tokens"] for r in rows],
            "exact_masks": sum(r["exact_masks"] for r in rows), "sparse_masks": sum(r["sparse_masks"] for r in rows),
            "top10": {"topk_overlap": worst("topk_overlap"), "topk_sign": worst("topk_sign")},
            "r2_heldout": min(r["r2_heldout"] for r in rows), "runs": rows}


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
    parser.add_argument("--settings", default=DEFAULT_SETTINGS)
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
        elif name == "tokens-smollm2":
            results["settings"].append(bench_tokens(args.quick))
        else:
            raise SystemExit(f"unknown setting {name!r}; valid: heads, head-positions, synthetic, tokens-smollm2")
    which = "" if args.settings == DEFAULT_SETTINGS else "_" + args.settings.replace(",", "+")
    out = os.path.join(os.path.dirname(__file__), "results",
                       f"bench_interactions{which}{'_quick' if args.quick else ''}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_json(out, results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
