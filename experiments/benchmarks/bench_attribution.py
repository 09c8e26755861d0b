"""Attribution speed and rank agreement: all-node and all-edge gradient scores vs the exact engine, same run.

Nodes: every attention head output, query, key and value input (per key/value group) and MLP output, at every
position, noised one at a time (the corrupted run's activation patched into the clean run). Exact: one
:func:`mechpatch.patching.run_patches` call over all of them (the fast path, batched). AtP: one
:func:`mechpatch.attribution.atp` call (one clean forward, one corrupted forward, one backward); AtP*: the same
with the query/key fix and GradDrop (one extra row group per layer).

Edges: every edge of the circuit graph ablated alone with the corrupted run's sender output, on the clean
prompts. Exact: :func:`mechpatch.circuit.edge_patch`, batched and layer-resumed. EAP: one forward+backward of
the split-input forward; EAP-IG: 5 interpolated inputs. On the 12-layer model the exact edge sweep (32,491
edges, about two hours here) runs on a uniform random sample and its full time is extrapolated from it
(``--full-edges`` runs them all).

Models: the bundled induction model (trained; 2 attention-only layers), and GPT-2-small-shaped models with
random weights (d_model 768, 12 heads, vocabulary 50257) of 4 and 12 layers; 4 prompts x 12 tokens with 3
corrupted positions, logit difference of two random answer tokens.

Reported per model: seconds of each method, speed-up over the exact sweep, and agreement with the exact effects:
Spearman and Pearson correlation and top-10 overlap (by magnitude).
Usage: python experiments/benchmarks/bench_attribution.py [--quick] [--models induction,gpt2-4l,gpt2-12l]
Last line of output: one JSON object with every figure (also saved in experiments/benchmarks/results/).
"""

import argparse
import json
import os
import platform
import random
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from mechpatch import load_model, zoo  # noqa: E402
from mechpatch.attribution import agreement, atp, edge_attribution  # noqa: E402
from mechpatch.circuit.components import graph_layout  # noqa: E402
from mechpatch.circuit.edges import edge_patch  # noqa: E402
from mechpatch.patching import run_patches  # noqa: E402
from mechpatch.patching.metrics import LogitDiff  # noqa: E402
from mechpatch.patching.sweeps import make_grid  # noqa: E402
from mechpatch.report import write_json  # noqa: E402
from mechpatch.tasks import make_induction  # noqa: E402

KINDS = ("head", "q", "k", "v", "mlp_out")


def gpt2_shaped(n_layer: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layer, n_head=12, n_embd=768, n_positions=64, vocab_size=50257)
    model = load_model(GPT2LMHeadModel(cfg).eval(), device="cpu", name=f"gpt2-small-shaped-{n_layer}L")
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 50257, (4, 12), generator=g)
    corrupted = clean.clone()
    corrupted[:, 4:7] = torch.randint(0, 50257, (4, 3), generator=g)
    answers = torch.randint(0, 50257, (4, 2), generator=g)
    return model, clean, corrupted, answers, LogitDiff()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_nodes(model, clean, corrupted, answers, metric):
    kinds = [k for k in KINDS if not (k == "mlp_out" and model.spec.attn_only)]
    cells = [c for k in kinds for c in make_grid(model, k, clean.shape[1], by_position=True).cells]
    kw = dict(source=corrupted, answers=answers)
    exact_run, t_exact = timed(lambda: run_patches(model, clean, cells, metric=metric, clean="base", progress=False,
                                                   **kw))
    exact = (exact_run.values - exact_run.base_values[None]).mean(1)
    row = {"count": len(cells), "kinds": kinds, "exact_seconds": round(t_exact, 3)}
    for name, extra in (("atp", {}), ("atp*", {"qk_fix": True, "grad_drop": True})):
        run, t = timed(lambda extra=extra: atp(model, clean, cells, metric=metric, clean="base", **kw, **extra))
        a = agreement(run.estimates.mean(1), exact, k=10)
        # AtP* ranks by its GradDrop score; its signed estimate is what is compared with the exact effect
        ranked = agreement(run.scores, exact.abs(), k=10) if name == "atp*" else None
        row[name] = {"seconds": round(t, 3), "speedup": round(t_exact / t, 1), "spearman": round(a.spearman, 4),
                     "pearson": round(a.pearson, 4), "top10_overlap": a.top_k_overlap}
        if ranked is not None:
            row[name]["graddrop_score_vs_abs_effect_spearman"] = round(ranked.spearman, 4)
            row[name]["graddrop_score_top10_overlap"] = ranked.top_k_overlap
    return row


def bench_edges(model, clean, corrupted, answers, metric, sample):
    lay = graph_layout(model.spec)
    edges = lay.edges
    if sample and sample < len(edges):
        edges = random.Random(0).sample(edges, sample)
    run, t_exact = timed(lambda: edge_patch(model, clean, [[e] for e in edges], metric=metric, source=corrupted,
                                            answers=answers, batch_size=32, progress=False))
    exact = run.values.mean(1) - run.base_values.mean()
    full = t_exact * lay.n_edges / len(edges)
    row = {"count": lay.n_edges, "exact_measured": len(edges), "exact_seconds": round(t_exact, 2)}
    if len(edges) < lay.n_edges:
        row["exact_seconds_all_edges_extrapolated"] = round(full, 1)
    for name, ig in (("eap", None), ("eap_ig_inputs_5", "inputs")):
        att, t = timed(lambda ig=ig: edge_attribution(model, clean, metric=metric, source=corrupted, answers=answers, ig=ig,
                                                steps=5))
        scores = att.edge_scores()
        a = agreement(torch.tensor([scores[e] for e in edges]), exact, k=10)
        row[name] = {"seconds": round(t, 3), "speedup_vs_all_edges": round(full / t, 1),
                     "spearman": round(a.spearman, 4), "pearson": round(a.pearson, 4), "top10_overlap": a.top_k_overlap}
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 layers instead of 12 for the largest model")
    parser.add_argument("--models", default="induction,gpt2-4l,gpt2-12l")
    parser.add_argument("--edge-sample", type=int, default=512, help="exact edges measured on the 12-layer model")
    parser.add_argument("--full-edges", action="store_true", help="measure every edge exactly on every model")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"benchmark": "bench_attribution", "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
               "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "models": []}
    for name in args.models.split(","):
        if name == "induction":
            model = zoo.load("induction-2l")
            task = make_induction(model, n=16, block=10, seed=0)
            (b,) = task.batches
            setup = (model, b.clean, b.corrupted, None, task.metric)
            sample = 0
        elif name in ("gpt2-4l", "gpt2-12l"):
            layers = 4 if name == "gpt2-4l" else (2 if args.quick else 12)
            setup = gpt2_shaped(layers)
            sample = 0 if (layers <= 4 or args.full_edges) else args.edge_sample
        else:
            raise SystemExit(f"unknown model {name!r}; valid: induction, gpt2-4l, gpt2-12l")
        model = setup[0]
        row = {"model": model.name, "prompts": int(setup[1].shape[0]), "tokens": int(setup[1].shape[1]),
               "nodes": bench_nodes(*setup), "edges": bench_edges(*setup, sample)}
        print(json.dumps(row), flush=True)
        results["models"].append(row)
    out = os.path.join(os.path.dirname(__file__), "results", f"bench_attribution{'_quick' if args.quick else ''}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_json(out, results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
