"""experiments/benchmarks/gpu_check.py: its CPU smoke run end to end, and its out-of-memory bookkeeping on a
simulated out-of-memory (the real one needs CUDA)."""

import importlib.util
import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "experiments" / "benchmarks" / "gpu_check.py"
CHECKS = ("exactness", "bfloat16", "oom_halving", "bench_patching", "bench_circuit", "bench_circuit_12l", "acdc_goal",
          "bench_architectures")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_cpu_run_reports_every_check(tmp_path):
    out = tmp_path / "gpu_check.json"
    # a budget well above the quick run's ~1 minute, so that a busy machine does not turn into time-outs
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--budget", "900", "--out",
                           str(out)], capture_output=True, text=True, timeout=1200, cwd=REPO,
                          check=False)
    last = proc.stdout.strip().splitlines()[-1]
    report = json.loads(last)
    assert proc.returncode == 0, (report["statuses"], proc.stderr[-2000:])
    assert json.loads(out.read_text()) == report
    assert tuple(report["checks"]) == CHECKS
    assert report["status"] == "pass" and report["device"] == "cpu" and report["quick"] is True
    for key in ("device_name", "torch", "date", "wall_seconds"):
        assert report[key] is not None
    assert report["torch_threads"] == 1  # the CPU default
    checks = report["checks"]
    assert all("status" in c and "seconds" in c for c in checks.values())
    exact = checks["exactness"]
    assert exact["status"] == "pass" and {"gpt2", "llama3"} <= set(exact["fast_path_archs"])
    for name in ("gpt2", "llama3"):
        arch = exact["archs"][name]
        assert arch["variants"] > 0 and arch["failures"] == []
        assert arch["max_abs_fast_vs_reference"] <= 1e-4 and arch["max_abs_device_vs_cpu"] == 0.0  # CPU vs CPU
    assert checks["bfloat16"]["status"] == "pass"
    assert all(0 < a["rel_diff"] <= checks["bfloat16"]["rel_tolerance"] for a in checks["bfloat16"]["archs"].values())
    assert checks["oom_halving"]["status"] == "skipped: needs CUDA"
    assert checks["bench_patching"]["status"] == "pass"
    assert checks["bench_patching"]["result"]["benchmark"] == "bench_patching"
    assert checks["bench_circuit"]["status"] == "pass"
    assert checks["bench_circuit"]["result"]["models"][0]["same_edges"] is True
    assert checks["bench_circuit_12l"]["status"].startswith("skipped")
    goal = checks["acdc_goal"]
    assert goal["status"].startswith("skipped: the 20x goal is for a GPU") and goal["rows"][0]["speedup"] > 0
    arch = checks["bench_architectures"]
    assert arch["status"] == "pass" or arch["status"].startswith("skipped: experiments/benchmarks/bench_arch")


def test_simulated_out_of_memory_is_counted_and_compared(gpu_check, monkeypatch):
    """oom_case's bookkeeping: halvings from the forwards, the cap's OOM count, values against the small batch."""
    from mechpatch.patching import fast
    from mechpatch.zoo.architectures import random_model

    model = random_model("gpt2", "tiny")
    pair = gpu_check.random_pair(model, n=2, seq=6, corrupt=(1, 3))
    real, sizes = fast.run_chunk, []

    def flaky(*args):
        sizes.append(len(args[-1]))
        if len(args[-1]) > 5:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(*args)

    @contextmanager
    def cap():
        info = {"held_bytes": 0, "cap_bytes": 0, "fraction": 0.0}
        seen = len(sizes)
        yield info
        info["ooms"] = sum(s > 5 for s in sizes[seen:])

    monkeypatch.setattr(fast, "run_chunk", flaky)
    row = gpu_check.oom_case(model, pair, "head", "fast", 4, cap)
    assert row["pass"], row
    assert row["halvings"] == row["allocator_ooms"] >= 2 and row["ooms_equal_halvings"]
    assert row["forwards"] == row["halvings"] + 1 and row["max_abs_diff_vs_small_batch"] <= 1e-5


def test_partial_rows_recover_a_killed_runs_progress_lines(gpu_check):
    lines = ["== gpt2 (base)", 'gpt2 heads_all_pos {"fast_s": 0.1, "agree": true}', "gpt2 resid_by_pos {broken",
             'llama3 heads_all_pos {"fast_s": 0.2}']
    rows = gpu_check.partial_rows(lines)
    assert [r["architecture"] for r in rows] == ["gpt2", "llama3"]
    assert rows[0]["sweeps"] == {"heads_all_pos": {"fast_s": 0.1, "agree": True}} and rows[0]["partial"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_it_stops_with_exit_code_2(gpu_check, capsys):
    assert gpu_check.main([]) == 2
    assert "no CUDA device found" in capsys.readouterr().err
