"""experiments/data_interactions.py end to end on a small config: ground truth, a fit, the validation retrainings,
the run directory (report, figure, results), the finished run found again, a damaged result named (damaged retraining units: tests/interactions/test_data.py)."""

import importlib.util
import json
from pathlib import Path

import pytest

from mechpatch.config import ConfigError
from mechpatch.errors import DamagedFileError

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "data_interactions.py"


def _module():
    spec = importlib.util.spec_from_file_location("data_interactions_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_data_interactions_experiment(tmp_path, capsys):
    module = _module()
    out = tmp_path / "out"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("subset: [dup0a, dup0b, half0a, half0b, wrong0]\nbudgets: [150]\nbackends: [mechpatch]\n"
                   f"top_pairs: 3\nout_dir: {out}\n")
    assert module.main([str(cfg)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["truth"]["retrainings"] == 1 + 5 + 10
    pairs = {p["pair"]: p for p in res["truth"]["top_pairs"]}
    assert pairs["dup0a x dup0b"]["kind"] == "redundancy" and pairs["half0a x half0b"]["kind"] == "synergy"
    (run,) = res["runs"]
    assert run["backend"] == "mechpatch" and run["retrainings"] <= 150 and -1.0 <= run["r2_heldout"] <= 1.0
    assert run["k"] == 5  # half the subset's 10 pairs: a top-10 of 10 pairs would match by construction
    terms = res["validation"]["terms"]
    assert 1 <= len(terms) <= 3 and res["validation"]["retrainings"] >= 3
    for t in terms:  # each retrained on every subset: its effect is a multiple of one probe fact (1/42)
        assert abs(t["retrained"] * 42 - round(t["retrained"] * 42)) < 0.01  # results keep 4 decimals
    assert res["distinct_retrainings"] <= 16 + 150 + 3 * 3  # the validation reuses what the search trained
    assert (out / "report.html").stat().st_size > 100_000 and (out / "figure_groups.html").exists()
    capsys.readouterr()
    assert module.main([str(cfg)]) == 0
    assert "finished already" in capsys.readouterr().out
    (out / "results.json").write_text((out / "results.json").read_text().replace('"groups": 36', '"groups": 35'))
    with pytest.raises(DamagedFileError, match="results.json"):  # a finished run's files are checked when found
        module.main([str(cfg)])


def test_bad_config_is_refused_before_any_retraining(tmp_path):
    module = _module()
    cfg = tmp_path / "cfg.yaml"
    for text, message in (("backends: [lasso]\n", "backends must be some of mechpatch, proxy, spex"),
                          ("subset: [dup9]\n", "subset names unknown groups"),
                          ("executor: dask\n", "unknown executor 'dask'")):
        cfg.write_text(text + f"out_dir: {tmp_path / 'out'}\n")
        with pytest.raises(ConfigError, match=message):
            module.main([str(cfg)])
    assert not (tmp_path / "out").exists()
