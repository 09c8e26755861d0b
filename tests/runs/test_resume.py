"""Real `mechpatch sweep`, `discover` (ACDC) and `interactions` processes killed with SIGKILL mid-run resume from
their completed chunks (or checkpoint) and end with results bitwise identical to an uninterrupted run; a finished
run is not recomputed."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# 3 kinds x 31 chunks of 8 cells: about 3 s of patching on one CPU thread, after ~5 s of start-up
CONFIG = {
    "model": "induction-2l", "task": {"name": "induction", "args": {"n": 48, "block": 15}},
    "kinds": ["head", "q", "v"], "by_position": True, "chunk_size": 8, "seed": 0,
}
N_CHUNKS = 3 * 31


def _command(config, out_dir):
    return [sys.executable, "-m", "mechpatch", "sweep", str(config), "--out-dir", str(out_dir), "--quiet",
            "--threads", "1"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}


def _chunks(out_dir):
    return sorted(p for p in (out_dir / "chunks").rglob("*.safetensors")) if (out_dir / "chunks").exists() else []


def _digests(out_dir, folders=("results", "tensors", "chunks")):
    return {str(p.relative_to(out_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted((out_dir / folder).rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_killed_sweep_resumes_to_identical_results(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "out_dir": str(tmp_path / "unused")}))
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    t = time.perf_counter()
    subprocess.run(_command(config, whole), env=_env(), check=True, timeout=600)
    seconds_whole = time.perf_counter() - t

    _run_killed(_command(config, killed), killed, lambda: len(_chunks(killed)) >= 10)  # some chunks done, most not
    done_at_kill = len(_chunks(killed))
    assert 10 <= done_at_kill < N_CHUNKS

    t = time.perf_counter()
    subprocess.run(_command(config, killed), env=_env(), check=True, timeout=600)
    seconds_resume = time.perf_counter() - t
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["attempts"]) == 2
    # the second attempt computed only what the first had not written (a chunk being written when it died is redone)
    assert manifest["chunks_computed_last_attempt"] <= N_CHUNKS - done_at_kill + 1
    assert len(_chunks(killed)) == N_CHUNKS

    # bitwise: every result table, tensor file and chunk file; the same config in two directories (same seed)
    a, b = _digests(whole), _digests(killed)
    assert a == b and len(a) == 6 + 3 + N_CHUNKS
    assert json.loads((whole / "manifest.json").read_text())["config_hash"] == manifest["config_hash"]

    # a finished run is not recomputed: quick, and no result file is touched
    stamps = {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()}
    t = time.perf_counter()
    out = subprocess.run(_command(config, killed)[:-3] + ["--threads", "1"], env=_env(), check=True, timeout=600,
                         capture_output=True, text=True)
    seconds_finished = time.perf_counter() - t
    assert "already finished" in out.stdout
    assert {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()} == stamps
    assert seconds_finished < seconds_whole / 2
    print(f"\nuninterrupted {seconds_whole:.1f} s; killed after {done_at_kill}/{N_CHUNKS} chunks, resumed in "
          f"{seconds_resume:.1f} s; finished run re-invoked: {seconds_finished:.1f} s")


def _run_killed(command, out_dir, ready):
    """Start ``command`` and SIGKILL it as soon as ``ready()`` holds; fails the test if the run ended first."""
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the run ended (status {proc.returncode}) before it could be killed: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["status"] == "running" and not (out_dir / "report.html").exists()


def _finished_run_untouched(command, out_dir, seconds_whole):
    stamps = {p: p.stat().st_mtime_ns for p in out_dir.rglob("*") if p.is_file()}
    t = time.perf_counter()
    out = subprocess.run([c for c in command if c != "--quiet"], env=_env(), check=True, timeout=600,
                         capture_output=True, text=True)
    assert "already finished" in out.stdout
    assert {p: p.stat().st_mtime_ns for p in out_dir.rglob("*") if p.is_file()} == stamps
    assert time.perf_counter() - t < seconds_whole / 2


def _without_timings(path):
    def strip(d):
        return {k: strip(v) if isinstance(v, dict) else v for k, v in d.items() if "seconds" not in k}

    return strip(json.loads(path.read_text()))


def _command_for(kind, config, out_dir):
    return [sys.executable, "-m", "mechpatch", kind, str(config), "--out-dir", str(out_dir), "--quiet", "--threads",
            "1"]


# ACDC over the 81 edges of the induction model on 128 prompts: ~3.5 s of search (a checkpoint at most every second)
DISCOVER = {"model": "induction-2l", "task": "induction", "task_args": {"n": 128, "block": 10, "seed": 0},
            "method": "acdc", "metric": "task", "ablation": "corrupted", "tau": 0.05}


@pytest.mark.slow
def test_killed_discovery_resumes_to_identical_results(tmp_path):
    from safetensors.torch import load_file

    config = tmp_path / "discover.yaml"
    config.write_text(yaml.safe_dump({**DISCOVER, "out_dir": str(tmp_path / "unused")}))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    t = time.perf_counter()
    subprocess.run(_command_for("discover", config, whole), env=_env(), check=True, timeout=600)
    seconds_whole = time.perf_counter() - t
    assert json.loads((whole / "manifest.json").read_text())["resumed_at_receiver"] == 0

    checkpoint = killed / "chunks" / "acdc" / "00000.safetensors"
    _run_killed(_command_for("discover", config, killed), killed, checkpoint.exists)
    state = load_file(checkpoint)
    n_receivers = 25
    done_at_kill = int(state["next"][0])
    assert 0 < done_at_kill < n_receivers  # killed mid-search, after some receivers

    subprocess.run(_command_for("discover", config, killed), env=_env(), check=True, timeout=600)
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["attempts"]) == 2
    assert manifest["resumed_at_receiver"] == done_at_kill
    a, b = _digests(whole, ("results",)), _digests(killed, ("results",))
    assert a == b and len(a) == 2  # edges.parquet, faithfulness.parquet, bitwise
    assert _without_timings(whole / "summary.json") == _without_timings(killed / "summary.json")
    _finished_run_untouched(_command_for("discover", config, killed), killed, seconds_whole)
    print(f"\ndiscover: uninterrupted {seconds_whole:.1f} s; killed after {done_at_kill}/{n_receivers} receivers")


# 800 random masks over the 16 heads and the 137 exhaustive ones, 25 distinct masks per chunk: 30 chunks
INTERACTIONS = {"model": "redundant-induction-2l", "task": "induction", "task_args": {"n": 16, "block": 10, "seed": 0},
                "intervention": "mean", "n_masks": 800, "chunk_size": 25}
N_INTERACTION_CHUNKS = 30


@pytest.mark.slow
def test_killed_interactions_run_resumes_to_identical_results(tmp_path):
    config = tmp_path / "interactions.yaml"
    config.write_text(yaml.safe_dump({**INTERACTIONS, "out_dir": str(tmp_path / "unused")}))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    t = time.perf_counter()
    subprocess.run(_command_for("interactions", config, whole), env=_env(), check=True, timeout=600)
    seconds_whole = time.perf_counter() - t
    assert len(_chunks(whole)) == N_INTERACTION_CHUNKS

    _run_killed(_command_for("interactions", config, killed), killed, lambda: len(_chunks(killed)) >= 8)
    done_at_kill = len(_chunks(killed))
    assert 8 <= done_at_kill < N_INTERACTION_CHUNKS

    subprocess.run(_command_for("interactions", config, killed), env=_env(), check=True, timeout=600)
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["attempts"]) == 2
    assert manifest["chunks_loaded_last_attempt"] == done_at_kill
    assert manifest["chunks_computed_last_attempt"] == N_INTERACTION_CHUNKS - done_at_kill
    # bitwise: the result tables and every chunk file
    a, b = _digests(whole, ("results", "chunks")), _digests(killed, ("results", "chunks"))
    assert a == b and len(a) == 2 + N_INTERACTION_CHUNKS
    assert _without_timings(whole / "summary.json") == _without_timings(killed / "summary.json")
    _finished_run_untouched(_command_for("interactions", config, killed), killed, seconds_whole)
    print(f"\ninteractions: uninterrupted {seconds_whole:.1f} s; killed after {done_at_kill}/{N_INTERACTION_CHUNKS} "
          "chunks")
