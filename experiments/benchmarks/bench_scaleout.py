"""The same work on the local executor and on Ray with 1 and 2 workers: throughput, per-chunk scheduling overhead,
model-load time per worker, and from those an Amdahl scaling model for N workers.

Settings (``--what``, default ``sweep``; SmolLM2-135M from the zoo, IOI prompts of one template):

- ``sweep``: 16 prompts, the residual stream by layer and position, the config's default chunk size of 64 cells
  (``SweepJob``'s chunks);
- ``eap-ig``: EAP-IG's attribution pass over 16 prompts in chunks of 2 prompts (``DiscoverJob``'s chunks, what
  ``mechpatch discover`` hands to its executor);
- ``interactions``: 300 random masks over all 270 heads (mean ablation) in chunks of 75 masks, through
  ``evaluate_masks(executor=...)`` (workers hold only the model: ``ModelJob``);
- ``retrain``: 100 retrainings of the facts toy (:mod:`mechpatch.zoo.facts`) on random subsets of its data groups,
  one per unit, through ``retrain_masks(executor=...)`` (workers hold nothing).

Each is prepared once in this process; its chunks then run

- locally with 1 torch thread (the unit a worker is) and with this machine's default threads,
- on a local Ray runtime with 1 worker and with 2 workers (each 1 CPU, 1 thread).

Every run's chunks must be bitwise equal to the local ones (checked). From the 1-worker run comes the per-chunk
overhead of distributing a chunk (``o``: submission, the worker's reply, moving the tensors back: the run's time
minus the time the worker spent inside its chunks, per chunk) and the compute time of a chunk ``c``; the serial
fraction is ``f = o / (c + o)`` (all overhead counted as serial, the pessimistic choice) and Amdahl's law
predicts ``speedup(N) = 1 / (f + (1 - f) / N)``. The chunk time needed for an efficiency of 0.85 at N workers
follows: ``c >= o * (1 / f_max - 1)`` with ``f_max = (1 / 0.85 - 1) / (N - 1)``.

Usage: python experiments/benchmarks/bench_scaleout.py [--what sweep,eap-ig,interactions,retrain] [--model smollm2-135m]
    [--prompts 16] [--chunk-size N]
Last line of output: one JSON object with every figure (``settings``: one entry per setting).
"""

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

from mechpatch.config import from_dict  # noqa: E402
from mechpatch.runs.executor import JobSpec, LocalExecutor, RayExecutor, parse_executor  # noqa: E402
from mechpatch.runs.store import normalize_config, weights_hash  # noqa: E402
from mechpatch.runs.sweep import SweepConfig, SweepJob  # noqa: E402

GOAL_2_WORKERS = 1.7  # throughput with 2 workers over 1 local thread, this 2-core CPU
GOAL_EFFICIENCY_8 = 0.85  # predicted efficiency at 8 workers


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[u][k], b[u][k]) for u in a for k in a[u])


def amdahl(chunk_s: float, overhead_s: float, n: int) -> tuple[float, float]:
    """(speedup, efficiency) at ``n`` workers with serial fraction overhead / (chunk + overhead)."""
    f = overhead_s / (chunk_s + overhead_s) if overhead_s > 0 else 0.0
    speedup = 1.0 / (f + (1.0 - f) / n)
    return speedup, speedup / n


@dataclass
class Setting:
    """What one benchmark setting distributes: ``work(executor)`` runs every unit on it and returns the units'
    tensors (compared bitwise across executors); ``warm(executor)`` runs one unit per worker first."""

    name: str
    job: Any  # the driver's job (the local executor's)
    spec: JobSpec  # how a Ray worker builds the same job
    units: int
    items: int  # cells, prompts or masks
    item: str
    work: Callable[[Any], dict]
    warm: Callable[[Any, int], None]
    about: dict


def _units_setting(name: str, job: Any, spec: JobSpec, units: list, items: int, item: str, about: dict) -> Setting:
    """A setting whose units the job computes from their names alone (sweep cells, EAP prompt chunks)."""
    def work(ex: Any) -> dict:
        out: dict = {}
        ex.run(units, lambda u, tensors: out.__setitem__(u, tensors))
        return out

    return Setting(name, job, spec, len(units), items, item, work,
                   lambda ex, n: ex.run(units[:n], lambda u, t_: None), about)


