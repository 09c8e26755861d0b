"""Patching speed per architecture: mechpatch's fast path, its hooks path and TransformerLens, same inputs, same run.

For each architecture of :data:`mechpatch.zoo.architectures.ARCHITECTURES` (random weights; ``--size base``: 12
layers, d_model 768, vocabulary 32000, about 100M parameters; ``--size tiny``: 2 layers, d_model 64, the smoke run),
on one random prompt pair (``--prompts`` x ``--seq`` tokens, two positions corrupted, two random answer tokens,
logit-difference metric), two sweeps:

- ``heads_all_pos``: every head, all positions (TransformerLens ``get_act_patch_attn_head_out_all_pos``);
- ``resid_by_pos``: resid_pre by layer x position (TransformerLens ``get_act_patch_resid_pre``).

Each sweep runs three ways: ``sweep(..., method="fast")``, ``sweep(..., method="hooks")`` and TransformerLens's own
function (one forward per patch). Reported: seconds of each (the least of ``--repeats`` timings, after one untimed
run of each engine method), TL / fast and hooks / fast, the largest differences between the three results, and the
engine's efficiency against the recompute bound as ``bench_patching.py`` defines it (its ``ideal_time``: plain
batched forwards of only what the patches can change, divided by the fast path's time). The bound leaves out the
grid's no-op cells as the engine does (patches whose source equals what they replace: in resid_by_pos the positions
before the first corrupted one); results before 2026-12-01 01:30 counted them, which put resid_by_pos above 1.

Where ``mechpatch.patching.fast.resolve`` gives a reason the fast path cannot run an architecture, the reason is
recorded, the sweep runs with ``method="auto"`` instead (what it fell back to is recorded from the result's
metadata), and the efficiency is not measured (it needs the fast path's forward).

Goals (field ``goals``; each architecture's ``goals`` says pass/fail/null per goal, null: not measured):
at least 3x TransformerLens on heads_all_pos, at least 5x on resid_by_pos (fast path, or what ``"auto"`` ran where
there is none), efficiency at least 0.8 on each sweep.

``--memory`` instead builds a random Llama-3-shaped model of about 1B parameters (0.98B) in bfloat16
(``random_model("llama3", size="1b")``), runs a small heads sweep (``--memory-layers``; 2 prompts x 8 tokens unless
``--prompts``/``--seq`` say otherwise) with ``memory_budget=--memory-budget`` and measures the peak memory above
what the loaded model holds: the process's resident set (VmHWM of /proc/self/status, reset before the sweep) on
CPU, ``torch.cuda.max_memory_allocated`` on CUDA. Then it runs one layer's heads with a budget below one chunk's
own estimate (``--impossible-budget``) and records whether the engine refuses it before running (a typed
``MemoryBudgetError``) or runs anyway.

Usage:
    python experiments/benchmarks/bench_architectures.py --size tiny --archs gpt2,llama3   # smoke run, seconds
    python experiments/benchmarks/bench_architectures.py --archs gpt2                      # one base-size model
    python experiments/benchmarks/bench_architectures.py --memory
Last line of output: one JSON object with every figure (also written to ``--out`` if given).
"""

import argparse
import gc
import json
import os
import platform
import resource
import sys
import time
from typing import Any, Optional

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_patching  # noqa: E402  (its sweep table, timer and recompute bound)
from bench_patching import ideal_time, timed  # noqa: E402

from mechpatch import make_pair  # noqa: E402
from mechpatch.cache import DEFAULT_MEMORY_BUDGET, parse_bytes  # noqa: E402
from mechpatch.errors import MechpatchError  # noqa: E402
from mechpatch.patching import fast, sweep  # noqa: E402
from mechpatch.patching.engine import _row_bytes  # noqa: E402
from mechpatch import prompts  # noqa: E402
from mechpatch.prompts import PromptPair  # noqa: E402
from mechpatch.zoo.architectures import ARCHITECTURES, random_model  # noqa: E402

#: name -> (sweep kind, by_position, TransformerLens function), as bench_patching.py names them
SWEEPS = {name: bench_patching.SWEEPS[name] for name in ("heads_all_pos", "resid_by_pos")}

