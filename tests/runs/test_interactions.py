"""`mechpatch interactions CONFIG` end to end on configs/interactions_redundant_induction.yaml: the run directory,
the finished marker, the Parquet tables, the report (and its rebuild from files), and a finished run not redone."""

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from mechpatch.cli import main
from mechpatch.config import ConfigError, from_dict, load_config
from mechpatch.runs import InteractionsConfig
from mechpatch.runs.interactions import resolve_components
from mechpatch.runs.results import read_models
from mechpatch.runs import read_manifest

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "interactions_redundant_induction.yaml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("interactions") / "run"
    start = time.perf_counter()
    assert main(["interactions", str(CONFIG), "--out-dir", str(out), "--quiet", "--threads", "1"]) == 0
    seconds = time.perf_counter() - start
    print(f"mechpatch interactions: {seconds:.1f}s")
    assert seconds < 60
    return out


def test_run_directory_is_finished_and_complete(run_dir):
    manifest = read_manifest(str(run_dir))
    assert manifest["status"] == "finished" and manifest["command"] == "interactions"
    for name in ("interactions.json", "summary.json", "report.html", "results/interactions.parquet",
                 "results/mains.parquet", "figure_matrix.html", "figure_top.html", "figure_network.html"):
        assert (run_dir / name).exists(), name
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]
    top = pd.read_parquet(run_dir / "results" / "interactions.parquet")
    assert len(top) == 30 and set(top["kind"]) <= {"synergy", "redundancy"}
    assert top["exhaustive_effect"].notna().all()
    assert len(pd.read_parquet(run_dir / "results" / "mains.parquet")) == 16
    report = (run_dir / "report.html").read_text()
    assert "pair interactions" in report and "interaction network" in report


def test_backup_heads_are_found_redundant(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["r2_heldout"] > 0.95 and summary["components"] == 16
    sparse, exact = read_models(str(run_dir / "interactions.json"))
    l1_pairs = [(i, j) for i in range(8, 16) for j in range(i + 1, 16)]
    assert {exact.interaction(*p).kind for p in l1_pairs} == {"redundancy"}
    assert {sparse.interaction(*p).kind for p in l1_pairs if sparse.moebius.get(p, 0.0) != 0.0} == {"redundancy"}


def test_direction_is_saved_and_old_spellings_are_read(run_dir, tmp_path):
    data = json.loads((run_dir / "interactions.json").read_text())
    assert data["sparse"]["direction"] == data["exhaustive"]["direction"] == "noise"
    for part in ("sparse", "exhaustive"):  # interactions.json as written before issue #14
        data[part]["direction"] = "noising"
    (tmp_path / "old.json").write_text(json.dumps(data))
    sparse, exact = read_models(str(tmp_path / "old.json"))
    assert sparse.direction == exact.direction == "noise"


def test_finished_run_is_not_redone_and_report_rebuilds(run_dir, capsys):
    before = os.path.getmtime(run_dir / "summary.json")
    start = time.perf_counter()
    assert main(["interactions", str(CONFIG), "--out-dir", str(run_dir)]) == 0
    assert "already finished" in capsys.readouterr().out
    assert time.perf_counter() - start < 10 and os.path.getmtime(run_dir / "summary.json") == before
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").exists()


def test_config_is_checked(tmp_path, capsys):
    cfg = load_config(InteractionsConfig, CONFIG)
    assert cfg.components == "heads" and cfg.intervention == "mean"
    with pytest.raises(ConfigError, match="intervention 'resample' is not valid; valid: corrupted, filler, mean, zero"):
        from_dict(InteractionsConfig, {"intervention": "resample"})
    with pytest.raises(ConfigError, match="keep must be a probability"):
        from_dict(InteractionsConfig, {"keep": 1.5})
    bad = tmp_path / "bad.yaml"
    bad.write_text("components: [L1H0, nonsense]\n")
    assert main(["interactions", str(bad)]) == 2
    assert "mechpatch: error:" in capsys.readouterr().err


def test_components_from_labels():
    from mechpatch.zoo import load

    spec = load("redundant-induction-2l").spec
    comps = resolve_components(spec, ["L1H*", "L0H0+L0H1"])
    assert [tuple(s.label for s in c) for c in comps] == [(f"L1H{h}",) for h in range(8)] + [("L0H0", "L0H1")]


def test_a_tokens_run_labels_positions_and_draws_the_prompt(tmp_path):
    """``components: tokens``: one component per input position (the token embedding, in every prompt), labelled by
    the first prompt's tokens; the report draws the prompt; the exhaustive pairs equal token_interactions's over the
    same Embed sites (the run layer adds nothing to the measurement)."""
    import yaml

    from mechpatch import zoo
    from mechpatch.interactions import exhaustive_interactions
    from mechpatch.patching import Mean
    from mechpatch.sites import Embed
    from mechpatch.tasks import make_induction

    cfg = {"model": "induction-2l", "task": "induction", "task_args": {"n": 4, "block": 4, "seed": 1},
           "components": "tokens", "intervention": "mean", "n_masks": 120, "keep": 0.5, "chunk_size": 60,
           "out_dir": str(tmp_path / "run")}
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["interactions", str(path), "--quiet", "--threads", "1"]) == 0
    run = tmp_path / "run"
    assert (run / "figure_tokens.html").exists() and "the prompt: tokens by main effect" in (run / "report.html").read_text()
    sparse, exact = read_models(str(run / "interactions.json"))
    model = zoo.load("induction-2l")
    (b,) = make_induction(model, n=4, block=4, seed=1).batches
    seq = b.clean.shape[1]
    assert sparse.components == tuple(f"{p}:#{int(b.clean[0, p])}" for p in range(seq))
    assert sparse.info["positions"] == list(range(seq)) and exact.info["prompt_tokens"] == b.clean[0].tolist()
    task = make_induction(model, n=4, block=4, seed=1)
    direct = exhaustive_interactions(model, b.clean, [(Embed(pos=p),) for p in range(seq)], metric=task.metric,
                                     intervention=Mean(), answers=b.answers)
    assert set(direct.moebius) == set(exact.moebius)
    for term, value in direct.moebius.items():
        assert exact.moebius[term] == pytest.approx(value, abs=1e-5)
    with pytest.raises(ConfigError, match="components must be 'heads', 'tokens' or a list of site labels"):
        from_dict(InteractionsConfig, {"components": "token"})


