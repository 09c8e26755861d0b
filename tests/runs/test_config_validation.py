"""Bad configs are refused before any work: one line ``mechpatch: error: ...`` naming the key, what was given and
what is valid, exit status 2, no run directory, never a traceback."""

import os

import pytest
import yaml

from mechpatch.cli import main

DISCOVER = {"model": "induction-2l", "task": "induction", "task_args": {"n": 4, "block": 4}, "method": "eap"}
INTERACTIONS = {"model": "induction-2l", "task": "induction", "task_args": {"n": 4, "block": 4}, "n_masks": 60,
                "exhaustive": False, "chunk_size": 30}
SWEEP = {"model": "induction-2l", "task": {"name": "induction", "args": {"n": 4, "block": 4}}, "kinds": ["head"],
         "chunk_size": 4}
BASES = {"sweep": SWEEP, "discover": DISCOVER, "interactions": INTERACTIONS}


def _write(tmp_path, data, name="c.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _refused(capsys, tmp_path, argv, *phrases):
    """``argv`` exits 2 with one error line holding every phrase, and leaves no run directory behind."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mechpatch: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err
    assert not (tmp_path / "run").exists()
    return err


@pytest.mark.parametrize("dry", [True, False])
@pytest.mark.parametrize("components", [["L1H0"], ["L0H0+L0H1"]])
def test_interactions_with_fewer_components_than_max_order(tmp_path, capsys, dry, components):
    path = _write(tmp_path, {**INTERACTIONS, "components": components, "out_dir": str(tmp_path / "run")})
    _refused(capsys, tmp_path, ["interactions", path, "-q"] + (["--dry-run"] if dry else []),
             "max_order 2 needs at least 2 components", "components names 1")


def test_interactions_max_order_3_counts_components(tmp_path, capsys):
    path = _write(tmp_path, {**INTERACTIONS, "components": ["L1H0", "L1H1"], "max_order": 3,
                             "out_dir": str(tmp_path / "run")})
    _refused(capsys, tmp_path, ["interactions", path, "--dry-run"], "max_order 3 needs at least 3", "names 2")


@pytest.mark.parametrize("command, change, phrase", [
    ("discover", {"task_args": []}, "task_args: expected a mapping (key: value, or {}), got list []"),
    ("discover", {"task_args": None}, "task_args: expected a mapping (key: value, or {}), got null"),
    ("interactions", {"task_args": [1]}, "task_args: expected a mapping (key: value, or {}), got list [1]"),
    ("interactions", {"task_args": None}, "task_args: expected a mapping"),
    ("sweep", {"task": {"name": "induction", "args": [1, 2]}}, "task.args: expected a mapping"),
    ("sweep", {"task": {"name": "induction", "args": None}}, "task.args: expected a mapping"),
    ("interactions", {"components": {"L1H0": 1}}, "components"),
])
def test_task_args_that_are_not_a_mapping(tmp_path, capsys, command, change, phrase):
    path = _write(tmp_path, {**BASES[command], **change, "out_dir": str(tmp_path / "run")})
    for dry in (["--dry-run"], []):
        _refused(capsys, tmp_path, [command, path, "-q", *dry], phrase)


@pytest.mark.parametrize("command", ["sweep", "discover", "interactions"])
def test_unreadable_config_paths(tmp_path, capsys, command):
    _refused(capsys, tmp_path, [command, str(tmp_path), "--dry-run"], "is a directory", "give a YAML file")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"model: induction-2l\n\xff\xfe\n")
    _refused(capsys, tmp_path, [command, str(bad)], "is not UTF-8 text", "0xff")


@pytest.mark.parametrize("command", ["sweep", "discover", "interactions"])
@pytest.mark.parametrize("seed", [99999999999999999999999, 2**32, -1])
def test_seed_out_of_range(tmp_path, capsys, command, seed):
    path = _write(tmp_path, {**BASES[command], "seed": seed, "out_dir": str(tmp_path / "run")})
    _refused(capsys, tmp_path, [command, path], f"seed: {seed} is out of range; valid: 0..4294967295")


def test_task_seed_out_of_range(tmp_path, capsys):
    path = _write(tmp_path, {**SWEEP, "task": {"name": "induction", "args": {"seed": 2**64}},
                             "out_dir": str(tmp_path / "run")})
    _refused(capsys, tmp_path, ["sweep", path], "args.seed: 18446744073709551616 is out of range")


@pytest.mark.parametrize("command", ["sweep", "discover", "interactions"])
def test_duplicate_keys(tmp_path, capsys, command):
    text = yaml.safe_dump({**BASES[command], "out_dir": str(tmp_path / "run")}, sort_keys=False)
    path = _write(tmp_path, text + "seed: 1\nseed: 2\n")
    lines = len(text.splitlines())
    _refused(capsys, tmp_path, [command, path, "--dry-run"],
             f"duplicate key 'seed' on lines {lines + 1} and {lines + 2}")
    nested = _write(tmp_path, "model: induction-2l\ntask: {name: induction, args: {n: 3, n: 4}}\n"
                              f"out_dir: {tmp_path / 'run'}\n", "n.yaml")
    _refused(capsys, tmp_path, ["sweep", nested], "duplicate key 'n' twice on line 2")


def test_yaml_stays_safe_loaded(tmp_path, capsys):
    path = _write(tmp_path, "model: !!python/object/apply:os.system ['echo hacked']\n")
    _refused(capsys, tmp_path, ["discover", path], "not valid YAML")


@pytest.mark.parametrize("command", ["sweep", "discover", "interactions"])
def test_empty_config_needs_model(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # the defaults' out_dir is relative: nothing may appear here
    path = _write(tmp_path, "")
    _refused(capsys, tmp_path, [command, path, "--dry-run"], "missing required key(s) 'model'")
    assert os.listdir(tmp_path) == ["c.yaml"]


@pytest.mark.parametrize("command", ["discover", "interactions"])
def test_task_is_required_too(tmp_path, capsys, command):
    data = {k: v for k, v in BASES[command].items() if k not in ("task", "task_args")}
    path = _write(tmp_path, {**data, "out_dir": str(tmp_path / "run")})
    _refused(capsys, tmp_path, [command, path], "missing required key(s) 'task'")


@pytest.mark.parametrize("command, change, phrase", [
    ("discover", {"task_args": {"n": 0}}, "n must be a positive integer; got 0"),
    ("interactions", {"task_args": {"block": 1}}, "block must be at least 2 tokens"),
    ("sweep", {"task": {"name": "ioi", "args": {"templates": [0, 15]}}}, "template indices must be in 0..14"),
    ("discover", {"task": "ioi", "task_args": {"templates": []}}, "template indices must be in 0..14; got []"),
    ("discover", {"task": "ioi", "task_args": {"order": "AB"}}, "'AB' is not valid; valid: 'mixed', 'ABBA'"),
])
def test_task_ranges_checked_before_the_model_loads(tmp_path, capsys, monkeypatch, command, change, phrase):
    import mechpatch.runs.common as common
    import mechpatch.zoo as zoo

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(zoo, "load", no_model)
    monkeypatch.setattr(common, "load_source", no_model)
    path = _write(tmp_path, {**BASES[command], **change, "out_dir": str(tmp_path / "run")})
    _refused(capsys, tmp_path, [command, path, "--dry-run"], phrase)


def test_report_of_a_damaged_run_names_the_runs_own_command(tmp_path, capsys):
    run = tmp_path / "sw"
    assert main(["sweep", _write(tmp_path, {**SWEEP, "out_dir": str(run)}), "-q", "--threads", "1"]) == 0
    tables = sorted((run / "results").iterdir())
    os.remove(tables[0])
    capsys.readouterr()
    assert main(["report", str(run)]) == 2  # a run directory that cannot be used as it is: exit 2 (cli docstring)
    err = capsys.readouterr().err
    assert err.startswith("mechpatch: error: ") and tables[0].name in err
    assert "mechpatch sweep CONFIG --repair" in err and "mechpatch sweep CONFIG --force" in err, err
    assert "run the same command" not in err


def test_exit_status_contract_is_documented():
    import mechpatch.cli as cli

    doc = " ".join(cli.__doc__.split())
    assert "2 when what was asked cannot be done" in doc and "damaged files" in doc and "locked" in doc
    assert "1 for a failure while running" in doc
