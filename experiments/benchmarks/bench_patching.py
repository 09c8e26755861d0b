"""Patching speed: mechpatch's engine vs TransformerLens's patching functions, same inputs, same run.

Sweeps: (a) every head, all positions; (b) every head by position; (c) resid_pre by layer x position,
on a 4-layer small GPT-2-shaped model and a GPT-2-small-shaped model (12 layers, 12 heads, d_model
768, vocabulary 50257, random weights), 8 prompts of 16 tokens, logit-difference metric.

For each: wall time of TransformerLens (one forward per patch), wall time of mechpatch (auto method),
their ratio, the largest difference between the two results, and the engine's efficiency: the time
plain batched forwards of just the layers/positions that must be recomputed take (each row from its
first patched layer and position, answer logits only, same chunks; no patching, no metric, no set-up)
divided by the engine's time; and the same with the two unpatched forwards (clean, corrupted) that
any patching needs added to the ideal.

Usage: python experiments/benchmarks/bench_patching.py [--quick] [--device cpu|cuda]
Last line of output: one JSON object with every figure.
"""

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from mechpatch import load_model, make_pair  # noqa: E402
from mechpatch.patching import sweep  # noqa: E402
from mechpatch.patching import fast  # noqa: E402
from mechpatch.patching.sweeps import make_grid  # noqa: E402
from mechpatch.patching.plan import compile_plan  # noqa: E402
from mechpatch.patching.metrics import Readout  # noqa: E402

SWEEPS = {
    "heads_all_pos": ("head", False, "get_act_patch_attn_head_out_all_pos"),
    "heads_by_pos": ("head", True, "get_act_patch_attn_head_out_by_pos"),
    "resid_by_pos": ("resid_pre", True, "get_act_patch_resid_pre"),
}


def gpt2_model(n_layer: int, n_head: int, d_model: int, vocab: int, device: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=d_model, n_positions=64, vocab_size=vocab)
    return load_model(GPT2LMHeadModel(cfg).eval(), device=device, name=f"gpt2-shaped-{n_layer}L-d{d_model}")


def timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


def ideal_time(model, pair, kind, by_position, batch_size, noop=None) -> float:
    """Plain batched forwards of exactly what the patches can change: each row from its first patched
    layer and position on (cached residuals and keys/values before that), final logits of the answer
    tokens at the last position only; no patching, no metric, no set-up. Same chunks as the engine.
    With ``noop`` (the result's no-op flags, one per grid cell), the cells the engine skips are left out
    of the bound too (without it, a grid with no-op cells can give an efficiency above 1)."""
    grid = make_grid(model, kind, pair.seq_len, by_position)
    plan = compile_plan(model, grid.cells, pair.seq_len)
    readout = Readout([pair.seq_len - 1], torch.unique(pair.answers))
    state = fast.prepare(fast.weights(model), plan, pair.corrupted, readout)
    n = pair.n_prompts

    def baselines():
        with torch.inference_mode():
            for tokens in (pair.clean, pair.corrupted):
                fast.hook_values(state.fm, tokens, [], readout)

    order = state.order if noop is None else state.order[~noop.flatten()[state.order]]

    def run():
        with torch.inference_mode():
            for ids in torch.split(order, batch_size):
                ids = sorted(ids.tolist(), key=lambda v: state.starts[v][0])
                p0 = min(min(state.starts[v][1] for v in ids), pair.seq_len - 1)
                rows = torch.arange(n, device=pair.corrupted.device).repeat(len(ids))
                starts = [state.starts[v][0] for v in ids for _ in range(n)]
                fast.forward_rows(state, rows, starts, p0, {}, readout)

    return timed(run, repeats=2)[0], timed(baselines, repeats=2)[0]


