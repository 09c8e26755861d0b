"""Fault injection for the run store: every damaged, interrupted or contested run directory ends either bitwise
identical to an uninterrupted run (the SHA-256 of every file under results/, tensors/ and chunks/) or with a
typed error (exit status 2) naming the damaged file; never with a silently wrong result.

One uninterrupted reference run per config is built once per module and copied for each fault. Runs go through
the command line in this process (``mechpatch.cli.main``, ``--threads 1``); the lock and SIGKILL cases start real
``python -m mechpatch sweep`` processes, also on one thread, so that every run computes the same bits.
"""

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from mechpatch.cli import main
from mechpatch.errors import DamagedFileError

REPO = Path(__file__).resolve().parents[2]
# 2 kinds, 6 + 2 chunks of 4 cells on 6 prompts: a few tenths of a second once the model is loaded
SMALL = {"model": "induction-2l", "task": {"name": "induction", "args": {"n": 6, "block": 5}},
         "kinds": ["resid_pre", "head"], "chunk_size": 4, "seed": 0}
N_SMALL = 8
# 2 kinds by position, 2 x 25 chunks of 8 cells on 48 prompts: about 1.2 s of patching after 3.5 s of start-up,
# for the processes killed
MEDIUM = {"model": "induction-2l", "task": {"name": "induction", "args": {"n": 48, "block": 12}},
          "kinds": ["head", "v"], "by_position": True, "chunk_size": 8, "seed": 0}
N_MEDIUM = 2 * 25
# temporary files: the store's (<name>.tmp<pid>) and safetensors' own writer's (.tmp and 6 letters or digits)
_TMP = re.compile(r"\.tmp\d+$|^\.tmp[A-Za-z0-9]{6}$")


# ----------------------------------------------------------------------------- helpers


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}


