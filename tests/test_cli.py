"""The `mechpatch` command line: subcommands, exit statuses (0 ok, 2 usage/config error), messages."""

import json
import os
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from mechpatch import zoo
from mechpatch.cli import main

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path, data, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


SMALL = {"model": "induction-2l", "task": {"name": "induction", "args": {"n": 4, "block": 4}}, "kinds": ["head"],
         "chunk_size": 4}


def test_console_script_is_declared():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert data["project"]["scripts"]["mechpatch"] == "mechpatch.cli:main"
    assert any(d.startswith("pyarrow") for d in data["project"]["dependencies"])


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in zoo.MODELS:
        assert name in out
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {m["name"] for m in listed} == set(zoo.MODELS) and all(m["provenance"] for m in listed)


@pytest.mark.parametrize("data, message", [
    ({**SMALL, "chunksize": 4}, "unknown key 'chunksize'; valid keys: 'model', 'task'"),
    ({**SMALL, "kinds": ["heads"]}, "kinds 'heads' is not valid; valid: attn_out, head"),
    ({**SMALL, "seed": "zero"}, "seed: expected int, got str"),
    ({**SMALL, "task": {"name": "induction", "args": {"blocks": 4}}}, "unknown key 'blocks' for task 'induction'"),
    ({**SMALL, "model": "nope"}, "neither a bundled model"),
])
def test_config_errors_exit_2_with_the_message(tmp_path, capsys, data, message):
    assert main(["sweep", _config(tmp_path, {**data, "out_dir": str(tmp_path / "o")})]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mechpatch: error:") and message in err
    assert not (tmp_path / "o").exists()


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    assert main(["sweep", str(tmp_path / "bad.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["sweeep", "x.yaml"])
    assert exc.value.code == 2 and "invalid choice: 'sweeep'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["sweep", _config(tmp_path, {**SMALL, "out_dir": str(tmp_path / "t")}), "--threads", "0"]) == 2


def test_interactions_missing_config_is_a_usage_error(tmp_path, capsys):
    assert main(["interactions", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_sweep_then_finished_then_conflict_then_force_then_report(tmp_path, capsys):
    out = tmp_path / "run"
    path = _config(tmp_path, {**SMALL, "out_dir": "ignored"})
    assert main(["sweep", path, "--out-dir", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == ""  # quiet
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["config"]["out_dir"] == str(out)

    assert main(["sweep", path, "--out-dir", str(out)]) == 0
    assert "already finished" in capsys.readouterr().out

    other = _config(tmp_path, {**SMALL, "seed": 3}, "other.yaml")
    assert main(["sweep", other, "--out-dir", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "another config" in err and "--force" in err
    assert main(["sweep", other, "--out-dir", str(out), "-q", "--force"]) == 0
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3

    os.remove(out / "report.html")
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").stat().st_size > 1_000_000


def test_report_of_an_unfinished_run_exit_2(tmp_path, capsys):
    from mechpatch.runs.store import RunStore

    store = RunStore(str(tmp_path), "sweep", SMALL)
    store.begin(seed=0)
    assert main(["report", str(tmp_path)]) == 2  # while the run holds its directory
    assert f"in use by another mechpatch process (pid {os.getpid()}" in capsys.readouterr().err
    store.release()  # as when the run's process dies
    assert main(["report", str(tmp_path)]) == 2
    assert "has not finished" in capsys.readouterr().err


def test_discover_on_tracr_with_report_rebuild(tmp_path, capsys):
    import pandas as pd

    text = (REPO / "configs" / "discover_tracr_reverse.yaml").read_text()
    path = tmp_path / "d.yaml"
    path.write_text(text)
    out = tmp_path / "d"
    assert main(["discover", str(path), "--out-dir", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ground_truth"]["roc_auc"] == 1.0
    edges = pd.read_parquet(out / "results" / "edges.parquet")
    assert int(edges["in_circuit"].sum()) == summary["edges_kept"] == 10
    assert len(edges) == summary["edges_total"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "discover"
    assert manifest["figures"] == ["figure_graph.html", "figure_faithfulness.html"]
    os.remove(out / "report.html")
    assert main(["report", str(out)]) == 0 and (out / "report.html").exists()
    assert main(["discover", str(path), "--out-dir", str(out)]) == 0
    assert "already finished" in capsys.readouterr().out


def test_discover_position_resolved_eap(tmp_path, capsys):
    """EAP per position: the circuit keeps edges at positions; tables, graph and report follow; ACDC refuses it."""
    import pandas as pd

    from mechpatch.circuit import ComponentGraph

    data = {"model": "induction-2l", "task": "induction", "task_args": {"n": 8, "block": 5}, "method": "eap",
            "tau": 0.1, "per_position": True, "out_dir": str(tmp_path / "d")}
    assert main(["discover", _config(tmp_path, data), "-q"]) == 0
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    seq = 11  # BOS + two blocks of 5
    edges = pd.read_parquet(tmp_path / "d" / "results" / "edges.parquet")
    assert len(edges) == summary["edges_total"] == 81 * seq and summary["per_position"] is True
    kept = edges[edges["in_circuit"]]
    assert len(kept) == summary["edges_kept"] > 0 and kept["edge"].str.contains("@").all()
    assert (kept["score"].abs() >= 0.1).all()
    graph = ComponentGraph.from_json(str(tmp_path / "d" / "circuit.json"))
    assert graph.n_pos == seq and len(graph.in_circuit_edges()) == summary["edges_kept"]
    assert (tmp_path / "d" / "report.html").exists()
    assert main(["discover", _config(tmp_path, {**data, "method": "acdc", "out_dir": str(tmp_path / "a")}, "a.yaml")]) == 2
    assert "per_position needs an attribution method" in capsys.readouterr().err


def test_python_dash_m_runs_the_command_line():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "mechpatch", "models"], capture_output=True, text=True, timeout=300,
                         check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and "induction-2l" in out.stdout