#: (goal name, sweep, result field, least value that passes)
GOALS = (
    ("heads_all_pos_speedup_vs_tl", "heads_all_pos", "speedup_vs_tl", 3.0),
    ("resid_by_pos_speedup_vs_tl", "resid_by_pos", "speedup_vs_tl", 5.0),
    ("heads_all_pos_efficiency", "heads_all_pos", "efficiency", 0.8),
    ("resid_by_pos_efficiency", "resid_by_pos", "efficiency", 0.8),
)
AGREEMENT_RTOL = 1e-4  # the three results must agree to this, relative to the largest |effect| (reported, not asserted)


# ----------------------------------------------------------------------------- inputs


def random_pair(model, n_prompts: int, seq_len: int, seed: int = 1) -> PromptPair:
    """Random clean prompts; the corrupted ones differ at two positions (a quarter and half way); random answers."""
    return prompts.random_pair(model, n_prompts, seq_len, seed=seed, corrupt=corrupt_positions(seq_len))


def corrupt_positions(seq_len: int) -> list[int]:
    return sorted({seq_len // 4, seq_len // 2})


def tl_logit_diff(answers: torch.Tensor):
    """TransformerLens's metric form (logits -> scalar): mean logit difference at the last position."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        return (last.gather(1, answers[:, :1]) - last.gather(1, answers[:, 1:])).mean()

    return metric


def engine_batch_rows(model, pair: PromptPair) -> int:
    """Variants per chunk under the default memory budget, sized as the engine sizes them (see bench_patching)."""
    return max(1, DEFAULT_MEMORY_BUDGET // (_row_bytes(model, pair.seq_len, 1) * pair.n_prompts))


# ----------------------------------------------------------------------------- one architecture


def _max_diff(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[float]:
    if a is None or b is None:
        return None
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def _ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    return None if num is None or not den else round(num / den, 2)


def work_ratio(model, pair: PromptPair, kind: str, by_pos: bool, noop: torch.Tensor) -> dict:
    """Multiply-adds (matrix products; the attention's own q.k and pattern.v products are left out: under 1% at
    these lengths) that TransformerLens's function runs over what a perfect engine must recompute, and from it how
    much of the measured speed-up is arithmetic saved and how much is a faster rate per multiply-add.

    TransformerLens runs, per patch, one whole forward: every layer at every position and the full-vocabulary
    unembedding. The engine must at least recompute, per patch that is not a no-op, from the patched layer on (for a
    head: that layer's output projection and MLP, then every later layer) at the positions from the patched one on;
    its logits (the answer columns at the last position) are a negligible cost.
    """
    spec, fm = model.spec, fast.weights(model)
    d, L, seq = spec.d_model, spec.n_layers, pair.seq_len
    qkv = d * spec.d_head * (spec.n_heads + 2 * spec.n_kv_heads)
    out_proj = spec.n_heads * spec.d_head * d
    mlp = 0 if spec.attn_only else (3 if fm.gated_mlp else 2) * d * spec.d_mlp
    layer = qkv + out_proj + mlp
    tl_per_patch = seq * (L * layer + d * spec.d_vocab)
    engine = 0
    if kind == "head" and not by_pos:  # all positions; one variant per (layer, head)
        live = ~noop.view(L, spec.n_heads)
        for layer_i in range(L):
            engine += int(live[layer_i].sum()) * seq * (out_proj + mlp + (L - layer_i - 1) * layer)
    elif kind == "resid_pre" and by_pos:  # one variant per (layer, position)
        live = ~noop.view(L, seq)
        for layer_i in range(L):
            for p in range(seq):
                engine += int(live[layer_i, p]) * (seq - p) * (L - layer_i) * layer
    else:
        raise ValueError(f"no multiply-add count for the sweep {kind!r}, by_pos={by_pos}")
    tl_total = tl_per_patch * noop.numel() * pair.n_prompts
    engine *= pair.n_prompts
    return {"tl_macs": tl_total, "engine_min_macs": engine, "mac_ratio": round(tl_total / engine, 2)}


def bench_sweep(model, pair: PromptPair, kind: str, by_pos: bool, tl_fn: str, clean_cache, fast_reason: Optional[str],
                repeats: int, skip_tl: bool) -> dict:
    """One sweep three ways: the fast path (or what "auto" falls back to), the hooks path and TransformerLens."""
    import transformer_lens.patching as tlp

    def run(method: str):
        return sweep(model, pair, kind, metric="logit_diff", by_position=by_pos, method=method)

    engine_method = "fast" if fast_reason is None else "auto"
    run(engine_method)  # warm-up (weights extraction, fast-path check)
    t_engine, engine_res = timed(lambda: run(engine_method), repeats=repeats)
    run("hooks")
    t_hooks, hooks_res = timed(lambda: run("hooks"), repeats=repeats)
    out: dict[str, Any] = {
        "patches": int(engine_res.noop.numel()),
        "noop_patches": int(engine_res.noop.sum()),  # need no forward (their source equals what they replace)
        "engine_method": engine_res.meta["method"],
        "engine_forwards": engine_res.meta["forwards"],
        "fast_s": round(t_engine, 4) if fast_reason is None else None,
        "hooks_s": round(t_hooks, 4),
        "hooks_forwards": hooks_res.meta["forwards"],
    }
    ours, hooks = engine_res.mean(), hooks_res.mean()
    if fast_reason is not None:
        out["fast_fallback"] = {"reason": fast_reason, "auto_s": round(t_engine, 4), "auto_meta": dict(engine_res.meta),
                                "auto_vs_hooks_max_abs_diff": _max_diff(ours, hooks)}
    tl_res, t_tl = None, None
    if not skip_tl:
        try:
            with torch.inference_mode():
                t_tl, tl_res = timed(lambda: getattr(tlp, tl_fn)(model.bridge, pair.corrupted, clean_cache,
                                                                 tl_logit_diff(pair.answers)), repeats=repeats)
        except Exception as exc:  # noqa: BLE001  (TransformerLens failing on an architecture is a result)
            out["tl_error"] = f"{type(exc).__name__}: {exc}"
    fast_vals = ours if fast_reason is None else None
    out.update({
        "tl_s": None if t_tl is None else round(t_tl, 4),
        "tl_over_fast": _ratio(t_tl, out["fast_s"]),
        "hooks_over_fast": _ratio(t_hooks, out["fast_s"]),
        "speedup_vs_tl": _ratio(t_tl, t_engine),  # TL / what the engine ran (fast, or auto's fallback)
    })
    scale = float((tl_res if tl_res is not None else hooks).float().abs().max()) or 1.0
    diffs = {"fast_vs_hooks": _max_diff(fast_vals, hooks), "fast_vs_tl": _max_diff(fast_vals, tl_res),
             "hooks_vs_tl": _max_diff(hooks, tl_res)}
    measured = [d for d in diffs.values() if d is not None]
    out["max_abs_diff"] = diffs
    out["max_rel_diff"] = max(measured) / scale if measured else None
    out["agree"] = None if not measured else out["max_rel_diff"] <= AGREEMENT_RTOL
    if fast_reason is None:
        work = work_ratio(model, pair, kind, by_pos, engine_res.noop)
        out["work"] = work
        if t_tl is not None:  # speed-up = mac_ratio x rate_ratio
            out["work"]["rate_ratio"] = round((work["engine_min_macs"] / t_engine) / (work["tl_macs"] / t_tl), 2)
        t_ideal, t_baselines = ideal_time(model, pair, kind, by_pos, engine_batch_rows(model, pair),
                                          noop=engine_res.noop)
        out.update({
            "ideal_recompute_s": round(t_ideal, 4),
            "efficiency": round(t_ideal / t_engine, 3),
            "unpatched_forwards_s": round(t_baselines, 4),
            "efficiency_incl_unpatched": round((t_ideal + t_baselines) / t_engine, 3),
        })
    else:
        out.update({"ideal_recompute_s": None, "efficiency": None, "unpatched_forwards_s": None,
                    "efficiency_incl_unpatched": None})
    return out


#: the real model: SmolLM2-135M from the zoo on IOI prompts (``--archs smollm2``), with the issue's goals for it
REAL_MODELS = {"smollm2": "smollm2-135m"}
REAL_GOALS = (
    ("heads_all_pos_speedup_vs_tl", "heads_all_pos", "speedup_vs_tl", 6.0),
    ("resid_by_pos_speedup_vs_tl", "resid_by_pos", "speedup_vs_tl", 12.0),
)


def ioi_pair(model, n_prompts: int, length: Optional[int] = None) -> PromptPair:
    """``n_prompts`` IOI prompts of one length (``length`` tokens, or the most common length of 64 generated), clean
    vs corrupted."""
    from mechpatch.tasks import make_task

    batches = make_task("ioi", model, n=64, seed=0).batches
    if length is None:
        pair = max(batches, key=lambda b: b.pair.clean.shape[0]).pair
    else:
        have = {b.pair.clean.shape[1]: b.pair for b in batches}
        if length not in have:
            raise SystemExit(f"no IOI prompts of {length} tokens; lengths generated: {sorted(have)}")
        pair = have[length]
    if pair.clean.shape[0] < n_prompts:
        raise SystemExit(f"only {pair.clean.shape[0]} IOI prompts share one length; ask for fewer --prompts")
    return make_pair(model, pair.clean[:n_prompts], pair.corrupted[:n_prompts], answers=pair.answers[:n_prompts])


def judge(entry: dict, goals=GOALS) -> dict:
    """Per goal: True/False, or None where its figure was not measured."""
    verdict = {}
    for name, sweep_name, field, least in goals:
        value = entry.get("sweeps", {}).get(sweep_name, {}).get(field)
        verdict[name] = None if value is None else bool(value >= least)
    verdict["all"] = all(v is True for v in verdict.values())
    return verdict


def bench_architecture(name: str, size: str, device: str, n_prompts: int, seq_len: int, repeats: int,
                       skip_tl: bool, ioi_len: Optional[int] = None) -> dict:
    t = time.perf_counter()
    if name in REAL_MODELS:
        from mechpatch import zoo

        model = zoo.load(REAL_MODELS[name], device=device)
    else:
        model = random_model(name, size, device=device)
    build_s = time.perf_counter() - t
    spec = model.spec
    features = ("the zoo's real model (Q4_1-dequantized weights), IOI prompts" if name in REAL_MODELS
                else ARCHITECTURES[name].features)
    entry: dict[str, Any] = {
        "architecture": name, "hf_class": spec.architecture, "features": features,
        "n_layers": spec.n_layers, "d_model": spec.d_model, "n_heads": spec.n_heads, "n_kv_heads": spec.n_kv_heads,
        "d_vocab": spec.d_vocab, "parameters": sum(p.numel() for p in model.bridge.parameters()),
        "build_s": round(build_s, 2),
    }
    reason, _ = fast.resolve(model)
    entry["fast_path"] = reason is None
    entry["fast_reason"] = reason
    pair = ioi_pair(model, n_prompts, ioi_len) if name in REAL_MODELS else random_pair(model, n_prompts, seq_len)
    entry["prompts"], entry["seq_len"] = pair.n_prompts, pair.seq_len
    _, clean_cache = model.bridge.run_with_cache(pair.clean)
    entry["sweeps"] = {}
    for sweep_name, (kind, by_pos, tl_fn) in SWEEPS.items():
        entry["sweeps"][sweep_name] = row = bench_sweep(model, pair, kind, by_pos, tl_fn, clean_cache, reason,
                                                        repeats, skip_tl)
        print(f"{name} {sweep_name}", json.dumps(row), flush=True)
    entry["goals"] = judge(entry, REAL_GOALS if name in REAL_MODELS else GOALS)
    del clean_cache, model
    gc.collect()
    return entry


# ----------------------------------------------------------------------------- memory mode


def _status_mib(field: str) -> Optional[float]:
    """A field of /proc/self/status (VmRSS, VmHWM) in MiB; None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _release_freed() -> None:
    """Hand freed heap memory back to the system (glibc), so that the resident set is what is in use."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak(device: torch.device) -> bool:
    """Reset the peak-memory counters: the process's VmHWM (Linux >= 4.0) and CUDA's. False if VmHWM cannot be."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak(fn, model, budget: int, rss0: Optional[float] = None, cuda0: Optional[int] = None) -> dict:
    """Run ``fn()`` (a sweep); its peak memory above ``rss0``/``cuda0`` (default: what is held just before).

    The peak is the resident set's high-water mark since a reset (VmHWM) on CPU, and CUDA's peak allocated memory on
    CUDA; ``within_budget`` compares that growth with ``budget``. A typed mechpatch error counts as a refusal.
    """
    device = model.device
    _release_freed()
    rss0 = _status_mib("VmRSS") if rss0 is None else rss0
    if device.type == "cuda" and cuda0 is None:
        cuda0 = torch.cuda.memory_allocated()
    reset = _reset_peak(device)
    out: dict[str, Any] = {}
    t = time.perf_counter()
    try:
        res = fn()
        out.update(refused=False, forwards=res.meta["forwards"], meta=dict(res.meta))
    except MechpatchError as exc:  # MemoryBudgetError, or any typed refusal
        out.update(refused=True, error_type=type(exc).__name__, error=str(exc))
    if device.type == "cuda":
        torch.cuda.synchronize()
    out["seconds"] = round(time.perf_counter() - t, 2)
    hwm = _status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["rss_before_mib"] = None if rss0 is None else round(rss0, 1)
    out["rss_peak_mib"] = None if hwm is None else round(hwm, 1)
    out["rss_after_mib"] = _status_mib("VmRSS")
    out["rss_peak_is_since_reset"] = reset  # False: ru_maxrss, the whole process's peak (loading included)
    growth = None
    if hwm is not None and rss0 is not None:
        out["rss_peak_growth_mib"] = round(hwm - rss0, 1)
        growth = (hwm - rss0) * 2**20 if reset else None
    if device.type == "cuda":
        growth = torch.cuda.max_memory_allocated() - cuda0
        out["cuda_peak_growth_mib"] = round(growth / 2**20, 1)
    out["peak_growth_bytes"] = None if growth is None else int(growth)
    out["within_budget"] = None if growth is None else bool(growth <= budget)
    return out


def memory_check(device: str, n_prompts: int, seq_len: int, layers: Optional[list[int]], budget_text: str,
                 impossible_text: str) -> dict:
    """The 1B-parameter bfloat16 model: a heads sweep's peak memory against its ``memory_budget``, and a budget
    below one chunk's own estimate, which should be refused before anything runs."""
    t = time.perf_counter()
    model = random_model("llama3", "1b", device=device, dtype="bfloat16")
    build_s = time.perf_counter() - t
    _release_freed()
    rss_load = _status_mib("VmRSS")
    cuda_load = torch.cuda.memory_allocated() if model.device.type == "cuda" else None
    spec = model.spec
    pair = random_pair(model, n_prompts, seq_len)
    budget, impossible = parse_bytes(budget_text), parse_bytes(impossible_text)
    per_variant = _row_bytes(model, seq_len, 1) * n_prompts  # the engine's estimate of one variant's rows
    layers = list(range(spec.n_layers)) if layers is None else layers
    out: dict[str, Any] = {
        "model": model.name, "dtype": str(model.dtype).replace("torch.", ""), "n_layers": spec.n_layers,
        "d_model": spec.d_model, "parameters": sum(p.numel() for p in model.bridge.parameters()),
        "build_s": round(build_s, 1), "rss_after_load_mib": rss_load,
        "cuda_allocated_after_load_mib": None if cuda_load is None else round(cuda_load / 2**20, 1),
        "prompts": n_prompts, "seq_len": seq_len, "layers": layers, "engine_bytes_per_variant": per_variant,
    }
    print(f"== {model.name}: {out['parameters'] / 1e9:.2f}B parameters, built in {build_s:.0f}s, "
          f"{rss_load:.0f} MiB resident", flush=True)

    def heads(layer_list: list[int], mem: int):
        return lambda: sweep(model, pair, "head", metric="logit_diff", by_position=False, layers=layer_list,
                             method="auto", memory_budget=mem)

    info = {"bytes": budget, "text": budget_text, "variants": len(layers) * spec.n_heads,
            "variants_per_chunk": max(1, budget // per_variant)}
    # first call: relative to the model just loaded (includes what the first sweep sets up and keeps, e.g. the
    # fast path's copy of the weights); repeat: relative to just before it (the sweep's transient memory)
    out["budget"] = {**info, "first_call": measure_peak(heads(layers, budget), model, budget, rss_load, cuda_load)}
    out["fast_reason"] = fast.resolve(model)[0]
    out["budget"]["repeat"] = measure_peak(heads(layers, budget), model, budget)
    print("budget", json.dumps(out["budget"]), flush=True)
    out["impossible_budget"] = {"bytes": impossible, "text": impossible_text, "variants": spec.n_heads,
                                "below_one_variant_estimate": impossible < per_variant,
                                **measure_peak(heads(layers[-1:], impossible), model, impossible)}
    print("impossible_budget", json.dumps(out["impossible_budget"]), flush=True)
    out["refuses_impossible_budget"] = out["impossible_budget"]["refused"]
    return out


# ----------------------------------------------------------------------------- output


def machine_info(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": device, "python": platform.python_version()}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return format(v, spec) if isinstance(v, float) else str(v)


def table(entries: list[dict]) -> str:
    """One line per architecture and sweep, for people."""
    head = ("arch", "sweep", "engine", "fast_s", "hooks_s", "tl_s", "tl/fast", "hooks/fast", "vs_tl", "eff",
            "max_rel_diff", "goals")
    rows = [head]
    for e in entries:
        if "error" in e:
            rows.append((e["architecture"], "ERROR", e["error"][:80], *[""] * (len(head) - 3)))
            continue
        for name, s in e["sweeps"].items():
            goals = [g for g, sw, _, _ in GOALS if sw == name]
            mark = " ".join(f"{g.replace(name + '_', '')}:{_fmt(e['goals'][g])}" for g in goals if g in e['goals'])
            rows.append((e["architecture"], name, s["engine_method"], _fmt(s["fast_s"]), _fmt(s["hooks_s"]),
                         _fmt(s["tl_s"]), _fmt(s["tl_over_fast"]), _fmt(s["hooks_over_fast"]),
                         _fmt(s["speedup_vs_tl"]), _fmt(s["efficiency"]), _fmt(s["max_rel_diff"], ".1e"), mark))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for e in entries:
        if e.get("fast_reason"):
            lines.append(f"{e['architecture']}: no fast path ({e['fast_reason']}); method='auto' ran "
                         f"{next(iter(e['sweeps'].values()))['engine_method']!r}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=",".join(ARCHITECTURES),
                        help=f"comma-separated subset of {','.join(ARCHITECTURES)} (default: all), or "
                             f"{','.join(REAL_MODELS)} (the zoo's real model on IOI prompts)")
    parser.add_argument("--size", default="base", choices=("tiny", "base"))
    parser.add_argument("--prompts", type=int, default=None, help="prompts (default 4; 2 with --memory)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per prompt (default 16; 8 with --memory; for "
                        "smollm2: the IOI prompts of this length, default the most common length)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--repeats", type=int, default=None,
                        help="time each method this many times, keep the least (default 3 with --size tiny, else 1)")
    parser.add_argument("--skip-tl", action="store_true", help="do not run TransformerLens's patching functions")
    parser.add_argument("--memory", action="store_true", help="the 1B-parameter memory-budget check instead")
    parser.add_argument("--memory-budget", default="256MiB", help="memory_budget of the --memory sweep")
    parser.add_argument("--impossible-budget", default="1MiB",
                        help="a budget below one variant's chunk, which the engine should refuse (--memory)")
    parser.add_argument("--memory-layers", default="0,1,2,3",
                        help="layers whose heads the --memory sweep patches (comma-separated, or 'all')")
    parser.add_argument("--out", default=None, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    archs = [a for a in args.archs.split(",") if a]
    unknown = [a for a in archs if a not in ARCHITECTURES and a not in REAL_MODELS]
    if unknown:
        parser.error(f"unknown architecture(s) {unknown}; valid: {', '.join(ARCHITECTURES)}")
    repeats = args.repeats or (3 if args.size == "tiny" else 1)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    n_prompts = args.prompts or (2 if args.memory else 4)
    seq_len = args.seq or (8 if args.memory else 16)
    if seq_len < 4 or n_prompts < 1:
        parser.error("--seq must be at least 4 and --prompts at least 1")
    results: dict[str, Any] = {
        "benchmark": "bench_architectures", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_info(args.device), "prompts": n_prompts, "seq_len": seq_len,
    }
    if args.memory:
        results["mode"] = "memory"
        layers = None if args.memory_layers == "all" else [int(x) for x in args.memory_layers.split(",")]
        results["memory"] = memory_check(args.device, n_prompts, seq_len, layers, args.memory_budget,
                                         args.impossible_budget)
    else:
        results.update({"mode": "speed", "size": args.size, "corrupted_positions": corrupt_positions(seq_len),
                        "repeats": repeats, "agreement_rtol": AGREEMENT_RTOL,
                        "goals": {g: {"sweep": sw, "field": f, "at_least": v} for g, sw, f, v in GOALS},
                        "architectures": []})
        for name in archs:
            print(f"== {name} ({args.size})", flush=True)
            try:
                entry = bench_architecture(name, args.size, args.device, n_prompts, seq_len, repeats,
                                           args.skip_tl, ioi_len=args.seq)
            except Exception as exc:  # noqa: BLE001  (one architecture failing should not lose the others)
                entry = {"architecture": name, "error": f"{type(exc).__name__}: {exc}"}
                print(f"{name} failed: {entry['error']}", flush=True)
            results["architectures"].append(entry)
        print(table(results["architectures"]), flush=True)
    if args.out:
        from mechpatch.report import write_json

        write_json(args.out, results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
