"""One-command GPU check: exactness on the device, a real out-of-memory the engine survives, and the benchmarks.

On a machine with a CUDA GPU (under 8 minutes on one H100/H200-class GPU)::

    python experiments/benchmarks/gpu_check.py [--out gpu_check.json]      # or: make gpu-check

Anywhere, as a smoke test of the script itself: ``--device cpu --quick`` (a few minutes on 2 CPU cores). Without a
CUDA device and without ``--device cpu`` it stops at once with exit code 2.

Checks, in order; each is timed, and one that fails or raises is recorded while the rest still run:

1. ``exactness``: tiny random models (:func:`mechpatch.zoo.architectures.random_model`) of every architecture the
   fast path resolves for (gpt2 and llama3 at least; ``--quick``: fewer sweep kinds). Every sweep kind,
   by position and not, plus the other interventions: ``method="fast"`` and ``"hooks"`` against ``"reference"``
   on the device (:data:`EXACT_TOL`, as ``tests/patching/test_engine.py`` holds them on the CPU), and the device's
   fast results against the same sweep on the CPU (:data:`CPU_TOL`).
2. ``bfloat16``: gpt2 and llama3 in bfloat16 against float32 on the device: the largest difference relative to the
   float32 values' largest magnitude, at most :data:`BF16_RTOL`.
3. ``oom_halving`` (CUDA only): the process's CUDA memory is capped (``torch.cuda.set_per_process_memory_fraction``)
   at what it holds plus :data:`OOM_HEADROOM`, and a base-size GPT-2 sweep runs as one chunk far larger than that:
   the engine must meet real out-of-memory errors (the allocator's ``num_ooms``), halve the chunk (the sweep's
   ``oom_halvings``, which must be ``forwards`` - 1 since the sweep starts as one chunk) and give the same values as a small-batch run, for the fast and
   the hooks method, leaving the model as it was.
4. ``bench_patching``, ``bench_circuit`` (and, full run on CUDA, ``bench_circuit_12l``): the benchmark scripts in
   subprocesses on the device, their last-line JSON included. ``acdc_goal``: mechpatch's batched ACDC at least
   :data:`ACDC_GOAL` times faster than one-edge-per-forward ACDC (``speedup``) on the GPT-2-shaped models, with the
   same edges where the reference ran in full (a GPU goal: on a CPU the ratios are recorded and the goal skipped).
5. ``bench_architectures``: every architecture at ``--size base`` (``tiny`` with ``--quick``), in groups so that a
   time-out loses one group only, if the script exists.

Every subprocess gets a time-out cut to what is left of ``--budget`` seconds, so the whole run stays within it;
what no longer fits is skipped and named. Last line of stdout: one JSON object with the environment (device name,
torch, CUDA, date, commit), every figure, a status per check ("pass", "fail" or "skipped: why") and the overall
status ("pass" when no check failed); also written to ``--out``. Exit code 0 (pass), 1 (a check failed) or 2 (no
CUDA device).
"""

import argparse
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parents[1]

EXACT_TOL = 1e-5  # fast/hooks vs reference on the device, float32: atol = rtol (tests/patching/test_engine.py's TOL)
CPU_TOL = 1e-4  # the device's results vs the CPU's, float32: atol = rtol
# bfloat16 vs float32: max |diff| / max |float32 value|. bfloat16 keeps 8 significant bits (2**-8 = 0.4% per
# rounding); through weights, residual stream and a logit difference the tiny models land at 2-6% (CPU, 2026-12):
# the bound catches a broken low-precision path (errors of order 1), not rounding
BF16_RTOL = 0.1
OOM_HEADROOM = 1 << 30  # bytes the capped process may allocate beyond what it holds when the cap is set
OOM_TOL = 1e-5  # the capped (halved) sweep vs the small-batch one: atol = rtol
TL_AGREEMENT = 1e-4  # bench_patching: largest |mechpatch - TransformerLens| allowed
ACDC_GOAL = 20.0  # batched ACDC / one-edge-per-forward ACDC, on a GPU
MUST_RUN = ("gpt2", "llama3")  # architectures whose fast path the exactness check requires

