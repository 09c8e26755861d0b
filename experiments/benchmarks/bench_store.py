"""What the run store's checks cost: content hashes, the validation plan, the lock.

(a) Chunk I/O: writing and reading back sweep chunks with mechpatch's hashed, fsynced, atomic writer and checked
    reader, against plain ``safetensors.torch.save_file`` / ``load_file`` of the same tensors (the peer: what a
    store without checks does), same run.
(b) A real sweep run (``run_sweep`` on the bundled induction model, by position, many chunks): the time of the
    whole run (model load included), of loading the model, of its validation plan (``plan_sweep``: model-aware checks and one probe cell, before any file),
    of skipping it when finished (every recorded result file re-hashed) and of hashing its files.

Usage: python experiments/benchmarks/bench_store.py [--quick]
Last line of output: one JSON object with every figure.
"""

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from mechpatch.config import from_dict  # noqa: E402
from mechpatch.runs.store import hashed_files, read_tensors, write_tensors  # noqa: E402
from mechpatch.runs.sweep import SweepConfig, plan_sweep, run_sweep  # noqa: E402


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def chunk_io(n_chunks: int, cells: int, prompts: int, repeat: int) -> dict:
    g = torch.Generator().manual_seed(0)
    chunks = [{"values": torch.randn(cells, prompts, generator=g), "noop": torch.zeros(cells, dtype=torch.bool),
               "clean": torch.randn(prompts, generator=g), "corrupted": torch.randn(prompts, generator=g)}
              for _ in range(n_chunks)]
    root = tempfile.mkdtemp()
    try:
        def ours():
            for i, c in enumerate(chunks):
                write_tensors(os.path.join(root, f"m{i}.safetensors"), c, {"config_hash": "x", "index": str(i)})
            for i in range(n_chunks):
                read_tensors(os.path.join(root, f"m{i}.safetensors"))

        def plain():
            for i, c in enumerate(chunks):
                save_file(c, os.path.join(root, f"p{i}.safetensors"), metadata={"config_hash": "x", "index": str(i)})
            for i in range(n_chunks):
                load_file(os.path.join(root, f"p{i}.safetensors"))

        t_ours, t_plain = _best(ours, repeat), _best(plain, repeat)
    finally:
        shutil.rmtree(root)
    return {"chunks": n_chunks, "cells_per_chunk": cells, "prompts": prompts, "mechpatch_s": round(t_ours, 4),
            "plain_safetensors_s": round(t_plain, 4), "ratio": round(t_ours / t_plain, 2),
            "per_chunk_ms": round(1000 * t_ours / n_chunks, 3)}


def sweep_run(quick: bool) -> dict:
    root = tempfile.mkdtemp()
    n, block = (16, 8) if quick else (48, 15)
    cfg = from_dict(SweepConfig, {"model": "induction-2l", "task": {"name": "induction", "args": {"n": n, "block": block}},
                                  "kinds": ["head", "q", "v"], "by_position": True, "chunk_size": 8,
                                  "out_dir": os.path.join(root, "run")})
    try:
        from mechpatch.runs.common import load_source

        model = load_source(cfg.model)  # warm: imports and the first load are not the plan's cost
        t = time.perf_counter()
        model = load_source(cfg.model)
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        plan = plan_sweep(cfg, model)
        t_plan = time.perf_counter() - t
        t = time.perf_counter()
        run_sweep(cfg, quiet=True)
        t_run = time.perf_counter() - t
        t = time.perf_counter()
        run_sweep(cfg, quiet=True)  # finished: files verified, nothing recomputed
        t_skip = time.perf_counter() - t
        t = time.perf_counter()
        files = hashed_files(cfg.out_dir)
        t_hash = time.perf_counter() - t
        size = sum(os.path.getsize(os.path.join(cfg.out_dir, f)) for f in files)
        n_chunks = sum(len(fs) for _, _, fs in os.walk(os.path.join(cfg.out_dir, "chunks")))
    finally:
        shutil.rmtree(root)
    return {"prompts": n, "tokens": 1 + 2 * block, "cells": dict(plan.rows)["cells"], "chunks": n_chunks,
            "run_s": round(t_run, 3), "model_load_s": round(t_load, 3), "plan_s": round(t_plan, 3), "plan_fraction_of_run": round(t_plan / t_run, 3),
            "finished_skip_s": round(t_skip, 3), "hashed_files": len(files), "hashed_bytes": size,
            "hash_files_s": round(t_hash, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (for the test of this script)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    io = chunk_io(*((10, 16, 8, 1) if args.quick else (200, 64, 48, 3)))
    print(f"chunk I/O, {io['chunks']} chunks of {io['cells_per_chunk']} cells x {io['prompts']} prompts: mechpatch "
          f"{io['mechpatch_s']} s, plain safetensors {io['plain_safetensors_s']} s, ratio {io['ratio']}")
    run = sweep_run(args.quick)
    print(f"sweep run ({run['cells']} cells, {run['chunks']} chunks): {run['run_s']} s; plan {run['plan_s']} s "
          f"({100 * run['plan_fraction_of_run']:.1f}%); finished-run skip {run['finished_skip_s']} s; hashing "
          f"{run['hashed_files']} result files ({run['hashed_bytes']} bytes) {run['hash_files_s']} s")
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
                      "threads": 1, "chunk_io": io, "sweep_run": run}))


if __name__ == "__main__":
    main()
