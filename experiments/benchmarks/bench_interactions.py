"""Interaction recovery: sparse fit from random ablations vs exhaustive pairwise ablation, same model, same run.

Settings (mean ablation, noising, the induction task's log-probability; 1 CPU thread):

- ``heads``: the 16 heads of redundant-induction-2l (8 backup induction heads), 16 prompts. Exhaustive pairs:
  1 + 16 + 120 masks. Sparse: 800 Bernoulli masks at keep 0.8 (about 590 distinct).
- ``head-positions``: the same 16 heads at each of the 10 positions of the repeated block, 160 components,
  8 prompts. Exhaustive pairs: 1 + 160 + 12,720 masks. Sparse: 2,500 masks at keep 0.9.
- ``tokens-smollm2``: token interactions on SmolLM2 (the zoo's real model; filler token " the"): two sentiment
  prompts with a negation ("Review: the movie was not bad. Sentiment:", logit(" positive") - logit(" negative")) and
  an IOI prompt (logit(IO) - logit(S)), every token but BOS a component (11 and 13). Exact: all 2^n masks and
  their Moebius transform. Sparse (the token defaults: keep 0.8, pairs and screened triples),
  backends mechpatch and proxy: 2^n / 4 masks. Against the exact transform: top-10 pair
  overlap and signs, R^2 on held-out masks and on all 2^n. Shapley interaction indices (SII) of the sparse model
  beside shapiq's KernelSHAPIQ and SVARMIQ at the same budget, all queried from the exact table (no extra forwards),
  each against shapiq's ExactComputer.
- ``heads-smollm2``: all 270 heads of SmolLM2 on 4 IOI prompts (one template, 16 tokens; mean ablation over the
  prompts, keep 0.9; logit(IO) - logit(S)). Ground truth on a subset: the 30 heads whose single ablation moves the
  metric most, every pair of them ablated (1 + 30 + 435 masks, the other heads intact: the same game's pair
  effects). Backends mechpatch (sparse Fourier + Lasso), proxy (trees) and SPEX at 1,000 / 2,000 / 5,000 masks (one
  mask's value is computed once and reused across backends and budgets): held-out R^2 and top-10 pair overlap on
  the subset.
- ``synthetic``: 144 components with 6 planted AND pairs, 6 OR pairs and 3 three-way ANDs plus noise; 2,500
  masks at keep 0.5, order 3 (no model: recovery and fit time only).

Reported per setting: evaluations (distinct masks run), forwards (engine forward passes), wall seconds (mask
evaluation and fit), held-out R^2, and against the exhaustive truth top-k overlap, sign agreement, Spearman rank
correlation over all pairs and over the union of both top k.
Usage: python experiments/benchmarks/bench_interactions.py [--quick] [--settings heads,head-positions,synthetic,tokens-smollm2,heads-smollm2]
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
        every = torch.tensor(list(itertools.product([False, True], repeat=n)))
        values = exact.predict(every)
        fits = {}
        for backend in ("mechpatch", "proxy"):
            t = time.perf_counter()
            fit = token_interactions(model, tokens, metric=LogitDiff(), answers=answers, filler=" the",
                                     n_masks=budget, seed=0, backend=backend, progress=False)
            c = compare(fit, exact, k=10, order=2)
            fits[backend] = (fit, {"evaluations": fit.evaluations, "seconds": round(time.perf_counter() - t, 1),
                                   "top10": {"topk_overlap": c["topk_overlap"], "topk_sign": c["topk_sign"],
                                             "spearman_top": round(c["spearman_top"], 4)},
                                   "r2_heldout": round(fit.r2, 4), "r2_all_masks": round(fit.r2_on(every, values), 4)})
        sparse, best = fits["mechpatch"]
        top = [{"pair": i.label, "effect": round(i.effect, 4), "kind": i.kind} for i in exact.top(8, order=2)]
        row = {"prompt": name, "text": text, "tokens": n, "value": round(exact.base_value, 4),
               "exact_masks": exact.evaluations, "exact_seconds": round(t_exact, 1), "sparse_masks": budget,
               "keep": 0.8, "max_order": 3, **best, "proxy": fits["proxy"][1],
               "top_pairs_exact": top, "mains_exact": {lab: round(exact.moebius[(i,)], 4)
                                                       for i, lab in enumerate(exact.components)}}
        sii_exact = exact.shapley(order=2)
        row["sii"] = {"sparse": _sii_agreement(sparse.shapley(order=2), sii_exact)}
        if shapiq is not None:
            def game(coalitions: np.ndarray, exact=exact) -> np.ndarray:  # shapiq: True = token present (kept)
                return exact.predict(torch.from_numpy(~coalitions.astype(bool))).numpy()

            truth = shapiq.ExactComputer(n_players=n, game=game)(index="SII", order=2)
            truth_pairs = {p: float(truth[p]) for p in itertools.combinations(range(n), 2)}
            ours = {p: exact.polarity * v for p, v in sii_exact.items()}
            row["sii"]["mechpatch_exact_vs_shapiq_exact_max_abs"] = max(abs(ours.get(p, 0.0) - truth_pairs[p])
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


def bench_heads(quick: bool, backends: tuple[str, ...], budgets: tuple[int, ...]) -> dict:
    from mechpatch import zoo
    from mechpatch.interactions import evaluate_masks
    from mechpatch.tasks import make_ioi

    model = zoo.load("smollm2-135m", device="cpu")
    task = make_ioi(model, n=4, seed=0, templates=(0,))
    b = max(task, key=lambda batch: batch.clean.shape[0])
    comps = heads(model.spec)
    labels = tuple(h.label for h in comps)
    engine = dict(metric=task.metric, intervention=Mean(), answers=b.answers, progress=False)
    memo: dict = {}
    spent = {"masks": 0, "seconds": 0.0}

    def values_of(masks: torch.Tensor) -> torch.Tensor:
        keys = [bytes(row.numpy()) for row in masks.bool()]
        new = sorted({k: i for i, k in enumerate(keys) if k not in memo}.values())
        if new:
            t = time.perf_counter()
            run = evaluate_masks(model, b.clean, comps, masks=masks[new], **engine)
            spent["seconds"] += time.perf_counter() - t
            spent["masks"] += len(new)
            memo.update({keys[i]: float(v) for i, v in zip(new, run.values)})
        return torch.tensor([memo[k] for k in keys], dtype=torch.float64)

    t = time.perf_counter()
    singles = exhaustive_interactions(model, b.clean, comps, order=1, **engine)
    chosen = sorted(range(len(comps)), key=lambda i: -abs(singles.moebius[(i,)]))[:30]
    subset = exhaustive_interactions(model, b.clean, [comps[i] for i in chosen], order=2, **engine)
    truth_seconds = time.perf_counter() - t
    truth = {(chosen[a], chosen[c]) if chosen[a] < chosen[c] else (chosen[c], chosen[a]): v
             for (a, c), v in ((t, v) for t, v in subset.moebius.items() if len(t) == 2)}
    top_truth = sorted(truth, key=lambda t: -abs(truth[t]))[:10]
    runs = []
    for budget in ((300, 600) if quick else budgets):
        for backend in backends:
            before = dict(spent)
            t = time.perf_counter()
            m = find_function_interactions(values_of, len(comps), n_masks=budget, keep=0.9, backend=backend, seed=0,
                                           labels=labels, higher_is_better=True)
            seconds = time.perf_counter() - t
            est = {p: m.moebius.get(p, 0.0) for p in truth}
            top_est = set(sorted(truth, key=lambda p: -abs(est[p]))[:10])
            row = {"backend": backend, "masks": budget, "r2_heldout": round(m.r2, 4),
                   "top10_overlap_subset": len(set(top_truth) & top_est) / 10,
                   "top10_sign_subset": sum(1 for p in top_truth if est[p] * truth[p] > 0) / 10,
                   "terms": len(m.moebius) - 1, "seconds": round(seconds, 1),
                   "new_masks_evaluated": spent["masks"] - before["masks"],
                   "evaluation_seconds": round(spent["seconds"] - before["seconds"], 1)}
            print(json.dumps(row), flush=True)
            runs.append(row)
    within = [r for r in runs if r["masks"] <= 2000]
    best = max(within, key=lambda r: (r["r2_heldout"], r["top10_overlap_subset"])) if within else None
    return {"setting": "heads-smollm2", "components": len(comps), "prompts": int(b.clean.shape[0]),
            "tokens": int(b.clean.shape[1]), "subset": [labels[i] for i in chosen],
            "subset_top10": [{"pair": f"{labels[p[0]]} x {labels[p[1]]}", "effect": round(truth[p], 4)}
                             for p in top_truth],
            "truth_masks": singles.evaluations + subset.evaluations, "truth_seconds": round(truth_seconds, 1),
            "runs": runs, "best_within_2000": None if best is None else {
                k: best[k] for k in ("backend", "masks", "r2_heldout", "top10_overlap_subset")},
            "goal_met": any(r["r2_heldout"] >= 0.9 and r["top10_overlap_subset"] >= 0.7 for r in within)}


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
    parser.add_argument("--backends", default="mechpatch,proxy,spex", help="heads-smollm2: the backends compared")
    parser.add_argument("--budgets", default="1000,2000,5000", help="heads-smollm2: the mask budgets")
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
        elif name == "heads-smollm2":
            results["settings"].append(bench_heads(args.quick, tuple(args.backends.split(",")),
                                                   tuple(int(b) for b in args.budgets.split(","))))
        else:
            raise SystemExit(f"unknown setting {name!r}; valid: heads, head-positions, synthetic, tokens-smollm2, "
                             "heads-smollm2")
    which = "" if args.settings == DEFAULT_SETTINGS else "_" + args.settings.replace(",", "+")
    out = os.path.join(os.path.dirname(__file__), "results",
                       f"bench_interactions{which}{'_quick' if args.quick else ''}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_json(out, results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
