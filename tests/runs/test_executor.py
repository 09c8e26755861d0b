"""Sweeps on Ray actors (``executor: {ray: ...}``) against the local executor, on a real local Ray runtime.

Every Ray run here starts its own Ray runtime (or joins one the test starts with ``ray start --head``), loads the
bundled induction model in each worker and must end with results bitwise equal to the local executor's, through a
worker killed with SIGKILL mid-run, a driver killed mid-run, and runs moved between executors. Workers compute with
one thread each (``cpus_per_worker: 1``), so the local runs here do too: a matrix product may add in another order
with another number of threads, and bitwise equality is a property of the same computation.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from mechpatch.config import ConfigError, from_dict
from mechpatch.runs.executor import (
    ExecutorUnavailableError, JobSpec, RayExecutor, WorkerError, check_executor, parse_executor,
)
from mechpatch.runs.store import config_hash, read_tensors
from mechpatch.runs.sweep import SweepConfig, run_sweep

CONFIG = {"model": "induction-2l", "task": {"name": "induction", "args": {"n": 6, "block": 6}},
          "kinds": ["resid_pre", "head"], "chunk_size": 3, "seed": 0}
RAY = {"ray": {"workers": 2}}


@pytest.fixture(autouse=True)
def one_thread():
    """The local executor computes with one thread, as each Ray worker does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(out_dir, **changes) -> SweepConfig:
    return from_dict(SweepConfig, {**CONFIG, "out_dir": str(out_dir), **changes})


def _chunks(run_dir) -> dict[str, dict[str, torch.Tensor]]:
    """Every chunk file's tensors and every result tensor file, by path relative to the run directory."""
    out = {}
    for sub in ("chunks", "tensors"):
        for root, _, files in os.walk(os.path.join(run_dir, sub)):
            for f in files:
                if f.endswith(".safetensors"):
                    path = os.path.join(root, f)
                    out[os.path.relpath(path, run_dir)] = read_tensors(path)[0]
    return out


def assert_same_run(a, b) -> None:
    """Two run directories hold bitwise-identical chunks and results."""
    ca, cb = _chunks(a), _chunks(b)
    assert ca.keys() == cb.keys() and len(ca) > 4
    for name in ca:
        assert ca[name].keys() == cb[name].keys(), name
        for key in ca[name]:
            assert torch.equal(ca[name][key], cb[name][key]), f"{name}: {key}"


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_sweep(_cfg(out), quiet=True)
    finally:
        torch.set_num_threads(threads)
    return out


# ----------------------------------------------------------------------------- settings, checked before any work


def test_executor_settings_are_checked_and_not_part_of_the_config_hash(tmp_path):
    assert parse_executor("local").kind == "local"
    spec = parse_executor({"ray": {"address": "127.0.0.1:6379", "workers": 3, "cpus_per_worker": 2}})
    assert (spec.kind, spec.ray.workers, spec.ray.threads, spec.ray.address) == ("ray", 3, 2, "127.0.0.1:6379")
    with pytest.raises(ConfigError, match="unknown executor 'dask'.*valid: 'local'"):
        _cfg(tmp_path, executor={"dask": {}})
    with pytest.raises(ConfigError, match="workers must be a positive integer"):
        _cfg(tmp_path, executor={"ray": {"workers": 0}})
    with pytest.raises(ConfigError, match="unknown key 'cpus'"):
        _cfg(tmp_path, executor={"ray": {"cpus": 1}})
    assert config_hash(_cfg(tmp_path)) == config_hash(_cfg(tmp_path, executor=RAY))
    assert config_hash(_cfg(tmp_path)) != config_hash(_cfg(tmp_path, chunk_size=4))


def test_ray_missing_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray gives: ImportError
    with pytest.raises(ExecutorUnavailableError, match=r"pip install 'mechpatch\[ray\]'"):
        check_executor(parse_executor(RAY))
    with pytest.raises(ExecutorUnavailableError, match="not installed"):
        run_sweep(_cfg(tmp_path / "run", executor=RAY), quiet=True)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- real Ray runtimes


@pytest.mark.slow
def test_ray_equals_local_bitwise_and_records_its_workers(local_run, tmp_path):
    out = tmp_path / "ray"
    run = run_sweep(_cfg(out, executor=RAY), quiet=True)
    assert_same_run(local_run, out)
    attempt = run.manifest["attempts"][-1]
    assert attempt["executor"]["kind"] == "ray" and attempt["executor"]["workers"] == 2
    assert len(attempt["workers"]) == 2 and {w["threads"] for w in attempt["workers"]} == {1}
    assert len({w["pid"] for w in attempt["workers"]}) == 2 and all(w["pid"] != os.getpid() for w in attempt["workers"])


