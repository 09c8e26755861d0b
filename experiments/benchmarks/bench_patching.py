"""Patching speed: mechpatch's engine vs TransformerLens's patching functions, same inputs, same run.

Sweeps: (a) every head, all positions; (b) every head by position; (c) resid_pre by layer x position,
on a 4-layer small GPT-2-shaped model and a GPT-2-small-shaped model (12 layers, 12 heads, d_model
768, vocabulary 50257, random weights), 8 prompts of 16 tokens, logit-difference metric.

For each: wall time of TransformerLens (one forward per patch), wall time of mechpatch (auto method),
their ratio, the largest difference between the two results, and the engine's efficiency: the time
plain batched forwards of just the layers/positions that must be recomputed take (same chunks, no
patching, no metric) divided by the engine's time.

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
from mechpatch.patching import functional as F_  # noqa: E402
from mechpatch.patching.sweeps import make_grid  # noqa: E402
from mechpatch.patching.plan import compile_plan  # noqa: E402

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


def ideal_time(model, pair, kind, by_position, batch_size) -> float:
    """Plain batched forwards of exactly the layers/positions the engine recomputes, same chunks."""
    grid = make_grid(model, kind, pair.seq_len, by_position)
    plan = compile_plan(model, grid.cells, pair.seq_len)
    state = fast.prepare(fast.weights(model), plan, pair.corrupted, [pair.seq_len - 1])
    fm, n = state.fm, pair.n_prompts

    def run():
        with torch.inference_mode():
            for ids in torch.split(state.order, batch_size):
                ids = ids.tolist()
                l0 = min(state.starts[v][0] for v in ids)
                p0 = min(min(state.starts[v][1] for v in ids), pair.seq_len - 1)
                rows = torch.arange(n, device=pair.corrupted.device).repeat(len(ids))
                resid = state.resid_pre[l0][rows, p0:]
                past = None
                if p0 > 0:
                    past = [None] * fm.n_layers
                    for l in range(l0, fm.n_layers):
                        past[l] = (state.kv[l][0][rows, :, :p0], state.kv[l][1][rows, :, :p0])
                out = F_.run_blocks(fm, resid, start_layer=l0, pos_offset=p0, past_kv=past)
                F_.unembed(fm, out[:, -1:])

    return timed(run, repeats=2)[0]


def bench_model(model, n_prompts: int, seq_len: int, tl_repeats: int) -> dict:
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
        sweep(model, pair, kind, by_position=by_pos)  # warm-up (weights extraction, fast-path check)
        t_ours, res = timed(lambda: sweep(model, pair, kind, by_position=by_pos), repeats=2)
        with torch.inference_mode():
            t_tl, tl_res = timed(lambda: getattr(tlp, tl_fn)(model.bridge, pair.corrupted, clean_cache, tl_metric),
                                 repeats=tl_repeats)
        ours = res.mean()
        if by_pos and kind == "head":
            ours = ours.permute(0, 2, 1)
        budget_rows = None
        from mechpatch.patching.engine import DEFAULT_BUDGET, _row_bytes

        per_variant = _row_bytes(model, seq_len, 1) * n_prompts
        budget_rows = max(1, DEFAULT_BUDGET // per_variant)
        t_ideal = ideal_time(model, pair, kind, by_pos, budget_rows)
        out[name] = {
            "patches": int(res.noop.numel()),
            "tl_s": round(t_tl, 4),
            "mechpatch_s": round(t_ours, 4),
            "speedup_vs_tl": round(t_tl / t_ours, 2),
            "ideal_recompute_s": round(t_ideal, 4),
            "efficiency": round(t_ideal / t_ours, 3),
            "max_abs_diff_vs_tl": float((ours.cpu() - tl_res.float().cpu()).abs().max()),
            "method": res.meta["method"],
            "forwards": res.meta["forwards"],
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model only (smoke test)")
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
    specs = [(4, 4, 128, 50257)] if args.quick else [(4, 4, 128, 50257), (12, 12, 768, 50257)]
    for n_layer, n_head, d_model, vocab in specs:
        model = gpt2_model(n_layer, n_head, d_model, vocab, args.device)
        print(f"== {model}", flush=True)
        results["models"].append(bench_model(model, 8, 16, tl_repeats=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