def sweep_setting(args: argparse.Namespace) -> Setting:
    """The sweep: SmolLM2, IOI, the residual stream by layer and position, the config's chunk size."""
    cfg_dict = {"model": args.model, "task": {"name": "ioi", "args": {"n": args.prompts, "templates": [0]}},
                "kinds": args.kinds.split(","), "seed": 0, "out_dir": "unused"}
    if args.chunk_size:
        cfg_dict["chunk_size"] = args.chunk_size
    cfg = from_dict(SweepConfig, cfg_dict)
    job = SweepJob.load(cfg)
    units = [(k, i) for k in cfg.kinds for i in range(-(-len(job.prep.grids[k].cells) // cfg.chunk_size))]
    spec = JobSpec("sweep", normalize_config(cfg), weights_hash(job.model), "mechpatch.runs.sweep:worker_job")
    return _units_setting("sweep", job, spec, units, sum(len(job.cells(u)) for u in units), "cells",
                          {"kinds": cfg.kinds, "chunk_size": cfg.chunk_size})


def eap_setting(args: argparse.Namespace) -> Setting:
    """EAP-IG's attribution pass by chunks of prompts (what ``mechpatch discover`` hands to its executor)."""
    from mechpatch.runs.discover import DiscoverConfig, worker_job

    cfg = from_dict(DiscoverConfig, {"model": args.model, "method": "eap-ig", "task": "ioi", "out_dir": "unused",
                                     "task_args": {"n": args.prompts, "templates": [0]},
                                     "chunk_size": args.chunk_size or 2, "seed": 0})
    job = worker_job(normalize_config(cfg))
    units = [("eap", k) for k in range(len(job.ranges))]
    spec = JobSpec("discover", normalize_config(cfg), weights_hash(job.model), "mechpatch.runs.discover:worker_job")
    return _units_setting("eap-ig", job, spec, units, job.prepared.n_prompts, "prompts",
                          {"method": "eap-ig", "chunk_size": cfg.chunk_size})


def interactions_setting(args: argparse.Namespace) -> Setting:
    """Random masks over every head (what ``mechpatch interactions`` hands to its executor), mean ablation."""
    from mechpatch.interactions.designs import make_design
    from mechpatch.interactions.run import evaluate_masks
    from mechpatch.patching.interventions import Mean
    from mechpatch.runs.common import load_source, one_batch_task
    from mechpatch.runs.executor import ModelJob
    from mechpatch.runs.interactions import InteractionsConfig, resolve_components

    cfg = from_dict(InteractionsConfig, {"model": args.model, "task": "ioi", "components": "heads", "seed": 0,
                                         "task_args": {"n": args.prompts, "templates": [0]}, "out_dir": "unused",
                                         "n_masks": args.masks, "chunk_size": args.chunk_size or 75})
    torch.manual_seed(cfg.seed)
    model = load_source(cfg.model, cfg.device, cfg.dtype)
    task, b = one_batch_task(cfg, model, "interactions need")
    components = resolve_components(model.spec, cfg.components)
    masks = make_design("bernoulli", len(components), cfg.n_masks, keep=cfg.keep, seed=cfg.seed).masks

    def evaluate(ex: Any, rows: Any) -> dict:
        r = evaluate_masks(model, b.clean, components, masks=rows, metric=task.metric, intervention=Mean(),
                           answers=b.answers, chunk_size=cfg.chunk_size, executor=ex, progress=False)
        return {("masks", 0): {"values": r.per_prompt}}

    spec = JobSpec("interactions", normalize_config(cfg), weights_hash(model), "mechpatch.runs.executor:model_job")
    units = -(-len(torch.unique(masks, dim=0)) // cfg.chunk_size)
    return Setting("interactions", ModelJob(model), spec, units, cfg.n_masks, "masks", lambda ex: evaluate(ex, masks),
                   lambda ex, n: evaluate(ex, masks[:n * cfg.chunk_size]),
                   {"components": len(components), "chunk_size": cfg.chunk_size, "intervention": "mean"})


def retrain_setting(args: argparse.Namespace) -> Setting:
    """Retrainings of the facts toy on random subsets of its 36 data groups (what the data-interactions experiment
    hands to its executor: one retraining per unit; workers hold nothing, ``FUNCTION_JOB``)."""
    from mechpatch.interactions.data import retrain_masks
    from mechpatch.runs.executor import FUNCTION_JOB, ModelJob
    from mechpatch.zoo import facts

    labels, trainer = facts.group_labels(), "mechpatch.zoo.facts:train_facts"
    masks = torch.rand(args.retrainings, len(labels), generator=torch.Generator().manual_seed(0)) < 0.2

    def evaluate(ex: Any, rows: Any) -> dict:
        r = retrain_masks(trainer, labels, rows, executor=ex, progress=False)
        return {("retrain", 0): r.values}

    spec = JobSpec("functions", {}, None, FUNCTION_JOB)
    n = len(torch.unique(masks, dim=0))
    return Setting("retrain", ModelJob(None), spec, n, n, "retrainings", lambda ex: evaluate(ex, masks),
                   lambda ex, k: evaluate(ex, masks[:k]), {"groups": len(labels), "trainer": trainer})


SETTINGS = {"sweep": sweep_setting, "eap-ig": eap_setting, "interactions": interactions_setting,
            "retrain": retrain_setting}


def measure(st: Setting, default_threads: int) -> dict:
    """Local with 1 and the default threads, Ray with 1 and 2 workers; overhead, Amdahl model, goals."""
    st.warm(LocalExecutor(st.job), 1)  # warm-up (fast-path check, allocator)
    timed: dict = {}
    for threads in (1, default_threads):
        torch.set_num_threads(threads)
        t = time.perf_counter()
        out = st.work(LocalExecutor(st.job))
        timed[threads] = (time.perf_counter() - t, out)
    torch.set_num_threads(default_threads)
    (t_local1, ref), (t_local_default, got) = timed[1], timed[default_threads]
    print(f"{st.name} local: {t_local1:.2f} s (1 thread), {t_local_default:.2f} s ({default_threads} threads)",
          flush=True)
    identical = {"local_default_threads": _same(ref, got)}
    ray_runs = {}
    for workers in (1, 2):
        t = time.perf_counter()
        ex = RayExecutor(parse_executor({"ray": {"workers": workers}}), st.spec)
        start_s = time.perf_counter() - t
        try:
            st.warm(ex, workers)  # one unit per worker first, as above
            warm = sum(ex.compute_seconds())
            t = time.perf_counter()
            got = st.work(ex)
            t_run = time.perf_counter() - t
            inside = sum(ex.compute_seconds()) - warm
        finally:
            ex.close()
        identical[f"ray_{workers}"] = _same(ref, got)
        ray_runs[workers] = {"start_s": round(start_s, 2), "run_s": round(t_run, 3),
                             "worker_compute_s": round(inside, 3),
                             "worker_load_s": [w["load_seconds"] for w in ex.workers],
                             f"throughput_{st.item}_per_s": round(st.items / t_run, 2)}
        print(f"{st.name} ray {workers} worker(s): start {start_s:.1f} s, run {t_run:.2f} s", flush=True)
    # one worker runs the units one after another: its round trips minus its time inside them is the overhead
    chunk_s = ray_runs[1]["worker_compute_s"] / st.units
    overhead_s = max(0.0, (ray_runs[1]["run_s"] - ray_runs[1]["worker_compute_s"]) / st.units)
    speedup_2 = t_local1 / ray_runs[2]["run_s"]
    model = {n: amdahl(chunk_s, overhead_s, n) for n in (1, 2, 4, 8, 16)}
    f_max = (1 / GOAL_EFFICIENCY_8 - 1) / 7
    return {
        "setting": st.name, **st.about, st.item: st.items, "chunks": st.units,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--what", default="sweep", help=f"comma-separated settings: {', '.join(SETTINGS)}")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=16, help="IOI prompts (template 0: one length)")
    parser.add_argument("--kinds", default="resid_pre", help="sweep: the site kinds")
    parser.add_argument("--masks", type=int, default=300, help="interactions: random masks over the heads")
    parser.add_argument("--retrainings", type=int, default=100, help="retrain: random subsets of the facts groups")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="cells / prompts / masks per chunk (default: the sweep config's 64, 2 prompts, 75 masks)")
    parser.add_argument("--out", default=None, help="also write the JSON object to this file")
    args = parser.parse_args()
    unknown = [w for w in args.what.split(",") if w not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(SETTINGS)}")
    default_threads = torch.get_num_threads()
    settings = []
    for what in args.what.split(","):
        t = time.perf_counter()
        st = SETTINGS[what](args)
        print(f"{what}: {st.items} {st.item} in {st.units} chunks; prepared in {time.perf_counter() - t:.1f} s",
              flush=True)
        settings.append(measure(st, default_threads))
    result = {
        "benchmark": "bench_scaleout", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "default_threads": default_threads, "torch": torch.__version__},
        "model": args.model, "prompts": args.prompts, "settings": settings,
        "goals_met": all(all(s["goals"].values()) for s in settings),
    }
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