def _cli(config: dict, path, command: str = "sweep") -> subprocess.Popen:
    """``mechpatch COMMAND CONFIG`` in another process (one thread, as the workers and the local runs here)."""
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return subprocess.Popen([sys.executable, "-m", "mechpatch", command, str(path), "-q", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc, what: str, timeout: float = 240.0):
    end = time.time() + timeout
    while time.time() < end:
        got = cond()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _manifest(out):
    try:
        with open(os.path.join(out, "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _n_chunks(out) -> int:
    """Chunk files written (a half-written temporary file of a killed process is not one)."""
    return sum(f.endswith(".safetensors") for _, _, fs in os.walk(os.path.join(out, "chunks")) for f in fs)


@pytest.mark.slow
def test_a_worker_killed_mid_run_has_its_chunk_rerun_and_the_run_ends_identical(local_run, tmp_path):
    out = tmp_path / "run"
    proc = _cli({**CONFIG, "chunk_size": 1, "out_dir": str(out), "executor": RAY}, tmp_path / "c.yaml")
    workers = _wait_for(lambda: (_manifest(out) or {}).get("attempts", [{}])[-1].get("workers"), proc, "workers")
    _wait_for(lambda: _n_chunks(out) >= 2, proc, "two chunks")
    os.kill(workers[0]["pid"], signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    # the same computation at chunk_size 1, locally
    ref = tmp_path / "ref"
    run_sweep(_cfg(ref, chunk_size=1), quiet=True)
    assert_same_run(ref, out)
    final = _manifest(out)["attempts"][-1]["workers"]
    assert workers[0]["pid"] not in {w["pid"] for w in final}  # replaced


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [(RAY, "local"), ("local", RAY)])
def test_a_driver_killed_mid_run_resumes_on_either_executor_identical(local_run, tmp_path, first, then):
    out = tmp_path / "run"
    proc = _cli({**CONFIG, "out_dir": str(out), "executor": first}, tmp_path / "c.yaml")
    _wait_for(lambda: _n_chunks(out) >= 2, proc, "two chunks")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _n_chunks(out)
    assert 2 <= done and _manifest(out)["status"] == "running"
    run = run_sweep(_cfg(out, executor=then), quiet=True)
    assert_same_run(local_run, out)
    assert run.manifest["chunks_computed_last_attempt"] == _n_chunks(out) - done  # only what was missing
    kinds = [a.get("executor", {}).get("kind") for a in run.manifest["attempts"]]
    assert kinds[-1] == parse_executor(then).kind


@pytest.mark.slow
def test_a_worker_with_other_weights_is_refused_naming_the_worker(tmp_path):
    cfg = _cfg(tmp_path / "run")
    from mechpatch.runs.store import normalize_config

    spec = JobSpec("sweep", normalize_config(cfg), "0" * 64, "mechpatch.runs.sweep:worker_job")
    with pytest.raises(WorkerError, match=r"Ray worker 0 \(host .*, pid \d+\) could not load .*weights sha256"):
        RayExecutor(parse_executor({"ray": {"workers": 1}}), spec).close()
    import ray

    ray.shutdown()


@pytest.mark.slow
def test_an_existing_cluster_is_joined_by_address(local_run, tmp_path):
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    port = 6391
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, capture_output=True, env=env)
    try:
        out = tmp_path / "run"
        run = run_sweep(_cfg(out, executor={"ray": {"address": f"127.0.0.1:{port}", "workers": 2}}), quiet=True)
        assert_same_run(local_run, out)
        assert run.manifest["attempts"][-1]["executor"]["address"] == f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env)


def test_command_line_executor_flags(tmp_path, capsys):
    from mechpatch.cli import main

    path = tmp_path / "c.yaml"
    with open(path, "w") as f:
        yaml.safe_dump({**CONFIG, "out_dir": str(tmp_path / "run")}, f)
    assert main(["sweep", str(path), "--executor", "ray", "--workers", "3", "--dry-run"]) == 0
    assert "Ray: 3 workers x 1 CPU" in capsys.readouterr().out
    assert main(["sweep", str(path), "--executor", "ray", "--workers", "0", "--dry-run"]) == 2
    assert "workers must be a positive integer" in capsys.readouterr().err
    assert main(["sweep", str(path), "--workers", "2", "--dry-run"]) == 2
    assert "need --executor ray" in capsys.readouterr().err
    configs = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    assert main(["discover", os.path.join(configs, "discover_induction.yaml"), "--executor", "ray", "--dry-run"]) == 2
    assert "set chunk_size" in capsys.readouterr().err
    out = str(tmp_path / "ia")
    assert main(["interactions", os.path.join(configs, "interactions_redundant_induction.yaml"), "--out-dir", out,
                 "--executor", "ray", "--workers", "2", "--dry-run"]) == 0
    assert "Ray: 2 workers x 1 CPU" in capsys.readouterr().out
    assert not (tmp_path / "run").exists() and not os.path.exists(out)


def test_a_sweep_that_falls_back_to_hooks_records_why(tmp_path, monkeypatch):
    """method "auto" on a model the fast path does not reproduce: the manifest and each result file say why the hooks
    path ran (before, only the plan's printed row did)."""
    from mechpatch.runs.sweep import load_sweep
    from patching.test_engine import break_the_fast_path

    restore = break_the_fast_path(monkeypatch)
    try:
        run_sweep(_cfg(tmp_path / "run", kinds=["head"]), quiet=True)
    finally:
        restore()
    run = load_sweep(str(tmp_path / "run"))
    assert run.manifest["engine"]["method"] == "hooks"
    assert "differs from the bridge" in run.manifest["engine"]["fallback_reason"]
    assert "differs from the bridge" in run.results["head"].meta["fallback_reason"]
    ok = run_sweep(_cfg(tmp_path / "ok", kinds=["head"]), quiet=True)
    assert ok.manifest["engine"] == {"method": "fast", "fallback_reason": None}
    assert "fallback_reason" not in ok.results["head"].meta