@pytest.mark.parametrize("baseline", ["corrupted", "filler"])
def test_token_components_with_a_corrupted_or_filler_baseline(tmp_path, baseline):
    """``intervention: corrupted`` reads each ablated token from the task's corrupted prompts, ``intervention: filler``
    puts one token there: the run's exhaustive pairs equal the direct measurement with that source."""
    import torch
    import yaml

    from mechpatch import zoo
    from mechpatch.interactions import exhaustive_interactions
    from mechpatch.patching import Replace
    from mechpatch.sites import Embed
    from mechpatch.tasks import make_induction

    cfg = {"model": "induction-2l", "task": "induction", "task_args": {"n": 4, "block": 4, "seed": 1},
           "components": "tokens", "intervention": baseline, "n_masks": 120, "keep": 0.5, "chunk_size": 60,
           "out_dir": str(tmp_path / "run")}
    if baseline == "filler":
        cfg["filler"] = 7
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["interactions", str(path), "--quiet", "--threads", "1"]) == 0
    _, exact = read_models(str(tmp_path / "run" / "interactions.json"))
    model = zoo.load("induction-2l")
    task = make_induction(model, n=4, block=4, seed=1)
    (b,) = task.batches
    source = b.corrupted if baseline == "corrupted" else torch.full_like(b.clean, 7)
    assert not torch.equal(source, b.clean)
    direct = exhaustive_interactions(model, b.clean, [(Embed(pos=p),) for p in range(b.clean.shape[1])],
                                     metric=task.metric, source=source, intervention=Replace(), answers=b.answers)
    assert set(direct.moebius) == set(exact.moebius)
    for term, value in direct.moebius.items():
        assert exact.moebius[term] == pytest.approx(value, abs=1e-5)


def test_filler_is_refused_before_any_work(tmp_path, capsys):
    """A filler without ``components: tokens`` or without ``intervention: filler`` is a config error; a filler string
    the model cannot tokenize (induction-2l has no tokenizer) is refused by the plan, before the run directory is
    written."""
    import yaml

    with pytest.raises(ConfigError, match="filler and intervention: filler go together"):
        from_dict(InteractionsConfig, {"components": "heads", "intervention": "filler", "filler": 3})
    with pytest.raises(ConfigError, match="filler and intervention: filler go together"):
        from_dict(InteractionsConfig, {"components": "tokens", "intervention": "mean", "filler": 3})
    with pytest.raises(ConfigError, match="filler and intervention: filler go together"):
        from_dict(InteractionsConfig, {"components": "tokens", "intervention": "filler"})
    cfg = {"model": "induction-2l", "task": "induction", "task_args": {"n": 4, "block": 4, "seed": 1},
           "components": "tokens", "intervention": "filler", "filler": " the", "out_dir": str(tmp_path / "run")}
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["interactions", str(path), "--quiet"]) != 0
    assert "filler ' the' must be one token" in capsys.readouterr().err
    assert not (tmp_path / "run" / "manifest.json").exists()
