"""Config-driven sweeps: config validation, results equal to the engine's, the files of a run, report rebuild."""

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from mechpatch.config import ConfigError, from_dict, load_config
from mechpatch.runs import RunConflictError, SweepConfig, load_sweep, rebuild_report, run_sweep
from tests.runs.conftest import induction_config


@pytest.mark.parametrize("change, message", [
    ({"kinds": ["haed"]}, r"kinds 'haed' is not valid; valid: attn_out, head"),
    ({"metirc": "task"}, r"unknown key 'metirc'; valid keys: 'model', 'task', 'prompts', 'kinds'"),
    ({"chunk_size": 0}, r"chunk_size must be a positive integer"),
    ({"chunk_size": "8"}, r"chunk_size: expected int, got str"),
    ({"direction": "sideways"}, r"direction 'sideways' is not valid; valid: denoise, noise"),
    ({"intervention": "swap"}, r"valid: interpolate, mean, replace, resample, zero"),
    ({"alpha": 0.3}, r"alpha is only used by intervention 'interpolate'"),
    ({"model": "gpt-7"}, r"model 'gpt-7' is neither a bundled model \('induction-2l'"),
    ({"task": {"name": "iio"}}, r"task 'iio' is not valid; valid: docstring, greater_than, induction, ioi"),
    ({"task": {"name": "induction", "arg": {}}}, r"unknown key 'arg'; valid keys: 'name', 'args'"),
    ({"task": None}, r"give exactly one of task"),
    ({"prompts": {"clean": ["a"], "corrupted": ["b"]}}, r"give exactly one of task"),
    ({"device": "tpu"}, r"device 'tpu' is not valid"),
    ({"kinds": ["head", "head"]}, r"lists a kind twice"),
])
def test_config_errors_name_the_valid_choices(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(SweepConfig, {**induction_config(tmp_path), **change})


def test_explicit_prompts_need_a_named_metric(tmp_path):
    data = {**induction_config(tmp_path), "task": None, "prompts": {"clean": ["a"], "corrupted": ["b"]}}
    with pytest.raises(ConfigError, match="metric 'task' needs a task"):
        from_dict(SweepConfig, data)


def test_bundled_sweep_configs_load():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    names = [n for n in os.listdir(root) if n.startswith("sweep_") and n.endswith(".yaml")]
    assert names
    for name in names:
        load_config(SweepConfig, os.path.join(root, name))


@pytest.fixture(scope="module")
def induction_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "run"
    cfg = from_dict(SweepConfig, induction_config(out))
    return cfg, run_sweep(cfg, quiet=True)


def test_results_equal_the_engine_sweep(induction_run):
    from mechpatch import zoo
    from mechpatch.patching import sweep
    from mechpatch.tasks import make_task

    cfg, run = induction_run
    model = zoo.load("induction-2l", device="cpu")
    task = make_task("induction", model, n=6, block=5, seed=0)
    for kind in cfg.kinds:
        ref = sweep(model, task.batches[0].pair, kind, metric=task.metric)
        got = run.results[kind]
        assert got.axes == ref.axes and got.labels == ref.labels and got.sites == ref.sites
        assert torch.equal(got.clean, ref.clean) and torch.equal(got.noop, ref.noop)
        # chunks of 4 cells batch the forwards differently from one call: equal up to float rounding
        torch.testing.assert_close(got.values, ref.values, rtol=1e-5, atol=1e-5)


def test_one_chunk_is_bitwise_the_engine_sweep(tmp_path):
    from mechpatch import zoo
    from mechpatch.patching import sweep
    from mechpatch.tasks import make_task

    cfg = from_dict(SweepConfig, induction_config(tmp_path, kinds=["head"], chunk_size=1000))
    run = run_sweep(cfg, quiet=True)
    model = zoo.load("induction-2l", device="cpu")
    ref = sweep(model, make_task("induction", model, n=6, block=5, seed=0).batches[0].pair, "head",
                metric=make_task("induction", model, n=6, block=5, seed=0).metric)
    assert torch.equal(run.results["head"].values, ref.values)


def test_run_directory_holds_manifest_tables_tensors_figures_report(induction_run):
    cfg, run = induction_run
    out = cfg.out_dir
    m = json.loads(Path(out, "manifest.json").read_text())
    assert m["status"] == "finished" and m["command"] == "sweep" and m["seed"] == 0
    assert m["config"]["kinds"] == ["resid_pre", "head"] and len(m["config_hash"]) == 64
    assert m["model"]["source"] == "induction-2l" and len(m["model"]["weights_sha256"]) == 64
    assert m["device"]["device"] == "cpu" and m["started"] <= m["finished"]
    assert {"mechpatch", "torch", "transformer-lens"} <= set(m["versions"])
    assert m["figures"] == ["figure_resid_pre.html", "figure_head.html"]
    assert m["prompts"]["task"] == "induction" and m["prompts"]["args"]["seed"] == 0

    head = run.results["head"]
    tidy = pd.read_parquet(os.path.join(out, "results", "head.parquet"))
    assert len(tidy) == head.values.numel()
    assert {"kind", "layer", "head", "layer_index", "head_index", "sites", "noop", "prompt", "value"} <= set(tidy)
    row = tidy[(tidy["layer"] == "L1") & (tidy["head"] == "H2") & (tidy["prompt"] == 3)]
    assert row["value"].item() == float(head.values[1, 2, 3])
    cells = pd.read_parquet(os.path.join(out, "results", "resid_pre_cells.parquet"))
    assert len(cells) == run.results["resid_pre"].noop.numel()
    assert cells["mean"].tolist() == run.results["resid_pre"].mean().reshape(-1).double().tolist()

    report = Path(out, "report.html").read_text()
    assert report.count('class="plotly-graph-div"') == 2 and "weights sha256" in report
    assert len(report) > 1_000_000  # plotly.js embedded: the page stands alone
    assert 'src="plotly.min.js"' in Path(out, "figure_head.html").read_text()
    assert os.path.exists(os.path.join(out, "plotly.min.js"))


def test_read_back_without_the_model_and_render_in_jupyter(induction_run):
    cfg, run = induction_run
    again = load_sweep(cfg.out_dir)
    for kind, r in run.results.items():
        assert torch.equal(again.results[kind].values, r.values) and again.results[kind].sites == r.sites
    html = again._repr_html_()
    assert "<table>" in html and html.count("plotly-graph-div") == 2 and "L1H" in html
    frame = again.to_dataframe()
    assert set(frame["kind"]) == {"resid_pre", "head"}


def test_report_is_rebuilt_from_the_files(induction_run):
    cfg, _ = induction_run
    report = os.path.join(cfg.out_dir, "report.html")
    before = Path(report).read_text()
    os.remove(report)
    os.remove(os.path.join(cfg.out_dir, "figure_head.html"))
    assert rebuild_report(cfg.out_dir) == report
    after = Path(report).read_text()
    assert os.path.exists(os.path.join(cfg.out_dir, "figure_head.html"))
    strip = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    assert strip.sub("", before) == strip.sub("", after)  # the same page, up to plotly's random div ids


def test_other_config_or_other_weights_in_the_same_directory_is_refused(induction_run, tmp_path):
    cfg, _ = induction_run
    with pytest.raises(RunConflictError, match="another config"):
        run_sweep(from_dict(SweepConfig, induction_config(cfg.out_dir, seed=1)), quiet=True)

    small = from_dict(SweepConfig, induction_config(tmp_path / "w", kinds=["head"]))
    run_sweep(small, quiet=True)
    path = tmp_path / "w" / "manifest.json"
    m = json.loads(path.read_text())
    m["status"], m["model"]["weights_sha256"] = "running", "0" * 64  # as if interrupted, then the weights changed
    path.write_text(json.dumps(m))
    with pytest.raises(RunConflictError, match="other weights"):
        run_sweep(small, quiet=True)
    assert run_sweep(small, quiet=True, force=True).results["head"].values.shape == (2, 4, 6)


def test_noise_direction_zero_ablation_and_interpolation(tmp_path):
    cfg = from_dict(SweepConfig, induction_config(tmp_path / "z", kinds=["head"], direction="noise",
                                                  intervention="zero"))
    r = run_sweep(cfg, quiet=True).results["head"]
    assert r.direction == "noise" and r.intervention == "Zero"
    cfg = from_dict(SweepConfig, induction_config(tmp_path / "i", kinds=["head"], intervention="interpolate",
                                                  alpha=0.0))
    r = run_sweep(cfg, quiet=True).results["head"]
    assert r.intervention == "Interpolate" and bool(r.noop.all())  # alpha 0 changes nothing


def test_explicit_prompts_on_a_model_directory(tiny_gpt2_dir, tmp_path):
    clean = ["When Mary and John went to the store, John gave a drink to",
             "When John and Mary went to the store, Mary gave a drink to"]
    corrupted = [c.replace(", John", ", Mary", 1) if ", John" in c else c.replace(", Mary", ", John", 1) for c in clean]
    cfg = from_dict(SweepConfig, {
        "model": str(tiny_gpt2_dir), "kinds": ["resid_pre", "head"], "metric": "logit_diff", "chunk_size": 5,
        "prompts": {"clean": clean, "corrupted": corrupted, "answers": [[" Mary", " John"], [" John", " Mary"]]},
        "out_dir": str(tmp_path / "p"),
    })
    run = run_sweep(cfg, quiet=True)
    r = run.results["resid_pre"]
    assert r.n_prompts == 2 and r.labels[1][1].startswith("1:")  # positions labelled with the tokens
    assert run.manifest["model"]["source"] == str(tiny_gpt2_dir)


def test_task_of_several_lengths(tiny_gpt2_dir, tmp_path):
    from mechpatch.errors import ShapeMismatchError

    task = {"name": "ioi", "args": {"n": 6, "templates": [0, 1, 2]}}
    base = {"model": str(tiny_gpt2_dir), "task": task, "kinds": ["head"], "chunk_size": 3}
    run = run_sweep(from_dict(SweepConfig, {**base, "out_dir": str(tmp_path / "h")}), quiet=True)
    assert run.results["head"].n_prompts == 6
    with pytest.raises(ShapeMismatchError, match="different lengths"):
        run_sweep(from_dict(SweepConfig, {**base, "kinds": ["resid_pre"], "out_dir": str(tmp_path / "r")}), quiet=True)


@pytest.mark.parametrize("name", ["sweep_induction.yaml", "sweep_tracr_reverse.yaml"])
def test_bundled_small_sweep_configs_run(tmp_path, name):
    from mechpatch.runs.sweep import effect

    root = Path(__file__).resolve().parents[2] / "configs"
    cfg = load_config(SweepConfig, root / name)
    cfg = type(cfg)(**{**cfg.__dict__, "out_dir": str(tmp_path / "run")})
    run = run_sweep(cfg, quiet=True)
    assert list(run.results) == list(cfg.kinds)
    if name == "sweep_tracr_reverse.yaml":  # zero-ablating layers 0-2's MLPs breaks the program; layer 3's does not
        change = effect(run.results["mlp_out"]).tolist()
        assert min(change[:3]) > 0.1 and change[3] == 0.0
    else:  # restoring the induction head's (L1H0) clean output restores the most
        norm = run.results["head"].normalized()
        assert int(norm.argmax()) == 4 and float(norm[1, 0]) > 0.2


def test_a_float64_sweep_keeps_float64_results(tmp_path):
    cfg = from_dict(SweepConfig, induction_config(tmp_path / "f64", dtype="float64", kinds=["head"]))
    run = run_sweep(cfg, quiet=True)
    r = run.results["head"]
    assert r.values.dtype == r.clean.dtype == r.corrupted.dtype == torch.float64
    assert pd.read_parquet(tmp_path / "f64" / "results" / "head.parquet")["value"].dtype == "float64"