def bench_model(model, n_prompts: int, seq_len: int, tl_repeats: int, sweeps=tuple(SWEEPS)) -> dict:
    import transformer_lens.patching as tlp

    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, model.spec.d_vocab, (n_prompts, seq_len), generator=g)
    corrupted = clean.clone()
    corrupted[:, seq_len // 2] = torch.randint(0, model.spec.d_vocab, (n_prompts,), generator=g)
    answers = torch.randint(0, model.spec.d_vocab, (n_prompts, 2), generator=g)
    pair = make_pair(model, clean.to(model.device), corrupted.to(model.device), answers=answers)

    def tl_metric(logits):
        last = logits[:, -1]
        return (last.gather(1, pair.answers[:, :1]) - last.gather(1, pair.answers[:, 1:])).mean()

    out = {"model": model.name, "n_layers": model.spec.n_layers, "d_model": model.spec.d_model,
           "n_heads": model.spec.n_heads, "d_vocab": model.spec.d_vocab}
    _, clean_cache = model.bridge.run_with_cache(pair.clean)
    for name, (kind, by_pos, tl_fn) in SWEEPS.items():
        if name not in sweeps:
            continue
        sweep(model, pair, kind, metric="logit_diff",
              by_position=by_pos)  # warm-up (weights extraction, fast-path check)
        t_ours, res = timed(lambda kind=kind, by_pos=by_pos: sweep(model, pair, kind, metric="logit_diff", by_position=by_pos), repeats=2)
        with torch.inference_mode():
            t_tl, tl_res = timed(lambda tl_fn=tl_fn: getattr(tlp, tl_fn)(model.bridge, pair.corrupted, clean_cache, tl_metric),
                                 repeats=tl_repeats)
        ours = res.mean()
        if by_pos and kind == "head":
            ours = ours.permute(0, 2, 1)
        budget_rows = None
        from mechpatch.cache import DEFAULT_MEMORY_BUDGET
        from mechpatch.patching.engine import _row_bytes

        per_variant = _row_bytes(model, seq_len, 1) * n_prompts
        budget_rows = max(1, DEFAULT_MEMORY_BUDGET // per_variant)
        t_ideal, t_baselines = ideal_time(model, pair, kind, by_pos, budget_rows)
        out[name] = {
            "patches": int(res.noop.numel()),
            "tl_s": round(t_tl, 4),
            "mechpatch_s": round(t_ours, 4),
            "speedup_vs_tl": round(t_tl / t_ours, 2),
            "ideal_recompute_s": round(t_ideal, 4),
            "efficiency": round(t_ideal / t_ours, 3),
            "unpatched_forwards_s": round(t_baselines, 4),
            "efficiency_incl_unpatched": round((t_ideal + t_baselines) / t_ours, 3),
            "max_abs_diff_vs_tl": float((ours.cpu() - tl_res.float().cpu()).abs().max()),
            "method": res.meta["method"],
            "forwards": res.meta["forwards"],
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model only (smoke test)")
    parser.add_argument("--sweeps", default=",".join(SWEEPS), help=f"comma-separated subset of {','.join(SWEEPS)}")
    parser.add_argument("--models", default="small,gpt2-small", help="comma-separated subset of small,gpt2-small")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    results = {
        "benchmark": "bench_patching",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "prompts": 8,
        "seq_len": 16,
        "models": [],
    }
    all_specs = {"small": (4, 4, 128, 50257), "gpt2-small": (12, 12, 768, 50257)}
    names = ["small"] if args.quick else args.models.split(",")
    sweeps = args.sweeps.split(",")
    unknown = [n for n in names if n not in all_specs] + [s for s in sweeps if s not in SWEEPS]
    if unknown:
        parser.error(f"unknown model or sweep {unknown}; valid models {list(all_specs)}, sweeps {list(SWEEPS)}")
    for name in names:
        model = gpt2_model(*all_specs[name], args.device)
        print(f"== {model}", flush=True)
        results["models"].append(bench_model(model, 8, 16, tl_repeats=1, sweeps=sweeps))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
