"""The published-circuit experiments, end to end on tiny local models: configs load, the model loads from
the directory the config names, effects are computed, head classes found and compared, results written."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml

from mechpatch.config import load_config
from published import load_reference, top_units  # experiments/published/published.py (conftest)

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "experiments" / "published"
CONFIGS = REPO / "configs" / "published"
SCRIPTS = ("ioi_gpt2", "greater_than_gpt2", "docstring_attn_only_4l")


def _script(name):
    spec = importlib.util.spec_from_file_location(f"published_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(tmp_path, name, **overrides):
    """The shipped config of experiment ``name`` with ``overrides``, written to ``tmp_path``."""
    data = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    data.update(overrides, device="cpu", out=str(tmp_path / "results.json"))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _parse_unit(label):
    return int(label[3:]) if label.startswith("MLP") else tuple(int(x) for x in label[1:].split("H"))


def _check_classes(results, effects_of, counts):
    """Every class's found units are the top units of the effects it was chosen from, recomputed here,
    and the published units come from the reference file."""
    for c in results["classes"]:
        effect = {_parse_unit(k): v for k, v in results["effects"][effects_of[c["class"]]].items()}
        assert all(math.isfinite(v) for v in effect.values())
        want = top_units(effect, counts[c["class"]], sign=-1 if c["class"] != "negative_name_mover" else 1)
        assert [_parse_unit(u) for u in c["found"]] == want, c["class"]
        assert set(c["overlap"]) == set(c["found"]) & set(c["published"])
        if c["found"]:
            assert c["precision"] == pytest.approx(len(c["overlap"]) / len(c["found"]))
        assert c["recall"] == pytest.approx(len(c["overlap"]) / len(c["published"]))


@pytest.mark.parametrize("name", SCRIPTS)
def test_shipped_configs_load(name):
    module = _script(name)
    cfg_cls = {"ioi_gpt2": "IOIConfig", "greater_than_gpt2": "GreaterThanConfig",
               "docstring_attn_only_4l": "DocstringConfig"}[name]
    cfg = load_config(getattr(module, cfg_cls), CONFIGS / f"{name}.yaml")
    assert cfg.model in ("gpt2", "NeelNanda/Attn_Only_4L512W_C4_Code")


def test_ioi_end_to_end(tiny_gpt2_dir, tmp_path, capsys):
    module = _script("ioi_gpt2")
    cfg = _config(tmp_path, "ioi_gpt2", model=str(tiny_gpt2_dir), n_prompts=8, templates=[0], n_name_movers=2,
                  n_negative_name_movers=1, n_s_inhibition=2, n_s2_heads=2)
    assert module.main([str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "class" in out and "name_mover" in out and "s_inhibition" in out and "logit_diff" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["task"]["n_prompts"] == 8
    assert results["metrics"]["logit_diff"]["published"] == 3.56
    assert results["metrics"]["accuracy"]["published"] == 0.993
    assert [c["class"] for c in results["classes"]] == [
        "name_mover", "negative_name_mover", "s_inhibition", "induction+duplicate_token"]
    assert len(results["effects"]["direct_on_logits"]) == 8  # 2 layers x 4 heads
    effects_of = {"name_mover": "direct_on_logits", "negative_name_mover": "direct_on_logits",
                  "s_inhibition": "into_name_mover_queries",
                  "induction+duplicate_token": "into_s_inhibition_values_at_S2"}
    # heads at or after the receivers' layer cannot reach them: their path effect is exactly zero
    nm_layers = [_parse_unit(u)[0] for u in results["classes"][0]["found"]]
    for label, v in results["effects"].get("into_name_mover_queries", {}).items():
        if _parse_unit(label)[0] >= max(nm_layers):
            assert v == 0.0
    present = {k for k in effects_of if effects_of[k] in results["effects"]}
    _check_classes({**results, "classes": [c for c in results["classes"] if c["class"] in present]}, effects_of,
                   {"name_mover": 2, "negative_name_mover": 1, "s_inhibition": 2, "induction+duplicate_token": 2})
    assert results["classes"][0]["published"] == ["L9H9", "L10H0", "L9H6"]


def test_greater_than_end_to_end(tiny_gpt2_dir, tmp_path, capsys):
    module = _script("greater_than_gpt2")
    cfg = _config(tmp_path, "greater_than_gpt2", model=str(tiny_gpt2_dir), n_prompts=16, n_heads=3, n_mlps=1)
    assert module.main([str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "end_heads" in out and "late_mlps" in out and "prob_diff" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metrics"]["prob_diff"]["published"] == 0.817
    assert -1 <= results["metrics"]["prob_diff"]["measured"] <= 1
    assert -1 <= results["metrics"]["cutoff_sharpness"]["measured"] <= 1
    assert len(results["effects"]["heads_at_END"]) == 8 and len(results["effects"]["mlps_at_END"]) == 2
    effects_of = {"end_heads": "heads_at_END", "hanna_heads": "heads_at_END", "acdc_amid": "heads_at_END",
                  "late_mlps": "mlps_at_END"}
    _check_classes(results, effects_of, {"end_heads": 3, "hanna_heads": 3, "acdc_amid": 3, "late_mlps": 1})
    assert [c["class"] for c in results["classes"]] == ["end_heads", "hanna_heads", "acdc_amid", "late_mlps"]


def test_docstring_end_to_end_on_an_attention_only_model(tiny_attn_only, tmp_path, capsys):
    module = _script("docstring_attn_only_4l")
    cfg = load_config(module.DocstringConfig, _config(tmp_path, "docstring_attn_only_4l", n_prompts=10,
                                                      n_circuit_heads=3, n_argument_movers=1))
    results = module.run(cfg, model=tiny_attn_only)  # the test hook: a model instead of loading cfg.model
    out = capsys.readouterr().out
    assert "circuit" in out and "argument_mover" in out
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["metrics"]["logit_diff"]["published"] == 0.48
    _check_classes(results, {"circuit": "heads_all_positions", "argument_mover": "direct_on_logits"},
                   {"circuit": 3, "argument_mover": 1})
    # in an attention-only model a last-layer head reaches the logits only directly
    for label in ("L1H0", "L1H3"):
        assert results["effects"]["direct_on_logits"][label] == pytest.approx(
            results["effects"]["heads_all_positions"][label], abs=1e-5)


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_model_that_cannot_load_is_a_clear_message(name, tmp_path, capsys):
    module = _script(name)
    cfg = _config(tmp_path, name, model=str(tmp_path / "no-such-model"))
    assert module.main([str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "no such model directory" in err and "set `model:`" in err
    assert not (tmp_path / "results.json").exists()


def test_a_model_that_cannot_express_the_task_is_a_clear_message(tmp_path, capsys):
    cfg = _config(tmp_path, "greater_than_gpt2", model="induction-2l")  # a bundled model without a tokenizer
    assert _script("greater_than_gpt2").main([str(cfg)]) == 2
    assert "greater-than needs a tokenizer" in capsys.readouterr().err


def test_reference_sections():
    ioi = load_reference(EXPERIMENTS / "reference.yaml", "ioi")
    assert ioi.metric("logit_diff") == 3.56 and len(ioi.heads("s_inhibition")) == 4 and ioi.sources
    gt = load_reference(EXPERIMENTS / "reference.yaml", "greater_than")
    assert gt.metric("prob_diff") == 0.817 and gt.mlp_classes["late_mlps"] == [8, 9, 10, 11]
    ds = load_reference(EXPERIMENTS / "reference.yaml", "docstring")
    assert ds.heads("circuit") == ((0, 5), (1, 2), (1, 4), (2, 0), (3, 0), (3, 6))


SHARED = REPO.parent / "shared" / "reference" / "published_circuits.yaml"


@pytest.mark.skipif(not SHARED.exists(), reason="the shared reference data is not beside this checkout")
def test_reference_agrees_with_the_shared_reference_data():
    shared = yaml.safe_load(SHARED.read_text())
    path = EXPERIMENTS / "reference.yaml"
    ioi = load_reference(path, "ioi")
    for name, heads in shared["ioi"]["circuit"]["classes"].items():
        assert ioi.head_classes[name] == heads["heads"], name
    assert ioi.metric("logit_diff") == shared["ioi"]["metric"]["full_model_value"]
    assert ioi.metric("accuracy") == shared["ioi"]["metric"]["io_over_s_fraction"]
    gt = load_reference(path, "greater_than")
    assert gt.head_classes["end_heads"] == shared["greater_than"]["circuit"]["attention_heads_end_position"]
    assert gt.head_classes["hanna_heads"] == shared["greater_than"]["circuit"]["hanna_heads"]
    assert gt.head_classes["acdc_amid"] == shared["greater_than"]["circuit"]["acdc_groups"]["AMID"]
    assert gt.mlp_classes["late_mlps"] == shared["greater_than"]["circuit"]["mlps_late"]
    assert gt.metric("prob_diff") == shared["greater_than"]["metric"]["full_model_prob_diff"]
    ds = load_reference(path, "docstring")
    assert ds.head_classes["circuit"] == shared["docstring"]["circuit"]["heads"]
    assert ds.head_classes["argument_mover"] == shared["docstring"]["circuit"]["roles_secondary"][
        "argument_movers_output"]
    assert ds.metric("logit_diff") == shared["docstring"]["metric"]["full_model_mean_logit_diff_acdc_table4"]
