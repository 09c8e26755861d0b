"""Property-based tests (hypothesis): generated site strings and sweep configs, valid or not, end either in a
typed MechpatchError before any work (and, for a run, before any file is written) or in results equal to the
slow reference (one patch per forward)."""

import json
import math
import os

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mechpatch.errors import MechpatchError

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])

# ------------------------------------------------------------------ site strings

# mostly in range for the tiny models (2 layers, 4 heads, 2 kv groups, 7 tokens), sometimes not
_INDEX = st.sampled_from([0, 0, 1, 1, 0, 1, 2, 3, -1, 4, 7])
_POS = st.one_of(st.just(""), st.sampled_from([0, 3, 6, -1, -7, 7, -8]).map(lambda p: f"@{p}"),
                 st.lists(st.integers(-9, 9), min_size=1, max_size=3).map(lambda ps: f"@[{','.join(map(str, ps))}]"))
_SITE = st.one_of(
    st.tuples(_INDEX, _INDEX, _POS).map(lambda t: f"L{t[0]}H{t[1]}{t[2]}"),
    st.tuples(_INDEX, st.sampled_from(["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]), _POS)
    .map(lambda t: f"L{t[0]}.{t[1]}{t[2]}"),
    st.tuples(_INDEX, _INDEX, st.sampled_from(["q", "result", "pattern"]), _POS)
    .map(lambda t: f"L{t[0]}H{t[1]}.{t[2]}{t[3]}"),
    st.tuples(_INDEX, _INDEX, st.sampled_from(["k", "v"]), _POS).map(lambda t: f"L{t[0]}G{t[1]}.{t[2]}{t[3]}"),
    st.tuples(_INDEX, st.integers(-2, 200), _POS).map(lambda t: f"L{t[0]}N{t[1]}{t[2]}"),
    st.sampled_from(["embed", "pos_embed", "L*H0", "L1H*", "L0-1.resid_pre", "L0-5.mlp_out", "L1H*.q@2"]),
    st.text(max_size=8),
)


@pytest.mark.parametrize("name", ["gpt2", "gqa"])
@settings(max_examples=40, **SETTINGS)
@given(texts=st.lists(_SITE, min_size=1, max_size=3))
def test_site_strings_give_a_typed_error_or_the_reference_result(request, name, texts):
    from mechpatch.patching import run_patches
    from mechpatch.sites import select

    model = request.getfixturevalue(name)
    g = torch.Generator().manual_seed(0)
    clean, corrupted = torch.randint(1, 100, (2, 7), generator=g), torch.randint(1, 100, (2, 7), generator=g)
    answers = torch.tensor([[3, 4], [5, 6]])
    try:
        sites = select(model.spec, *texts)
        fast = run_patches(model, corrupted, [sites], metric="logit_diff", source=clean, answers=answers, method="auto")
    except MechpatchError as err:
        event(f"refused: {type(err).__name__}")
        return  # refused, with a typed error, before any patching
    event("ran")
    ref = run_patches(model, corrupted, [sites], metric="logit_diff", source=clean, answers=answers, method="reference")
    torch.testing.assert_close(fast.values, ref.values, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ sweep configs through the command line

_CONFIG = st.fixed_dictionaries(
    {"kinds": st.lists(st.sampled_from(["head", "resid_pre", "q", "v", "attn_out", "mlp_out", "pattern"]),
                       min_size=1, max_size=2)},
    optional={
        "layers": st.lists(st.integers(-1, 3), max_size=3),
        "positions": st.lists(st.integers(-13, 13), max_size=3),
        "by_position": st.booleans(),
        "intervention": st.sampled_from(["replace", "zero", "mean", "interpolate", "resample", "swap"]),
        "alpha": st.sampled_from([0.0, 0.5, 1.0, 1.5, -0.1, math.nan, math.inf]),
        "direction": st.sampled_from(["denoise", "noise", "denoising"]),
        "metric": st.sampled_from(["task", "kl_div", "logit_diff", "loss"]),
        "chunk_size": st.integers(-1, 9),
        "n": st.integers(-1, 5),
        "block": st.integers(1, 20),
    },
)


def _reference(cfg):
    """The sweep a finished run should hold, computed by the engine's one-patch-per-forward reference."""
    from mechpatch import zoo
    from mechpatch.patching import sweep
    from mechpatch.runs.plan import build_task

    model = zoo.load("induction-2l")
    task = build_task(model, "induction", cfg.task.args, cfg.seed)
    (b,) = task.batches
    metric = task.metric if cfg.metric == "task" else cfg.metric
    return {kind: sweep(model, b.pair, kind, metric=metric, direction=cfg.direction,
                        intervention=cfg.make_intervention(), by_position=cfg.by_position, layers=cfg.layers,
                        positions=cfg.positions, method="reference").values for kind in cfg.kinds}


@pytest.mark.slow
@settings(max_examples=50, **SETTINGS)
@given(data=_CONFIG)
def test_sweep_configs_give_a_typed_error_before_any_file_or_the_reference_result(tmp_path_factory, data):
    from mechpatch.cli import main
    from mechpatch.config import load_config
    from mechpatch.runs import SweepConfig, load_sweep

    tmp = tmp_path_factory.mktemp("prop")
    out = tmp / "run"
    args = {k: data.pop(k) for k in ("n", "block") if k in data}
    config = {"model": "induction-2l", "task": {"name": "induction", "args": {"n": 3, "block": 5, **args}},
              "out_dir": str(out), **data}
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    status = main(["sweep", str(path), "--quiet"])
    event(f"exit status {status}")
    if status != 0:
        assert status in (1, 2)  # a typed error (2: the config, 1: the machine), and nothing written
        assert not out.exists() or os.listdir(out) == [], os.listdir(out)
        return
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    expected = _reference(load_config(SweepConfig, str(path)))
    run = load_sweep(str(out))
    for kind, values in expected.items():
        torch.testing.assert_close(run.results[kind].values, values.to(run.results[kind].values.dtype),
                                   rtol=1e-5, atol=1e-5)
