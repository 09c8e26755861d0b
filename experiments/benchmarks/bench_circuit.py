"""ACDC speed: mechpatch's batched, layer-resumed ACDC vs plain one-edge-per-forward ACDC, same run, same edges.

Models: a GPT-2-small-shaped random model (12 heads, d_model 768, vocabulary 50257; 4 layers by default:
3,135 edges; ``--layers 12`` is GPT-2 small's 32,491 edges) and the bundled induction model (2 layers,
4 heads: 81 edges). Both ACDC runs use the same
prompts, metric (KL divergence to the clean run at the last position), corrupted-prompt ablation and tau.
The reference evaluates one candidate edge per forward pass, from the embeddings; mechpatch evaluates
each receiver's candidates cumulatively in one forward that starts at the receiver's layer.

Reported: forwards, edge-set evaluations, wall time, the ratio, and whether both kept the same edges.

``--reference-sample N`` (for the 12-layer shape, whose reference would take hours on a CPU) times N forwards
of the reference instead of running it: every reference forward is the same full pass from the embeddings
(one edge set, every prompt), so its run time is the number of edges it evaluates (the edges mechpatch's
run scored: both make the same decisions) times the mean forward time. Reported as extrapolated.

Usage: python experiments/benchmarks/bench_circuit.py [--quick] [--models gpt2-small,induction]
       [--layers 12 --reference-sample 40] [--device auto|cpu|cuda] [--out PATH] [--warmup]
Last line of output: one JSON object with every figure (also saved in experiments/benchmarks/results/, or at
``--out``).
"""

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from mechpatch import load_model, zoo  # noqa: E402
from mechpatch.circuit.discovery import acdc  # noqa: E402
from mechpatch.model import resolve_device  # noqa: E402
from mechpatch.patching import Replace  # noqa: E402
from mechpatch.patching.metrics import KLDivergence  # noqa: E402
from mechpatch.report import write_json  # noqa: E402
from mechpatch.tasks import make_induction  # noqa: E402


def gpt2_small_shaped(n_layer: int = 12, device: str = "cpu"):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layer, n_head=12, n_embd=768, n_positions=64, vocab_size=50257)
    return load_model(GPT2LMHeadModel(cfg).eval(), device=device, name=f"gpt2-small-shaped-{n_layer}L")


def reference_forward_seconds(model, base, source, metric, removed, n):
    """Mean seconds of one reference forward (an edge set, every prompt, from the embeddings), over n timed ones;
    the edge sets are ``removed`` plus one random further edge, as the reference's are."""
    from mechpatch.circuit.edges import make_runner

    runner = make_runner(model, base, metric=metric, source=source, intervention=Replace())
    valid = runner.lay.valid
    g = torch.Generator().manual_seed(0)
    candidates = torch.nonzero(valid & ~removed)
    rows_prompt = torch.arange(runner.n, device=runner.base.device)
    times = []
    for _ in range(n):
        m = removed.clone()
        s, r = candidates[int(torch.randint(len(candidates), (1,), generator=g))]
        m[s, r] = True
        m = m.to(runner.base.device)
        t = time.perf_counter()
        with torch.inference_mode():
            logits, _, _ = runner.forward(runner.base, rows_prompt, m[None].repeat(runner.n, 1, 1), 0)
            runner.metric(logits, rows_prompt).mean().item()  # .item() waits for a GPU to finish
        times.append(time.perf_counter() - t)
    return sum(times) / len(times)


def warm_up(model, base, source, metric, n=3):
    """A few untimed edge-level forwards, so that neither timed search pays the process's first-call costs
    (kernel loading and library set-up on a GPU, first-touch memory on a CPU); the search run first pays them
    otherwise."""
    from mechpatch.circuit.edges import make_runner

    runner = make_runner(model, base, metric=metric, source=source, intervention=Replace())
    reference_forward_seconds(model, base, source, metric, torch.zeros_like(runner.lay.valid), n)


