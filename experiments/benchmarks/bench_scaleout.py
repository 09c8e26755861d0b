"""The same sweep on the local executor and on Ray with 1 and 2 workers: throughput, per-chunk scheduling overhead,
model-load time per worker, and from those an Amdahl scaling model for N workers.

The sweep (default: SmolLM2-135M from the zoo, 16 IOI prompts of one template, the residual stream by layer and
position, the config's default chunk size of 64 cells) is prepared once in this process (``SweepJob``); its chunks
then run

- locally with 1 torch thread (the unit a worker is) and with this machine's default threads,
- on a local Ray runtime with 1 worker and with 2 workers (each 1 CPU, 1 thread).

Every run's chunks must be bitwise equal to the local ones (checked). From the 1-worker run comes the per-chunk
overhead of distributing a chunk (``o``: submission, the worker's reply, moving the tensors back: the run's time
minus the time the worker spent inside its chunks, per chunk) and the compute time of a chunk ``c``; the serial
fraction is ``f = o / (c + o)`` (all overhead counted as serial, the pessimistic choice) and Amdahl's law
predicts ``speedup(N) = 1 / (f + (1 - f) / N)``. The chunk time needed for an efficiency of 0.85 at N workers
follows: ``c >= o * (1 / f_max - 1)`` with ``f_max = (1 / 0.85 - 1) / (N - 1)``.

Usage: python experiments/benchmarks/bench_scaleout.py [--model smollm2-135m] [--prompts 16] [--chunk-size 64]
Last line of output: one JSON object with every figure.
"""

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

from mechpatch.config import from_dict  # noqa: E402
from mechpatch.runs.executor import JobSpec, LocalExecutor, RayExecutor, parse_executor  # noqa: E402
from mechpatch.runs.store import normalize_config, weights_hash  # noqa: E402
from mechpatch.runs.sweep import SweepConfig, SweepJob  # noqa: E402

GOAL_2_WORKERS = 1.7  # throughput with 2 workers over 1 local thread, this 2-core CPU
GOAL_EFFICIENCY_8 = 0.85  # predicted efficiency at 8 workers


def _collect(job: SweepJob, units, run) -> tuple[float, dict]:
    out: dict = {}
    t = time.perf_counter()
    run(units, lambda u, tensors: out.__setitem__(u, tensors))
    return time.perf_counter() - t, out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[u][k], b[u][k]) for u in a for k in a[u])


def amdahl(chunk_s: float, overhead_s: float, n: int) -> tuple[float, float]:
    """(speedup, efficiency) at ``n`` workers with serial fraction overhead / (chunk + overhead)."""
    f = overhead_s / (chunk_s + overhead_s) if overhead_s > 0 else 0.0
    speedup = 1.0 / (f + (1.0 - f) / n)
    return speedup, speedup / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=16, help="IOI prompts (template 0: one length)")
    parser.add_argument("--kinds", default="resid_pre")
    parser.add_argument("--chunk-size", type=int, default=None, help="cells per chunk (default: the config's, 64)")
    parser.add_argument("--out", default=None, help="also write the JSON object to this file")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    cfg_dict = {"model": args.model, "task": {"name": "ioi", "args": {"n": args.prompts, "templates": [0]}},
                "kinds": args.kinds.split(","), "seed": 0, "out_dir": "unused"}
    if args.chunk_size:
        cfg_dict["chunk_size"] = args.chunk_size
    cfg = from_dict(SweepConfig, cfg_dict)
    t = time.perf_counter()
    job = SweepJob.load(cfg)
    driver_load_s = time.perf_counter() - t
    units = [(k, i) for k in cfg.kinds for i in range(-(-len(job.prep.grids[k].cells) // cfg.chunk_size))]
    cells = sum(len(job.cells(u)) for u in units)
    print(f"{cells} cells in {len(units)} chunks of <= {cfg.chunk_size}; model loaded in {driver_load_s:.1f} s",
          flush=True)
    LocalExecutor(job).run(units[:1], lambda u, t_: None)  # warm-up (fast-path check, allocator)

    torch.set_num_threads(1)
    t_local1, ref = _collect(job, units, LocalExecutor(job).run)
    torch.set_num_threads(default_threads)
    t_local_default, got = _collect(job, units, LocalExecutor(job).run)
    print(f"local: {t_local1:.2f} s (1 thread), {t_local_default:.2f} s ({default_threads} threads)", flush=True)
    identical = {"local_default_threads": _same(ref, got)}

    spec = JobSpec("sweep", normalize_config(cfg), weights_hash(job.model), "mechpatch.runs.sweep:worker_job")
    ray_runs = {}
    for workers in (1, 2):
        t = time.perf_counter()
        ex = RayExecutor(parse_executor({"ray": {"workers": workers}}), spec)
        start_s = time.perf_counter() - t
        try:
            ex.run(units[:workers], lambda u, t_: None)  # each worker's warm-up, as above
            warm = sum(ex.compute_seconds())
            t_run, got = _collect(job, units, ex.run)
            inside = sum(ex.compute_seconds()) - warm
        finally:
            ex.close()
        identical[f"ray_{workers}"] = _same(ref, got)
        ray_runs[workers] = {"start_s": round(start_s, 2), "run_s": round(t_run, 3),
                             "worker_compute_s": round(inside, 3),
                             "worker_load_s": [w["load_seconds"] for w in ex.workers],
                             "throughput_cells_per_s": round(cells / t_run, 2)}
        print(f"ray {workers} worker(s): start {start_s:.1f} s, run {t_run:.2f} s", flush=True)

    # one worker runs the chunks one after another: its round trips minus its time inside them is the overhead
    chunk_s = ray_runs[1]["worker_compute_s"] / len(units)
    overhead_s = max(0.0, (ray_runs[1]["run_s"] - ray_runs[1]["worker_compute_s"]) / len(units))
    speedup_2 = t_local1 / ray_runs[2]["run_s"]
    model = {n: amdahl(chunk_s, overhead_s, n) for n in (1, 2, 4, 8, 16)}
    f_max = (1 / GOAL_EFFICIENCY_8 - 1) / 7
    result = {
        "benchmark": "bench_scaleout", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "default_threads": default_threads, "torch": torch.__version__},
        "model": args.model, "prompts": args.prompts, "kinds": cfg.kinds, "chunk_size": cfg.chunk_size,
        "cells": cells, "chunks": len(units), "driver_load_s": round(driver_load_s, 2),
        "local_1_thread_s": round(t_local1, 3), "local_default_threads_s": round(t_local_default, 3),
        "ray": ray_runs, "bitwise_identical": identical,
        "chunk_compute_s": round(chunk_s, 4), "per_chunk_overhead_s": round(overhead_s, 4),
        "speedup_2_workers_vs_local_1_thread": round(speedup_2, 3),
        "speedup_2_workers_vs_local_default": round(t_local_default / ray_runs[2]["run_s"], 3),
        "amdahl": {str(n): {"speedup": round(s, 3), "efficiency": round(e, 3)} for n, (s, e) in model.items()},
        "min_chunk_s_for_efficiency_0.85_at_8": round(overhead_s * (1 / f_max - 1), 4),
        "goals": {"speedup_2_workers_ge_1.7": speedup_2 >= GOAL_2_WORKERS,
                  "predicted_efficiency_8_ge_0.85": model[8][1] >= GOAL_EFFICIENCY_8,
                  "bitwise_identical": all(identical.values())},
    }
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