#: sweep kinds that name another kind's sites (tests/patching/test_engine.py's kinds_for skips them too); neurons
#: are left out as there (the engine's random site sets cover them)
ALIASES = ("z", "query", "key", "value", "neuron")


@dataclass(frozen=True)
class Sizes:
    """Everything ``--quick`` shrinks, in one place."""

    budget_s: float  # the whole run (subprocess time-outs are cut to what is left)
    kinds: Optional[tuple[tuple[str, bool], ...]]  # exactness: (kind, by_position), or (None) every kind both ways
    interventions: tuple[str, ...]  # exactness: interventions beyond Replace (by name), on heads
    interventions_by_position: bool
    exact_cap_s: float  # exactness starts no further architecture after this long
    patching_args: tuple[str, ...]
    circuit_args: tuple[str, ...]
    circuit_12l: bool  # also the 12-layer ACDC run (reference sampled), CUDA only
    arch_size: str
    arch_names: Optional[tuple[str, ...]]  # bench_architectures: these, or (None) every architecture
    arch_group: int  # architectures per bench_architectures subprocess (a time-out loses one group)
    # subprocess stage -> (cap, floor) in seconds: a stage's time-out is min(cap, what is left of the budget less
    # the later stages' floors); a stage whose time-out would be below its own floor is skipped
    caps: dict[str, tuple[float, float]]


FULL = Sizes(
    budget_s=460, kinds=None, interventions=("zero", "mean", "interpolate", "resample"),
    interventions_by_position=True, exact_cap_s=100, patching_args=(), circuit_args=(), circuit_12l=True,
    arch_size="base", arch_names=None, arch_group=4,
    caps={"bench_patching": (170, 60), "bench_circuit": (120, 45), "bench_circuit_12l": (90, 40),
          "bench_architectures": (200, 40)},
)
QUICK = Sizes(
    budget_s=170,
    kinds=(("resid_pre", True), ("mlp_out", False), ("head", True), ("head_result", False), ("k", False),
           ("pattern", False)),
    interventions=("zero",), interventions_by_position=False, exact_cap_s=60,
    patching_args=("--quick", "--sweeps", "heads_all_pos,resid_by_pos"), circuit_args=("--quick", "--models",
                                                                                         "induction"),
    circuit_12l=False, arch_size="tiny", arch_names=MUST_RUN, arch_group=2,
    caps={"bench_patching": (60, 20), "bench_circuit": (50, 20), "bench_circuit_12l": (50, 20),
          "bench_architectures": (60, 20)},
)