def _digests(out_dir, folders=("results", "tensors", "chunks")):
    out_dir = Path(out_dir)
    return {str(p.relative_to(out_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted((out_dir / folder).rglob("*")) if p.is_file()}


def _manifest(run):
    return json.loads((Path(run) / "manifest.json").read_text())


def _chunks(run):
    return sorted((Path(run) / "chunks").rglob("*.safetensors"))


def _temp_files(run):
    return sorted(str(p.relative_to(run)) for p in Path(run).rglob("*") if _TMP.search(p.name))


def _command(ref, out_dir):
    return [sys.executable, "-m", "mechpatch", "sweep", str(ref.config), "--out-dir", str(out_dir), "--quiet",
            "--threads", "1"]


def _start(ref, out_dir):
    return subprocess.Popen(_command(ref, out_dir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(proc, ready, timeout=180.0):
    """Poll ``ready()`` until it holds; fails the test if the process ended first."""
    t = time.perf_counter()
    while not ready():
        if proc.poll() is not None and not ready():
            pytest.fail(f"the run ended (status {proc.returncode}) too early: {proc.stderr.read().decode()[-2000:]}")
        if time.perf_counter() - t > timeout:
            proc.kill()
            pytest.fail(f"waited {timeout} s for the run")
        time.sleep(0.005)


def _main(*argv):
    """``mechpatch ARGV`` in this process; the torch thread count is restored after (``--threads`` sets it)."""
    threads = torch.get_num_threads()
    try:
        return main([str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)


def _cli(capsys, *argv):
    """Exit status, stdout and stderr of ``mechpatch ARGV`` run in this process."""
    capsys.readouterr()
    rc = _main(*argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _sweep(capsys, ref, run, *flags):
    return _cli(capsys, "sweep", ref.config, "--out-dir", run, "--threads", "1", *flags)


def _build(tmp_path_factory, name, config, process=False):
    """A config file and its uninterrupted run, with its digests: built in this process, or in a ``python -m
    mechpatch`` process (``process``), timed as the killed runs will run: ``span`` is the time from its manifest
    (lock taken, model loaded) to its report.json (every chunk and result written)."""
    folder = tmp_path_factory.mktemp(name)
    path, run = folder / "sweep.yaml", folder / "run"
    path.write_text(yaml.safe_dump({**config, "out_dir": str(folder / "unused")}))
    span = None
    if process:
        proc = _start(SimpleNamespace(config=path), run)
        try:
            _wait_for(proc, (run / "manifest.json").exists)
            t = time.perf_counter()
            _wait_for(proc, (run / "report.json").exists)
            span = time.perf_counter() - t
            assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    else:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TQDM_DISABLE", "1")  # --quiet sets it for the process: undone here
            assert _main("sweep", path, "--out-dir", run, "--quiet", "--threads", "1") == 0
    return SimpleNamespace(config=path, run=run, digests=_digests(run), manifest=_manifest(run), span=span)


def _copy(ref, tmp_path, name="run"):
    return Path(shutil.copytree(ref.run, tmp_path / name))


def _assert_equal_to(ref, run):
    assert _digests(run) == ref.digests
    assert not _temp_files(run)
    m = _manifest(run)
    assert m["status"] == "finished" and m["config_hash"] == ref.manifest["config_hash"]


def _unfinish(run):
    """Make a finished run look like one killed after its last chunk: status running, no results yet."""
    m = _manifest(run)
    m.update(status="running", finished=None)
    m.pop("files")
    (run / "manifest.json").write_text(json.dumps(m, indent=2))
    for folder in ("results", "tensors"):
        shutil.rmtree(run / folder)
    for p in [*run.glob("figure_*.html"), run / "report.html", run / "report.json"]:
        p.unlink()


def _flip_data_byte(path, at=0.5):
    """Flip one bit inside the tensor data of a safetensors file (after its header)."""
    data = bytearray(Path(path).read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    assert start < len(data)
    data[start + int((len(data) - start - 1) * at)] ^= 0x01
    Path(path).write_bytes(bytes(data))


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    ref = _build(tmp_path_factory, "small", SMALL)
    assert len(_chunks(ref.run)) == N_SMALL and len(ref.digests) == 4 + 2 + N_SMALL
    return ref


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """The small sweep with another seed: other prompts, chunks of the same shapes, another config hash."""
    return _build(tmp_path_factory, "other", {**SMALL, "seed": 1})


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    ref = _build(tmp_path_factory, "medium", MEDIUM, process=True)
    assert len(_chunks(ref.run)) == N_MEDIUM
    return ref


# ----------------------------------------------------------------------------- 1. damaged chunks


CHUNK = "chunks/resid_pre/00002.safetensors"


def _truncate(run, ref, other):
    p = run / CHUNK
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(run, ref, other):
    _flip_data_byte(run / CHUNK)


def _foreign(run, ref, other):
    shutil.copy(other.run / CHUNK, run / CHUNK)


def _moved_index(run, ref, other):
    shutil.copy(run / "chunks/resid_pre/00000.safetensors", run / CHUNK)  # same config and shape, another chunk


def _moved_group(run, ref, other):
    shutil.copy(run / "chunks/head/00000.safetensors", run / CHUNK)  # same config and shape, another kind


def _garbage(run, ref, other):
    p = run / CHUNK
    p.write_bytes(random.Random(0).randbytes(p.stat().st_size))


def _delete(run, ref, other):
    (run / CHUNK).unlink()


CHUNK_FAULTS = {"truncated": _truncate, "flipped byte": _flip, "another config's chunk": _foreign,
                "another chunk's file": _moved_index, "another kind's chunk": _moved_group, "garbage": _garbage,
                "deleted": _delete}


@pytest.mark.parametrize("fault", CHUNK_FAULTS)
def test_damaged_chunk_is_refused_then_repaired_or_forced_to_identical_results(small, other, tmp_path, capsys,
                                                                              fault):
    run = _copy(small, tmp_path)
    _unfinish(run)
    CHUNK_FAULTS[fault](run, small, other)
    forced = Path(shutil.copytree(run, tmp_path / "forced"))
    damaged = (run / CHUNK).read_bytes() if (run / CHUNK).exists() else None

    rc, out, err = _sweep(capsys, small, run, "--quiet")
    if damaged is None:  # a missing chunk is one not computed yet: recomputed, nothing to repair
        assert (rc, err) == (0, "")
        _assert_equal_to(small, run)
        assert _manifest(run)["chunks_computed_last_attempt"] == 1 and "repaired" not in _manifest(run)
    else:
        assert rc == 2, err
        assert CHUNK in err and ("--repair" in err or "--force" in err)
        assert (run / CHUNK).read_bytes() == damaged  # left as it was, for the user to see
        assert not (run / "results").exists() and not (run / "tensors").exists()  # no result from it

        rc, out, err = _sweep(capsys, small, run, "--quiet", "--repair")
        assert (rc, err) == (0, "")
        _assert_equal_to(small, run)
        m = _manifest(run)
        assert m["repaired"] == [CHUNK] and m["chunks_computed_last_attempt"] == 1  # only the damaged chunk

    rc, out, err = _sweep(capsys, small, forced, "--quiet", "--force")
    assert (rc, err) == (0, "")
    _assert_equal_to(small, forced)
    m = _manifest(forced)
    assert m["chunks_computed_last_attempt"] == N_SMALL and len(m["attempts"]) == 1  # started again


# ----------------------------------------------------------------------------- 2. damaged results of a finished run


def _empty_table(run):
    (run / "results/head.parquet").write_bytes(b"")
    return "results/head.parquet"


def _flip_tensors(run):
    _flip_data_byte(run / "tensors/resid_pre.safetensors", at=0.9)
    return "tensors/resid_pre.safetensors"


def _delete_table(run):
    (run / "results/resid_pre_cells.parquet").unlink()
    return "results/resid_pre_cells.parquet"


def _edit_report(run):
    report = json.loads((run / "report.json").read_text())
    report["headline"]["seed"] = 7
    (run / "report.json").write_text(json.dumps(report, indent=2))
    return "report.json"


def _edit_config(run):
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("chunk_size: 4", "chunk_size: 5"))
    return "config.yaml"


RESULT_FAULTS = {"emptied table": _empty_table, "flipped byte in tensors": _flip_tensors,
                 "deleted table": _delete_table, "edited report.json": _edit_report, "edited config.yaml": _edit_config}


@pytest.mark.parametrize("fault", RESULT_FAULTS)
def test_damaged_finished_run_is_refused_by_rerun_report_and_load_then_repaired(small, tmp_path, capsys, fault):
    from mechpatch.runs import load_sweep

    run = _copy(small, tmp_path)
    rel = RESULT_FAULTS[fault](run)
    manifest = (run / "manifest.json").read_bytes()

    rc, out, err = _sweep(capsys, small, run, "--quiet")
    assert rc == 2 and rel in err and "damaged" in err and "--repair" in err, err
    rc, out, err = _cli(capsys, "report", run)
    assert rc == 2 and rel in err, err
    with pytest.raises(DamagedFileError, match=re.escape(rel)):
        load_sweep(str(run))
    assert (run / "manifest.json").read_bytes() == manifest  # refusing wrote nothing

    rc, out, err = _sweep(capsys, small, run, "--quiet", "--repair")
    assert (rc, err) == (0, "")
    _assert_equal_to(small, run)
    m = _manifest(run)
    assert m["repaired"] == [rel] and m["chunks_computed_last_attempt"] == 0  # rewritten from the intact chunks
    own = ("report.json", "config.yaml")  # the compute seconds; the out_dir
    assert {k: v for k, v in m["files"].items() if k not in own} == {
        k: v for k, v in small.manifest["files"].items() if k not in own}
    rc, out, err = _cli(capsys, "report", run)
    assert (rc, err) == (0, "") and str(run / "report.html") in out
    assert load_sweep(str(run)).manifest["status"] == "finished"


# ----------------------------------------------------------------------------- 3. damaged manifest


MANIFEST_FAULTS = {"truncated": lambda text: text[: len(text) // 2], "empty": lambda text: "",
                   "a JSON list": lambda text: "[]", "JSON, not a manifest": lambda text: '{"status": "finished"}'}


@pytest.mark.parametrize("fault", MANIFEST_FAULTS)
def test_damaged_manifest_exit_2_naming_it_then_force_recovers(small, tmp_path, capsys, fault):
    run = _copy(small, tmp_path)
    path = run / "manifest.json"
    path.write_text(MANIFEST_FAULTS[fault](path.read_text()))

    for flags in (("--quiet",), ("--quiet", "--repair")):  # repair keeps the run: it cannot without a manifest
        rc, out, err = _sweep(capsys, small, run, *flags)
        assert rc == 2 and "manifest.json" in err and "--force" in err, err
    rc, out, err = _cli(capsys, "report", run)
    assert rc == 2 and "manifest.json" in err, err

    rc, out, err = _sweep(capsys, small, run, "--quiet", "--force")
    assert (rc, err) == (0, "")
    _assert_equal_to(small, run)
    assert _manifest(run)["chunks_computed_last_attempt"] == N_SMALL


# ----------------------------------------------------------------------------- 4. out_dir that cannot be used


def test_out_dir_that_is_a_file_or_under_one_exit_2_and_nothing_written(small, tmp_path, capsys):
    target = tmp_path / "out"
    target.write_text("not a run directory\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    for out_dir, message in ((target, "is a file"), (target / "run", "cannot be created")):
        rc, out, err = _sweep(capsys, small, out_dir, "--quiet")
        assert rc == 2 and str(out_dir) in err and message in err, err
    assert target.read_text() == "not a run directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_out_dir_that_cannot_be_created_exit_2_naming_it(small, capsys):
    out_dir = "/sys/mechpatch_test/out"  # mkdir under /sys fails (EPERM) even for root, where os.access says yes
    assert not os.path.exists(os.path.dirname(out_dir))
    rc, out, err = _sweep(capsys, small, out_dir, "--quiet")
    assert rc == 2 and out_dir in err, err
    assert not os.path.exists(os.path.dirname(out_dir))


# ----------------------------------------------------------------------------- 5. stale temporary files


def test_stale_temp_files_are_removed_on_resume(small, tmp_path, capsys):
    run = _copy(small, tmp_path)
    _unfinish(run)
    # a writer killed mid-chunk: the chunk's half-written temporary file, the chunk not there yet
    half = (run / "chunks/resid_pre/00003.safetensors").read_bytes()
    (run / "chunks/resid_pre/00003.safetensors").unlink()
    (run / "chunks/resid_pre/00003.safetensors.tmp12345").write_bytes(half[: len(half) // 2])
    (run / "chunks/head/00001.safetensors.tmp999").write_bytes(b"\x00" * 100)  # beside an intact chunk
    # safetensors' save_file writes a temporary file of its own (Rust tempfile) and renames it to <name>.tmp<pid>
    (run / "chunks/head/.tmpAb12Cd").write_bytes(half[:1000])
    (run / "results").mkdir()
    (run / "results/head.parquet.tmp4242").write_bytes(b"PAR1")
    assert len(_temp_files(run)) == 4

    rc, out, err = _sweep(capsys, small, run, "--quiet")
    assert (rc, err) == (0, "")
    _assert_equal_to(small, run)  # the digests cover every file under chunks/ and results/: no temp file left
    assert _manifest(run)["chunks_computed_last_attempt"] == 1


# ----------------------------------------------------------------------------- 6. a second process


def test_second_process_is_refused_and_the_first_finishes_identical(medium, tmp_path, capsys):
    from mechpatch.runs import load_sweep
    from mechpatch.runs.store import RunError

    run = tmp_path / "run"
    proc = _start(medium, run)
    try:
        _wait_for(proc, (run / "manifest.json").exists)  # written once the first holds the lock
        os.kill(proc.pid, signal.SIGSTOP)  # held where it is, lock and all, while the second one tries
        try:
            files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
            rc, out, err = _sweep(capsys, medium, run)
            assert rc == 2 and "in use by another mechpatch process" in err and f"pid {proc.pid}" in err, err
            for flags in (("--repair",), ("--force",)):
                rc, out, err = _sweep(capsys, medium, run, "--quiet", *flags)
                assert rc == 2 and f"pid {proc.pid}" in err, err
            rc, out, err = _cli(capsys, "report", run)
            assert rc == 2 and "in use by another mechpatch process" in err, err
            with pytest.raises(RunError, match="not finished"):
                load_sweep(str(run))
            # nothing of the first process's was touched: its temp files, chunks, manifest and lock
            assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    _assert_equal_to(medium, run)
    assert len(_manifest(run)["attempts"]) == 1 and "repaired" not in _manifest(run)


# ----------------------------------------------------------------------------- 7. SIGKILL


def _killed(proc, run, rng, span):
    """SIGKILL ``proc`` a random time (drawn from ``rng``, within ``span``) after its manifest appeared, or at the
    latest when its report.json appears (every result written; the figures, report.html and the manifest's
    ``finished`` not yet); returns the pid that held the lock and the number of chunks it completed."""
    _wait_for(proc, (run / "manifest.json").exists)
    deadline = time.perf_counter() + rng.uniform(0, span)
    while time.perf_counter() < deadline and not (run / "report.json").exists() and proc.poll() is None:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it was killed"
    assert _manifest(run)["status"] == "running" and not (run / "report.html").exists()
    assert json.loads((run / ".lock").read_text())["pid"] == proc.pid  # the dead process's lock, left behind
    return proc.pid, len(_chunks(run))


def _resume_taking_over(ref, run, capsys, pid, done):
    rc, out, err = _sweep(capsys, ref, run)
    assert rc == 0, err
    assert f"taking over the lock left by pid {pid}" in out
    _assert_equal_to(ref, run)
    m = _manifest(run)
    assert len(m["attempts"]) == 2 and m["chunks_computed_last_attempt"] == N_MEDIUM - done


@pytest.mark.parametrize("seed", range(6))
def test_sigkill_at_a_random_moment_resumes_to_identical_results(medium, tmp_path, capsys, seed):
    run = tmp_path / "run"
    proc = _start(medium, run)
    try:
        pid, done = _killed(proc, run, random.Random(seed), medium.span)
    finally:
        if proc.poll() is None:
            proc.kill()
    written = sorted(p.name for p in run.glob("tensors/*.safetensors"))
    _resume_taking_over(medium, run, capsys, pid, done)
    print(f"\nseed {seed}: killed after {done}/{N_MEDIUM} chunks, results written: {written}")


# A process that SIGKILLs itself at an exact point of a write: argv is K PHASE then the command line.
_DIE = """
import os, signal, sys
import mechpatch.report, mechpatch.runs.store as store
k, phase, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
calls = [0]

def dying(real, tmp, path):
    if phase == "half-written chunk":
        os.truncate(tmp, os.path.getsize(tmp) // 2)
    if phase == "finished manifest half-written":
        with open(tmp, "r+") as fh:
            fh.truncate(len(fh.read()) // 2)
    os.kill(os.getpid(), signal.SIGKILL)

def chunk_writer(real):
    def replace(tmp, path):
        if os.sep + "chunks" + os.sep in path:
            calls[0] += 1
            if calls[0] == k and phase != "finished manifest half-written":
                dying(real, tmp, path)
        real(tmp, path)
    return replace

def manifest_writer(real):
    def replace(tmp, path):
        if phase == "finished manifest half-written" and path.endswith("manifest.json"):
            with open(tmp) as fh:
                if '"status": "finished"' in fh.read():
                    dying(real, tmp, path)
        real(tmp, path)
    return replace

store.replace_atomically = chunk_writer(store.replace_atomically)
mechpatch.report.replace_atomically = manifest_writer(mechpatch.report.replace_atomically)
from mechpatch.cli import main
sys.exit(main(argv))
"""
KILL_POINTS = ("half-written chunk", "chunk written, not renamed", "finished manifest half-written")


@pytest.mark.parametrize("phase", KILL_POINTS)
def test_sigkill_in_the_middle_of_a_write_resumes_to_identical_results(medium, tmp_path, capsys, phase):
    run = tmp_path / "run"
    k = random.Random(phase).randrange(2, N_MEDIUM)  # the chunk write it dies in (1-based)
    proc = subprocess.run([sys.executable, "-c", _DIE, str(k), phase, *_command(medium, run)[3:]], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert _manifest(run)["status"] == "running"
    pid = json.loads((run / ".lock").read_text())["pid"]
    temps = _temp_files(run)
    if phase == "finished manifest half-written":
        assert len(temps) == 1 and re.fullmatch(r"manifest\.json\.tmp\d+", temps[0]) and len(_chunks(run)) == N_MEDIUM
        assert (run / "report.json").exists()  # everything but the manifest's last word was written
    else:
        assert len(temps) == 1 and temps[0].startswith("chunks/") and len(_chunks(run)) == k - 1
    done = len(_chunks(run))

    if phase != "half-written chunk":
        _resume_taking_over(medium, run, capsys, pid, done)
        return
    # killed, then a completed chunk damaged: refused (naming it), then repaired
    rel = str(_chunks(run)[0].relative_to(run))
    _flip_data_byte(run / rel)
    rc, out, err = _sweep(capsys, medium, run)
    assert rc == 2 and rel in err and "--repair" in err, err
    assert f"taking over the lock left by pid {pid}" in out
    assert not _temp_files(run)  # the dead writer's half chunk is gone once the lock was taken
    rc, out, err = _sweep(capsys, medium, run, "--quiet", "--repair")
    assert (rc, err) == (0, "")
    _assert_equal_to(medium, run)
    m = _manifest(run)
    assert m["repaired"] == [rel] and m["chunks_computed_last_attempt"] == N_MEDIUM - done + 1
