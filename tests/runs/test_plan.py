"""Every run command checks its whole config against the model before it writes anything: a config that cannot
run leaves no file behind (so the corrected config runs without --force), and --dry-run prints the plan."""

import json
import os
import re

import pytest
import yaml

from mechpatch.cli import main

SWEEP = {"model": "induction-2l", "task": {"name": "induction", "args": {"n": 4, "block": 5}},
         "kinds": ["head", "resid_pre"], "chunk_size": 4}
DISCOVER = {"model": "induction-2l", "task": "induction", "task_args": {"n": 4, "block": 5}, "method": "eap"}
INTERACTIONS = {"model": "induction-2l", "task": "induction", "task_args": {"n": 4, "block": 5}, "n_masks": 60,
                "exhaustive": False, "chunk_size": 30}


def _write(tmp_path, config, out):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**config, "out_dir": str(out)}))
    return str(path)


# (command, base config, change, exit status, what the message says)
LATE = [
    ("sweep", SWEEP, {"task": {"name": "induction", "args": {"n": 0}}}, 2, "n must be a positive integer"),
    ("sweep", SWEEP, {"task": {"name": "induction", "args": {"block": 40}}}, 2, "exceeds the model's context 32"),
    ("sweep", SWEEP, {"layers": [0, 5]}, 2, "layer 5 is out of range; the model has 2 layers"),
    ("sweep", SWEEP, {"positions": [0, 1, 99]}, 2, "99"),
    ("sweep", SWEEP, {"task": None, "metric": "logit_diff",
                      "prompts": {"clean": ["a b"], "corrupted": ["a c"], "answers": [[" a", " b"]]}},
     2, "no tokenizer"),
    ("sweep", SWEEP, {"metric": "logit_diff"}, 2, "logit_diff needs a correct and at least one wrong answer"),
    ("sweep", SWEEP, {"intervention": "interpolate", "alpha": float("nan")}, 2, "alpha must be a finite number"),
    ("sweep", SWEEP, {"task": {"name": "greater_than", "args": {"n": 4}}}, 2, "needs a tokenizer"),
    ("sweep", SWEEP, {"kinds": ["head", "resid_pre", "mlp_out"]}, 2, "attention-only and has no MLP"),
    ("sweep", SWEEP, {"task": {"name": "induction", "args": {"n": 100_000_000}}}, 1, "this machine has"),
    ("discover", DISCOVER, {"tau": float("nan")}, 2, "tau must be a finite number"),
    ("discover", DISCOVER, {"task_args": {"n": 0}}, 2, "n must be a positive integer"),
    ("interactions", INTERACTIONS, {"components": ["L1H0", "L1H9"]}, 2, "head 9 is out of range"),
    ("interactions", INTERACTIONS, {"components": ["L5H*"]}, 2, "layer 5 is out of range"),
    ("interactions", INTERACTIONS, {"components": ["L1H0", "L1H0", "L1H1", "L0H0"]}, 2, "repeated: L1H0"),
    ("interactions", INTERACTIONS, {"n_masks": 5}, 2, "the mechpatch backend needs at least 11 for 8 components"),
    ("interactions", INTERACTIONS, {"task_args": {"n": 100_000_000}}, 1, "this machine has"),
]


@pytest.mark.parametrize("command, config, change, status, message", LATE,
                         ids=[f"{c}-{'-'.join(map(str, ch))}" for c, _, ch, _, _ in LATE])
def test_a_config_that_cannot_run_writes_nothing(tmp_path, capsys, command, config, change, status, message):
    out = tmp_path / "run"
    assert main([command, _write(tmp_path, {**config, **change}, out), "--quiet"]) == status
    assert message in capsys.readouterr().err
    assert not out.exists()  # no manifest, no lock, no chunk: the corrected config needs no --force