class Clock:
    """The run's wall-clock budget."""

    def __init__(self, budget_s: float) -> None:
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def log(msg: str) -> None:
    print(msg, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _compare(got: torch.Tensor, want: torch.Tensor, tol: float) -> tuple[float, bool]:
    """(largest |got - want|, whether |got - want| <= tol + tol * |want| everywhere); NaN never passes."""
    got, want = got.detach().float().cpu(), want.detach().float().cpu()
    diff = (got - want).abs()
    return float(diff.max()), bool((diff <= tol + tol * want.abs()).all())


# ----------------------------------------------------------------------------- 1. exactness


def random_pair(model, n: int = 3, seq: int = 7, seed: int = 0, corrupt=(2, 4)):
    """The tests' prompt pair (tests/patching/test_engine.py's make_test_pair)."""
    from mechpatch.prompts import random_pair as pair

    return pair(model, n, seq, seed=seed, corrupt=corrupt)


def sweep_cases(model, sizes: Sizes) -> list[tuple[str, bool, Any]]:
    """(kind, by_position, intervention) of every sweep the exactness check runs on ``model``."""
    from mechpatch.patching import SWEEP_KINDS, Replace
    from mechpatch.patching.interventions import from_name

    if sizes.kinds is None:
        kinds = [(k, by_pos) for k in SWEEP_KINDS if k not in ALIASES for by_pos in (False, True)]
    else:
        kinds = list(sizes.kinds)
    spec = model.spec
    kinds = [(k, p) for k, p in kinds if not (spec.attn_only and k in ("resid_mid", "mlp_out"))
             and not (k == "head_result" and spec.architecture == "TransformerLensNative")]
    cases = [(k, p, Replace()) for k, p in kinds]
    for name in sizes.interventions:
        intervention = from_name(name, alpha=0.3 if name == "interpolate" else None, seed=2)
        cases.append(("head", sizes.interventions_by_position, intervention))
    return cases


def exact_architecture(name: str, device: torch.device, sizes: Sizes) -> dict:
    """One architecture: fast and hooks against the reference on the device, and the device against the CPU."""
    from mechpatch.errors import GatedHookError, UnsupportedSiteError
    from mechpatch.patching import fast, sweep
    from mechpatch.patching.interventions import describe
    from mechpatch.zoo.architectures import random_model

    model = random_model(name, "tiny", device=device)
    reason, _ = fast.resolve(model)
    out: dict[str, Any] = {"hf_class": model.spec.architecture, "fast_path": reason is None, "reason": reason}
    if reason is not None:
        out["status"] = "fail" if name in MUST_RUN else f"skipped: {reason}"
        return out
    cpu_model = model if device.type == "cpu" else random_model(name, "tiny", device="cpu")
    pair, cpu_pair = random_pair(model), random_pair(cpu_model)
    worst = {"fast_vs_reference": 0.0, "hooks_vs_reference": 0.0, "device_vs_cpu": 0.0}
    failures, unsupported, variants, cases = [], [], 0, sweep_cases(model, sizes)
    for kind, by_pos, intervention in cases:
        label = f"{kind}{'/pos' if by_pos else ''}/{describe(intervention)}"

        def run(m, p, method, kind=kind, by_pos=by_pos, intervention=intervention):
            return sweep(m, p, kind, metric="logit_diff", by_position=by_pos, intervention=intervention,
                         method=method, batch_size=16, progress=False)

        # a site kind an architecture refuses (a typed error) is recorded; where only the reference refuses it (a
        # bridge that ignores writes to a hook), the fast path is still held to the CPU's
        fast_res = ref = None
        try:
            fast_res = run(model, pair, "fast")
            ref = run(model, pair, "reference")
        except (GatedHookError, UnsupportedSiteError) as exc:
            unsupported.append({"case": label, "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                                "checked": "device_vs_cpu only" if fast_res is not None else "nothing"})
        if fast_res is None:
            continue
        if ref is not None:
            variants += ref.noop.numel()
            for what, res in (("fast_vs_reference", fast_res), ("hooks_vs_reference", run(model, pair, "hooks"))):
                diff, ok = _compare(res.values, ref.values, EXACT_TOL)
                worst[what] = max(worst[what], diff)
                if not ok or not torch.equal(res.noop.cpu(), ref.noop.cpu()):
                    failures.append({"case": label, "compare": what, "max_abs_diff": diff, "noop_equal":
                                     bool(torch.equal(res.noop.cpu(), ref.noop.cpu()))})
        diff, ok = _compare(fast_res.values, run(cpu_model, cpu_pair, "fast").values, CPU_TOL)
        worst["device_vs_cpu"] = max(worst["device_vs_cpu"], diff)
        if not ok:
            failures.append({"case": label, "compare": "device_vs_cpu", "max_abs_diff": diff})
    out.update({"sweeps": len(cases), "variants": variants,
                **{f"max_abs_{k}": v for k, v in worst.items()}, "failures": failures,
                "unsupported": unsupported,
                "status": "pass" if not failures else "fail"})
    return out


def check_exactness(device: torch.device, sizes: Sizes, clock: Clock) -> dict:
    from mechpatch.zoo.architectures import ARCHITECTURES

    names = list(MUST_RUN) + [a for a in ARCHITECTURES if a not in MUST_RUN]
    start, archs, not_run = clock.elapsed(), {}, []
    for name in names:
        if name not in MUST_RUN and clock.elapsed() - start > sizes.exact_cap_s:
            not_run.append(name)
            continue
        t = time.perf_counter()
        try:
            archs[name] = exact_architecture(name, device, sizes)
        except Exception as exc:  # noqa: BLE001  (one architecture failing is a result; the others still run)
            archs[name] = {"status": "fail", "error": f"{type(exc).__name__}: {exc}",
                           "traceback": traceback.format_exc()[-1500:]}
        archs[name]["seconds"] = round(time.perf_counter() - t, 2)
        _free(device)
        log(f"  {name}: {archs[name]['status']} ({archs[name]['seconds']} s)")
    failed = [n for n, a in archs.items() if a["status"] == "fail"]
    return {"status": "fail" if failed else "pass", "tolerance_vs_reference": EXACT_TOL, "tolerance_vs_cpu": CPU_TOL,
            "failed": failed, "not_run_time_budget": not_run,
            "fast_path_archs": [n for n, a in archs.items() if a.get("fast_path")], "archs": archs}


def check_bfloat16(device: torch.device, sizes: Sizes) -> dict:
    """bfloat16 against float32 on the device: heads and resid_pre by position, relative to float32's scale."""
    from mechpatch.patching import sweep
    from mechpatch.zoo.architectures import random_model

    archs = {}
    for name in MUST_RUN:
        m32 = random_model(name, "tiny", device=device)
        m16 = random_model(name, "tiny", device=device, dtype="bfloat16")
        rows = {}
        for kind in ("head", "resid_pre"):
            r32, r16 = (sweep(m, random_pair(m), kind, metric="logit_diff", by_position=True, progress=False)
                        for m in (m32, m16))
            scale = float(r32.values.abs().max()) or 1.0
            diff = float((r16.values.float() - r32.values).abs().max())
            rows[kind] = {"max_abs_diff": diff, "float32_scale": scale, "rel_diff": diff / scale,
                          "method_bfloat16": r16.meta["method"], "method_float32": r32.meta["method"]}
        rel = max(r["rel_diff"] for r in rows.values())
        archs[name] = {"sweeps": rows, "rel_diff": rel, "pass": rel <= BF16_RTOL}
        del m32, m16
        _free(device)
    return {"status": "pass" if all(a["pass"] for a in archs.values()) else "fail", "rel_tolerance": BF16_RTOL,
            "archs": archs}


# ----------------------------------------------------------------------------- 2. out of memory


@contextmanager
def cuda_memory_cap(device: torch.device, headroom: int) -> Iterator[dict]:
    """Cap this process's CUDA allocator at what it holds now plus ``headroom`` bytes; the dict it yields gets
    ``ooms``, the allocator's out-of-memory count inside, on exit."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    _sync(device)
    _free(device)
    total = torch.cuda.get_device_properties(index).total_memory
    held = torch.cuda.memory_reserved(index)
    info: dict[str, Any] = {"held_bytes": held, "cap_bytes": held + headroom, "fraction": (held + headroom) / total}
    before = torch.cuda.memory_stats(index).get("num_ooms", 0)
    torch.cuda.set_per_process_memory_fraction(min(1.0, info["fraction"]), index)
    try:
        yield info
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
        info["ooms"] = torch.cuda.memory_stats(index).get("num_ooms", 0) - before
        _free(device)


def oom_case(model, pair, kind: str, method: str, small_batch: int, cap: Callable[[], Any]) -> dict:
    """One sweep as a single chunk under ``cap`` (a context manager yielding a dict that gets ``ooms``) against the
    same sweep in chunks of ``small_batch``, uncapped; and the model's logits before and after."""
    from mechpatch.patching import sweep

    def run(batch_size: int):
        return sweep(model, pair, kind, metric="logit_diff", by_position=True, method=method, batch_size=batch_size,
                     progress=False)

    with torch.inference_mode():
        logits_before = model.bridge(pair.corrupted).float().cpu()
    small = run(small_batch)
    executed = int((~small.noop).sum())
    t = time.perf_counter()
    with cap() as info:
        big = run(small.noop.numel())  # every variant in one chunk
    seconds = time.perf_counter() - t
    with torch.inference_mode():
        logits_after = model.bridge(pair.corrupted).float().cpu()
    diff, same = _compare(big.values, small.values, OOM_TOL)
    halvings = big.meta.get("oom_halvings", 0)  # the engine's own count
    assert halvings == big.meta["forwards"] - 1  # one chunk at the start; each halving turns one chunk into two
    unchanged = float((logits_after - logits_before).abs().max())
    row = {"kind": kind, "method": big.meta["method"], "variants": int(small.noop.numel()), "executed": executed,
           "forwards": big.meta["forwards"], "halvings": halvings,
           "mean_chunk": round(executed / big.meta["forwards"], 1) if big.meta["forwards"] else None,
           "allocator_ooms": info["ooms"], "ooms_equal_halvings": info["ooms"] == halvings,
           "cap": {k: v for k, v in info.items() if k != "ooms"}, "capped_seconds": round(seconds, 2),
           "max_abs_diff_vs_small_batch": diff, "small_batch": small_batch,
           "model_unchanged_max_abs": unchanged}
    row["pass"] = bool(same and halvings >= 1 and info["ooms"] >= 1 and unchanged <= 1e-6 * max(
        1.0, float(logits_before.abs().max())) and torch.equal(big.noop, small.noop))
    return row


def check_oom(device: torch.device) -> dict:
    from mechpatch.zoo.architectures import random_model

    if device.type != "cuda":
        return {"status": "skipped: needs CUDA"}
    model = random_model("gpt2", "base", device=device)
    pair = random_pair(model, n=8, seq=32, corrupt=(8, 16))
    cases = [oom_case(model, pair, kind, method, small, lambda: cuda_memory_cap(device, OOM_HEADROOM))
             for kind, method, small in (("head", "fast", 64), ("resid_pre", "hooks", 8))]
    for c in cases:
        log(f"  {c['method']} {c['kind']}: {c['halvings']} halvings, {c['allocator_ooms']} OOMs, "
            f"max |diff| {c['max_abs_diff_vs_small_batch']:.2g}")
    return {"status": "pass" if all(c["pass"] for c in cases) else "fail", "model": model.name,
            "headroom_bytes": OOM_HEADROOM, "tolerance": OOM_TOL, "cases": cases}


# ----------------------------------------------------------------------------- 3-4. benchmark scripts


def run_script(name: str, script: str, args: list[str], timeout: float, env: dict) -> tuple[dict, list[str]]:
    """Run a benchmark script, echoing its output: (a record with its last stdout line parsed as JSON, ``result``;
    every stdout line)."""
    cmd = [sys.executable, str(BENCH_DIR / script), *args]
    shown = " ".join([f"experiments/benchmarks/{script}", *args])
    log(f"  $ {shown}  (time-out {timeout:.0f} s)")
    lines: list[str] = []
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, errors="replace", cwd=REPO,
                                env=env)

        def pump() -> None:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                log(f"  [{name}] {line.rstrip()[:160]}")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc, timed_out = proc.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            proc.kill()
            rc, timed_out = proc.wait(), True
        reader.join(10)
        err.seek(0)
        stderr = err.read()
    out: dict[str, Any] = {"command": shown, "returncode": rc, "timed_out": timed_out, "timeout_s": round(timeout),
                           "run_seconds": round(time.perf_counter() - t, 1), "result": None}
    last = next((line for line in reversed(lines) if line.strip()), "")
    try:
        parsed = json.loads(last)
        out["result"] = parsed if isinstance(parsed, dict) else None
    except json.JSONDecodeError:
        pass
    if rc != 0 or out["result"] is None:
        out["stdout_tail"] = "\n".join(lines[-15:])[-3000:]
        out["stderr_tail"] = stderr[-3000:]
    return out, lines


def allot(name: str, sizes: Sizes, clock: Clock, later: tuple[str, ...]) -> Optional[float]:
    """The time-out stage ``name`` gets: its cap, less what the later stages' floors need; None if below its floor."""
    cap, floor = sizes.caps[name]
    timeout = min(cap, clock.left() - sum(sizes.caps[n][1] for n in later))
    return timeout if timeout >= floor else None


def check_bench_patching(device: torch.device, sizes: Sizes, clock: Clock, env: dict, later: tuple) -> dict:
    timeout = allot("bench_patching", sizes, clock, later)
    if timeout is None:
        return {"status": f"skipped: time budget ({clock.left():.0f} s left)"}
    run, _ = run_script("bench_patching", "bench_patching.py", [*sizes.patching_args, "--device", str(device)],
                        timeout, env)
    res = run["result"]
    if res is None or run["returncode"] != 0:
        return {"status": "fail", **run}
    rows = [(m["model"], k, v) for m in res.get("models", []) for k, v in m.items() if isinstance(v, dict)]
    worst = max((v.get("max_abs_diff_vs_tl", math.inf) for _, _, v in rows), default=math.inf)
    speedups = {f"{m} {k}": v.get("speedup_vs_tl") for m, k, v in rows}
    by_pos = [s for key, s in speedups.items() if key.endswith("_by_pos") and s is not None]
    return {"status": "pass" if rows and worst <= TL_AGREEMENT else "fail", "gated_on": "runs; agrees with TL",
            "max_abs_diff_vs_tl": worst, "tl_agreement_tolerance": TL_AGREEMENT, "speedup_vs_tl": speedups,
            "min_by_position_speedup": min(by_pos, default=None),
            "by_position_20x_goal_met": (min(by_pos) >= 20) if by_pos else None, **run}


def check_bench_circuit(name: str, args: list[str], sizes: Sizes, clock: Clock, env: dict, later: tuple) -> dict:
    timeout = allot(name, sizes, clock, later)
    if timeout is None:
        return {"status": f"skipped: time budget ({clock.left():.0f} s left)"}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:  # not results/, which holds the committed figures
        run, _ = run_script(name, "bench_circuit.py", [*args, "--warmup", "--out", f"{tmp}/{name}.json"], timeout, env)
    res = run["result"]
    if res is None or run["returncode"] != 0:
        return {"status": "fail", **run}
    rows = res.get("models", [])
    differ = [r["model"] for r in rows if r.get("same_edges") is False]
    return {"status": "pass" if rows and not differ else "fail", "gated_on": "runs; same edges as the reference",
            "edges_differ": differ, **run}


def check_acdc_goal(device: torch.device, circuit_checks: list[dict]) -> dict:
    rows = []
    for check in circuit_checks:
        for r in (check.get("result") or {}).get("models", []):
            gated = r["model"].startswith("gpt2")
            rows.append({"model": r["model"], "speedup": r.get("speedup"), "same_edges": r.get("same_edges"),
                         "extrapolated": bool(r.get("reference_extrapolated")), "gated": gated,
                         "meets_goal": gated and r.get("speedup") is not None and r["speedup"] >= ACDC_GOAL
                         and r.get("same_edges") is not False})
    out: dict[str, Any] = {"goal": ACDC_GOAL, "rows": rows}
    if device.type != "cuda":
        return {"status": f"skipped: the {ACDC_GOAL:g}x goal is for a GPU (ratios recorded)", **out}
    gated = [r for r in rows if r["gated"]]
    if not gated:
        return {"status": "fail", "why": "no GPT-2-shaped ACDC row was measured", **out}
    return {"status": "pass" if all(r["meets_goal"] for r in gated) else "fail", **out}


def arch_groups(names: Optional[tuple[str, ...]], size: int) -> list[list[str]]:
    """``names`` (None: every architecture, gpt2 and llama3 first) in groups of ``size``."""
    from mechpatch.zoo.architectures import ARCHITECTURES

    order = list(names) if names is not None else list(MUST_RUN) + [a for a in ARCHITECTURES if a not in MUST_RUN]
    return [order[i:i + size] for i in range(0, len(order), size)]


def check_bench_architectures(device: torch.device, sizes: Sizes, clock: Clock, env: dict) -> dict:
    script = BENCH_DIR / "bench_architectures.py"
    if not script.exists():
        return {"status": "skipped: experiments/benchmarks/bench_architectures.py not found"}
    text = script.read_text()
    groups = arch_groups(sizes.arch_names, sizes.arch_group)
    cap, floor = sizes.caps["bench_architectures"]
    end = clock.elapsed() + min(cap, clock.left())
    runs, entries, not_run = [], [], []
    for group in groups:
        timeout = min(end - clock.elapsed(), clock.left())
        if timeout < floor:
            not_run += group
            continue
        args = ["--size", sizes.arch_size, "--archs", ",".join(group)]
        args += ["--device", str(device)] if '"--device"' in text else []
        run, lines = run_script("bench_architectures", script.name, args, timeout, env)
        runs.append(run)
        entries += (run["result"] or {}).get("architectures", []) or partial_rows(lines)
    errors = [e["architecture"] for e in entries if "error" in e]
    disagree = [e["architecture"] for e in entries for s in e.get("sweeps", {}).values() if s.get("agree") is False]
    failed_runs = [r["command"] for r in runs if r["returncode"] != 0 or r["result"] is None]
    status = "fail" if errors or disagree or failed_runs or not entries else "pass"
    goals = {e["architecture"]: e.get("goals", {}).get("all") for e in entries if "goals" in e}
    return {"status": status, "gated_on": "runs; the three results agree", "size": sizes.arch_size,
            "errors": errors, "disagree": disagree, "failed_runs": failed_runs,
            "not_run_time_budget": not_run, "speed_goals_met": goals, "architectures": entries,
            "runs": [{k: v for k, v in r.items() if k != "result"} for r in runs]}


def partial_rows(lines: list[str]) -> list[dict]:
    """What a killed bench_architectures run printed before its JSON: its '<arch> <sweep> {...}' progress lines."""
    entries: dict[str, dict] = {}
    for line in lines:
        m = re.match(r"(\w+) (\w+) (\{.*\})$", line)
        if m:
            try:
                entries.setdefault(m[1], {"architecture": m[1], "partial": True, "sweeps": {}})["sweeps"][m[2]] = \
                    json.loads(m[3])
            except json.JSONDecodeError:
                pass
    return list(entries.values())


# ----------------------------------------------------------------------------- the run


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.machine())
    except OSError:
        return platform.processor() or platform.machine()


def _version(package: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict:
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True,
                                timeout=10, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"device": str(device), "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "transformers": _version("transformers"), "transformer_lens": _version("transformer-lens"),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def run_check(name: str, fn: Callable[[], dict], results: dict, device: torch.device) -> dict:
    """Run one check, timed; an exception is recorded as its failure."""
    log(f"== {name}")
    t = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001  (a failing check is a result; the others still run)
        out = {"status": "fail", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    finally:
        _free(device)
    out["seconds"] = round(time.perf_counter() - t, 1)
    results["checks"][name] = out
    log(f"== {name}: {out['status']} ({out['seconds']} s)")
    return out


def _json_safe(x: Any) -> Any:
    """NaN and infinities as strings (JSON has none)."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (a smoke test)")
    parser.add_argument("--quick", action="store_true", help="small everything (the CPU smoke test)")
    parser.add_argument("--out", default=None, help="also write the JSON object to this file")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"wall-clock seconds for the whole run (default {FULL.budget_s:g}; "
                             f"{QUICK.budget_s:g} with --quick); the benchmarks' time-outs scale with it")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads, here and in the subprocesses (default: torch's; 1 with --device cpu)")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device must be cuda, cuda:N or cpu; got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        print(f"gpu_check: no CUDA device found (torch {torch.__version__}, {build}). Run it on a machine with an "
              "NVIDIA GPU, or pass --device cpu --quick for a smoke test of the script.", file=sys.stderr)
        return 2
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device must be cuda, cuda:N or cpu; got {args.device!r}")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        parser.error(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    sizes = QUICK if args.quick else FULL
    if args.budget:  # the stages' caps and floors scale with the budget
        scale = args.budget / sizes.budget_s
        sizes = replace(sizes, budget_s=args.budget, exact_cap_s=sizes.exact_cap_s * scale,
                        caps={k: (cap * scale, floor * scale) for k, (cap, floor) in sizes.caps.items()})
    clock = Clock(sizes.budget_s)
    torch.set_float32_matmul_precision("highest")  # no TF32: the exactness tolerances are float32's
    env = {**os.environ, "TQDM_DISABLE": "1"}
    # on a CPU, one thread: the small models gain little from more, and on a shared machine (the 2-core boxes this
    # smoke test runs on) oversubscribed OpenMP threads made the quick run 5-10x slower
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    results: dict[str, Any] = {"check": "gpu_check", "quick": args.quick, "budget_s": clock.budget_s,
                               **environment(device), "checks": {}}
    log(f"gpu_check on {results['device_name']} ({device}), torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"budget {clock.budget_s:g} s")
    run_all(device, sizes, clock, env, results)
    statuses = {n: c["status"] for n, c in results["checks"].items()}
    results["wall_seconds"] = round(clock.elapsed(), 1)
    results["statuses"] = statuses
    results["status"] = "fail" if any(s == "fail" for s in statuses.values()) else "pass"
    log("\n".join(f"  {n:<20} {s}" for n, s in statuses.items()))
    log(f"gpu_check: {results['status']} in {results['wall_seconds']} s")
    text = json.dumps(_json_safe(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text, flush=True)
    return 0 if results["status"] == "pass" else 1


def run_all(device: torch.device, sizes: Sizes, clock: Clock, env: dict, results: dict) -> None:
    """Every check in order, each recorded in ``results["checks"]``."""
    dev = str(device)
    circuit_12l = sizes.circuit_12l and device.type == "cuda"
    later_than_patching = ("bench_circuit",) + (("bench_circuit_12l",) if circuit_12l else ()) + \
        ("bench_architectures",)
    run_check("exactness", lambda: check_exactness(device, sizes, clock), results, device)
    run_check("bfloat16", lambda: check_bfloat16(device, sizes), results, device)
    run_check("oom_halving", lambda: check_oom(device), results, device)
    run_check("bench_patching", lambda: check_bench_patching(device, sizes, clock, env, later_than_patching),
              results, device)
    circuits = [run_check("bench_circuit", lambda: check_bench_circuit(
        "bench_circuit", [*sizes.circuit_args, "--device", dev], sizes, clock, env, later_than_patching[1:]),
        results, device)]
    if circuit_12l:
        circuits.append(run_check("bench_circuit_12l", lambda: check_bench_circuit(
            "bench_circuit_12l", ["--models", "gpt2-small", "--layers", "12", "--reference-sample", "40", "--tau",
                                  "1e-3", "--device", dev], sizes, clock, env, ("bench_architectures",)),
            results, device))
    else:
        results["checks"]["bench_circuit_12l"] = {"status": "skipped: full run on CUDA only", "seconds": 0.0}
    run_check("acdc_goal", lambda: check_acdc_goal(device, circuits), results, device)
    run_check("bench_architectures", lambda: check_bench_architectures(device, sizes, clock, env), results, device)


if __name__ == "__main__":
    raise SystemExit(main())