def bench(name, model, base, source, tau, batch_size, reference_sample=None, warmup=False):
    metric = KLDivergence()  # at the last position, as ACDC's IOI and greater-than runs
    if warmup:
        warm_up(model, base, source, metric)
    t = time.perf_counter()
    fast_res = acdc(model, base, metric=metric, source=source, tau=tau, batch_size=batch_size,
                    progress=reference_sample is not None)
    t_fast = time.perf_counter() - t
    if reference_sample:
        import math

        lay = fast_res.layout
        kept = lay.mask(list(fast_res.edges))
        removed = lay.valid & ~kept  # the final circuit's complement: a late reference state
        per_forward = reference_forward_seconds(model, base, source, metric, removed, reference_sample)
        evaluated = sum(1 for v in fast_res.scores.values() if not math.isnan(v))
        row = {
            "model": name, "edges_total": lay.n_edges, "prompts": int(base.shape[0]), "tokens": int(base.shape[1]),
            "tau": tau, "kept_edges": len(fast_res.edges), "same_edges": None,
            "reference_forwards": evaluated, "reference_seconds_per_forward": round(per_forward, 4),
            "reference_seconds": round(per_forward * evaluated, 1), "reference_extrapolated": True,
            "reference_sampled_forwards": reference_sample,
            "mechpatch_forwards": fast_res.forwards, "mechpatch_evaluations": fast_res.evaluations,
            "mechpatch_seconds": round(t_fast, 2), "speedup": round(per_forward * evaluated / t_fast, 2),
            "forward_ratio": round(evaluated / fast_res.forwards, 2),
            "kl_full_to_circuit": round(fast_res.final_metric, 5),
        }
        print(json.dumps(row), flush=True)
        return row
    t = time.perf_counter()
    ref = acdc(model, base, metric=metric, source=source, tau=tau, search="sequential", progress=False)
    t_ref = time.perf_counter() - t
    row = {
        "model": name, "edges_total": fast_res.layout.n_edges, "prompts": int(base.shape[0]),
        "tokens": int(base.shape[1]), "tau": tau,
        "kept_edges": len(fast_res.edges), "same_edges": set(fast_res.edges) == set(ref.edges),
        "reference_forwards": ref.forwards, "reference_seconds": round(t_ref, 2),
        "mechpatch_forwards": fast_res.forwards, "mechpatch_evaluations": fast_res.evaluations,
        "mechpatch_seconds": round(t_fast, 2), "speedup": round(t_ref / t_fast, 2),
        "forward_ratio": round(ref.forwards / fast_res.forwards, 2),
        "kl_full_to_circuit": round(fast_res.final_metric, 5),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 2-layer GPT-2-shaped model instead of --layers")
    parser.add_argument("--layers", type=int, default=4,
                        help="layers of the GPT-2-small-width model (12 = GPT-2 small; its one-edge-per-forward "
                             "reference takes hours on a 2-core CPU)")
    parser.add_argument("--models", default="gpt2-small,induction")
    parser.add_argument("--tau", type=float, default=None, help="ACDC threshold (default per model)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reference-sample", type=int, default=None,
                        help="time this many reference forwards and extrapolate instead of running the reference")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--out", default=None, help="where to save the JSON (default: under results/)")
    parser.add_argument("--warmup", action="store_true",
                        help="a few untimed forwards per model first (the search timed first pays one-time costs "
                             "otherwise)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {"benchmark": "bench_circuit", "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
               "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
               "device": str(resolve_device(args.device)), "warmup": args.warmup, "models": []}
    for name in args.models.split(","):
        if name == "gpt2-small":
            model = gpt2_small_shaped(2 if args.quick else args.layers, args.device)
            g = torch.Generator().manual_seed(1)
            base = torch.randint(0, 50257, (4, 12), generator=g)
            source = torch.randint(0, 50257, (4, 12), generator=g)
            results["models"].append(bench(model.name, model, base, source, args.tau or 1e-4, args.batch_size,
                                           args.reference_sample, args.warmup))
        elif name == "induction":
            model = zoo.load("induction-2l", device=args.device)
            (b,) = make_induction(model, n=16, block=10, seed=0).batches
            results["models"].append(bench("induction-2l", model, b.clean, b.corrupted, args.tau or 0.05,
                                           args.batch_size, warmup=args.warmup))
        else:
            raise SystemExit(f"unknown model {name!r}; valid: gpt2-small, induction")
    suffix = "_quick" if args.quick else (f"_{args.layers}L" if args.layers != 4 else "")
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"bench_circuit{suffix}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_json(out, results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