def test_the_corrected_config_then_runs_without_force(tmp_path, capsys):
    out = tmp_path / "run"
    bad = _write(tmp_path, {**SWEEP, "kinds": ["head", "resid_pre", "mlp_out"]}, out)
    assert main(["sweep", bad, "--quiet"]) == 2
    good = _write(tmp_path, SWEEP, out)
    assert main(["sweep", good, "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["attempts"]) == 1


@pytest.mark.parametrize("command, config", [("sweep", SWEEP), ("discover", DISCOVER),
                                              ("interactions", INTERACTIONS)])
def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys, command, config):
    out = tmp_path / "run"
    assert main([command, _write(tmp_path, config, out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{command} plan -> {out}")
    assert "forwards         at most" in text and "memory           about" in text
    assert not out.exists()


def test_dry_run_counts_the_cells_and_chunks_the_sweep_then_writes(tmp_path, capsys):
    out = tmp_path / "run"
    config = _write(tmp_path, SWEEP, out)
    assert main(["sweep", config, "--dry-run"]) == 0
    text = capsys.readouterr().out
    # induction with block 5: 11 tokens; 2 layers x 4 heads = 8 cells (2 chunks), 2 layers x 11 positions = 22 (6)
    assert "2 x 4 = 8 cells (layer, head), 2 chunks of at most 4" in text
    assert "2 x 11 = 22 cells (layer, pos), 6 chunks of at most 4" in text
    assert main(["sweep", config, "--quiet"]) == 0
    assert len(os.listdir(out / "chunks" / "head")) == 2 and len(os.listdir(out / "chunks" / "resid_pre")) == 6
    plan = json.loads((out / "manifest.json").read_text())["plan"]
    assert plan["rows"]["cells"] == "30"
    assert main(["sweep", config, "--dry-run"]) == 0
    assert f"sweep plan -> {out} (finished)" in capsys.readouterr().out


def test_memory_is_refused_before_the_task_is_built(tmp_path, capsys):
    from mechpatch.errors import MemoryBudgetError
    from mechpatch.runs.plan import build_task
    from mechpatch.zoo import load

    with pytest.raises(MemoryBudgetError, match=r"n=100000000 \(11 tokens a prompt\) needs about"):
        build_task(load("induction-2l"), "induction", {"n": 100_000_000, "block": 5}, seed=0)


def test_force_and_repair_together_are_a_usage_error(tmp_path, capsys):
    assert main(["sweep", _write(tmp_path, SWEEP, tmp_path / "run"), "--force", "--repair"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_a_run_never_adopts_files_it_did_not_write(tmp_path, capsys):
    """A run into a non-empty folder that holds no run used to overwrite report.html and record the user's own
    .json files as its results; --force into another config's run left that run's results and figures in place
    and hashed them as the new run's. The plan says what the run will do."""
    user = tmp_path / "notes"
    user.mkdir()
    (user / "notes.json").write_text('{"mine": 1}')
    (user / "report.html").write_text("my report")
    config = _write(tmp_path, SWEEP, user)
    for flags in ([], ["--force"]):
        assert main(["sweep", config, "--quiet", *flags]) == 2
        assert "is not empty and holds no mechpatch run (no manifest.json; it has notes.json, report.html)" in \
            capsys.readouterr().err
    assert sorted(os.listdir(user)) == ["notes.json", "report.html"] and (user / "report.html").read_text() == \
        "my report"
    assert main(["sweep", config, "--dry-run"]) == 0
    assert "(not a run directory: refused" in capsys.readouterr().out

    out = tmp_path / "run"
    first = _write(tmp_path, SWEEP, out)
    assert main(["sweep", first, "--quiet"]) == 0
    old = sorted(json.loads((out / "manifest.json").read_text())["files"])
    assert "results/resid_pre.parquet" in old
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**SWEEP, "kinds": ["head"], "out_dir": str(out)}))
    assert main(["sweep", str(other), "--dry-run"]) == 0
    assert "holds a 'sweep' run of another config: refused (--force discards it)" in capsys.readouterr().out
    assert main(["sweep", str(other), "--quiet", "--force"]) == 0
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert "results/head.parquet" in files and not any("resid_pre" in f for f in files)
    assert not any("resid_pre" in name for _, _, names in os.walk(out) for name in names)

    (out / "results" / "head.parquet").write_bytes(b"damaged")
    assert main(["sweep", str(other), "--dry-run"]) == 0
    assert "finished, but 1 file(s) damaged: refused (--repair recomputes them)" in capsys.readouterr().out


def test_a_finished_run_missing_its_report_gets_it_redrawn(tmp_path, capsys):
    """Deleting report.html (or plotly.min.js) of a finished run used to leave it missing behind "already
    finished"; the figures are drawings of the checked result files, so they are redrawn."""
    out = tmp_path / "run"
    config = _write(tmp_path, SWEEP, out)
    assert main(["sweep", config, "--quiet"]) == 0
    report = (out / "report.html").read_text()
    (out / "report.html").unlink()
    (out / "plotly.min.js").unlink()
    assert main(["sweep", config]) == 0
    assert "report.html, plotly.min.js missing: redrawn from the run's files" in capsys.readouterr().out
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # plotly's div ids
    assert uuid.sub("", (out / "report.html").read_text()) == uuid.sub("", report)
    assert (out / "plotly.min.js").exists()
    assert main(["sweep", config]) == 0
    assert "redrawn" not in capsys.readouterr().out
