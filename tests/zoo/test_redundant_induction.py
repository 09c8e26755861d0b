"""The shipped induction model with backup heads: its redundancy is there, its weights match their record, its
training script runs (and applies head dropout)."""

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mechpatch import zoo
from mechpatch.errors import ModelLoadError
from mechpatch.interactions import evaluate_masks, make_design
from mechpatch.patching import Mean
from mechpatch.sites import heads
from mechpatch.tasks import head_scores, make_induction
from mechpatch._files import file_sha256
from mechpatch.zoo.induction import record_path
from mechpatch.zoo.redundant_induction import PROVENANCE, WEIGHTS_PATH, load_redundant_induction

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    return load_redundant_induction(device="cpu")


@pytest.fixture(scope="module")
def task(model):
    return make_induction(model, n=16, block=10, seed=0)


@pytest.fixture(scope="module")
def script():
    path = REPO / "experiments" / "train_redundant_induction.py"
    spec = importlib.util.spec_from_file_location("train_redundant_induction", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_registered_in_the_zoo(model):
    assert "redundant-induction-2l" in zoo.MODELS
    assert zoo.load("redundant-induction-2l", device="cpu").spec == model.spec
    assert model.spec.n_heads == 8 and model.spec.n_layers == 2 and model.spec.attn_only


def test_every_layer1_head_is_an_induction_head(model, task):
    prev, induction = head_scores(model, task)
    print("induction scores:", induction, "previous-token scores:", prev)
    assert (induction[1] >= 0.5).all(), induction
    assert induction[0].max() < 0.2 and prev[0].max() >= 0.4


def test_each_induction_head_alone_is_minor_all_together_are_not(model, task):
    """Mean-ablating any one layer-1 head costs under 10% of what ablating all eight together costs."""
    (b,) = task.batches
    comps = heads(model.spec, layers=[1])
    masks = torch.cat([make_design("one_out", 8).masks, torch.ones(1, 8, dtype=torch.bool)])
    run = evaluate_masks(model, b.clean, comps, masks=masks, metric=task.metric, intervention=Mean())
    base, singles, together = run.values[0], run.values[1:9] - run.values[0], run.values[9] - run.values[0]
    print(f"base {base:.3f}; one head: {singles.tolist()}; all eight: {together:.3f}")
    assert together < -2.0  # the induction behaviour is gone (log-prob drops by > 2 nats)
    assert (singles.abs() < 0.1 * together.abs()).all()


def test_weights_match_their_record():
    record = json.loads(Path(record_path(WEIGHTS_PATH)).read_text())
    assert record["weights_sha256"] == file_sha256(WEIGHTS_PATH)
    assert record["architecture"] == PROVENANCE["architecture"]
    assert record["config"]["head_dropout"] > 0 and record["config"]["dropout_layers"] == [1]
    assert (REPO / PROVENANCE["script"]).exists() and (REPO / PROVENANCE["config"]).exists()


def test_changed_weights_are_refused(tmp_path):
    weights = tmp_path / "w.safetensors"
    shutil.copy(WEIGHTS_PATH, weights)
    record = json.loads(Path(record_path(WEIGHTS_PATH)).read_text())
    Path(record_path(weights)).write_text(json.dumps({**record, "weights_sha256": "0" * 64}))
    with pytest.raises(ModelLoadError, match="sha256"):
        load_redundant_induction(device="cpu", weights=weights)
    Path(record_path(weights)).unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_redundant_induction(device="cpu", weights=weights)


def test_head_dropout_drops_whole_heads_per_sequence(script):
    g = torch.Generator().manual_seed(0)
    ((name, drop),) = script.head_dropout_hooks(0.5, (1,), g)
    assert name == "blocks.1.attn.hook_z"
    z = torch.ones(400, 5, 8, 3)
    out = drop(z)
    assert set(out.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
    assert torch.equal(out[:, :1].expand_as(out), out)  # the same heads dropped at every position
    assert abs(float((out == 0).float().mean()) - 0.5) < 0.05
    assert script.head_dropout_hooks(0.0, (1,), g) == []


def test_short_training_run(script, tmp_path):
    cfg = yaml.safe_load((REPO / "configs" / "train_redundant_induction.yaml").read_text())
    out = tmp_path / "short.safetensors"
    cfg.update(steps=20, dropout_start=10, eval_every=10, eval_size=32, threads=1, out=str(out))
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(cfg))
    threads = torch.get_num_threads()
    try:
        assert script.main([str(path)]) == 0
    finally:
        torch.set_num_threads(threads)
    record = json.loads(Path(record_path(out)).read_text())
    assert record["steps"] == 20 and record["weights_sha256"] == file_sha256(out)
    assert math.isfinite(record["final"]["loss_all"])
    assert len(record["final"]["loss_second_copy_layer1_head_ablated"]) == 8
    trained = load_redundant_induction(device="cpu", weights=out)
    assert trained.spec.n_heads == 8
