"""The shipped induction model (mechpatch/zoo): its circuit is there, its weights match their record,
and its training script runs.

Scores follow ../shared/reference/published_circuits.yaml (induction -> detection_scores): on
[BOS] + r + r with r random tokens, the previous-token score of a head is the mean of its attention
pattern's diagonal at offset -1 and the induction score the mean of the diagonal at -(len(r) - 1).
"""

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mechpatch.cache import cache_activations
from mechpatch.config import ConfigError
from mechpatch.errors import ModelLoadError
from mechpatch.sites import Pattern
from mechpatch._files import file_sha256
from mechpatch.zoo.induction import BOS, PROVENANCE, WEIGHTS_PATH, load_induction, record_path

REPO = Path(__file__).resolve().parents[2]
SEQ = 15  # len(r): [BOS] + r + r fills 31 of the 32 positions


@pytest.fixture(scope="module")
def model():
    return load_induction(device="cpu")


@pytest.fixture(scope="module")
def repeated():
    g = torch.Generator().manual_seed(2024)
    r = torch.randint(1, 64, (64, SEQ), generator=g)  # random tokens (repeats allowed), never BOS
    return torch.cat([torch.full((64, 1), BOS), r, r], dim=1)


@pytest.fixture(scope="module")
def scores(model, repeated):
    """(prev-token, induction) scores, each [layer, head], computed from the cached patterns."""
    sites = [Pattern(layer, head) for layer in range(2) for head in range(4)]
    cache = cache_activations(model, repeated, sites)
    prev = torch.zeros(2, 4)
    induction = torch.zeros(2, 4)
    for site in sites:
        pattern = cache[site]  # batch query key
        assert pattern.shape == (64, 2 * SEQ + 1, 2 * SEQ + 1)
        prev[site.layer, site.head] = pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean()
        induction[site.layer, site.head] = pattern.diagonal(offset=-(SEQ - 1), dim1=-2, dim2=-1).mean()
    return prev, induction


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_induction", REPO / "experiments" / "train_induction.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_previous_token_head_in_layer0(scores):
    prev, _ = scores
    print("prev-token scores [layer, head]:", prev)
    assert prev[0].max() >= 0.4, prev


def test_induction_head_in_layer1(scores):
    prev, induction = scores
    print("induction scores [layer, head]:", induction)
    assert induction[1].max() >= 0.4, induction
    # the mechanism is the two-layer one: no layer-0 head can do induction on its own
    assert induction[0].max() < 0.2, induction


def test_second_repeat_loss_far_below_first(model, repeated):
    logits = model(repeated)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), repeated[:, 1:], reduction="none")
    # target position t is predicted at t-1; compare r[1:] in the first copy with r[1:] in the second
    first = ce[:, 1:SEQ].mean()  # targets 2 .. SEQ
    second = ce[:, SEQ + 1 :].mean()  # targets SEQ+2 .. 2*SEQ
    print(f"first-repeat loss {first:.3f}, second-repeat loss {second:.3f} (uniform: {math.log(63):.3f})")
    assert second < 0.5 * first, (float(first), float(second))
    assert first > 3.0, float(first)  # the first copy is unpredictable: no leak from the future


def test_weights_match_their_record():
    with open(record_path(WEIGHTS_PATH), encoding="utf-8") as fh:
        record = json.load(fh)
    assert record["weights_sha256"] == file_sha256(WEIGHTS_PATH)
    assert record["seed"] == PROVENANCE["seed"] == record["config"]["seed"]
    assert record["architecture"] == PROVENANCE["architecture"]
    assert {"torch", "transformer_lens"} <= set(record["versions"])
    assert (REPO / PROVENANCE["script"]).exists() and (REPO / PROVENANCE["config"]).exists()


def test_changed_weights_are_refused(tmp_path):
    weights = tmp_path / "w.safetensors"
    shutil.copy(WEIGHTS_PATH, weights)
    record = json.loads(Path(record_path(WEIGHTS_PATH)).read_text())
    Path(record_path(weights)).write_text(json.dumps({**record, "weights_sha256": "0" * 64}))
    with pytest.raises(ModelLoadError, match="sha256"):
        load_induction(device="cpu", weights=weights)
    Path(record_path(weights)).unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_induction(device="cpu", weights=weights)


def test_training_data_randomises_block_length_and_offsets(script):
    cfg = script.DataConfig()
    tokens, second, first = script.make_batch(512, cfg, torch.Generator().manual_seed(0))
    assert (tokens[:, 0] == BOS).all() and (tokens[:, 1:] != BOS).all()
    lengths = first.sum(1) + 1
    assert torch.equal(lengths, second.sum(1) + 1)
    assert set(lengths.tolist()) == set(range(cfg.min_block, cfg.max_block + 1))
    first_start = first.int().argmax(1) - 1
    second_start = second.int().argmax(1) - 1
    assert len(set(first_start.tolist())) > 10 and len(set(second_start.tolist())) > 10
    assert len(set((second_start - first_start).tolist())) > 10
    for row, a, b, n in zip(tokens, first_start.tolist(), second_start.tolist(), lengths.tolist()):
        block = row[a : a + n]
        assert torch.equal(block, row[b : b + n]) and len(set(block.tolist())) == n  # repeated, distinct


def test_config_refuses_unknown_keys(script, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stpes: 30\n")
    with pytest.raises(ConfigError, match="unknown key 'stpes'"):
        script.main([str(path)])


def test_short_training_run(script, tmp_path):
    from safetensors.torch import load_file

    cfg = yaml.safe_load((REPO / "configs" / "train_induction.yaml").read_text())
    out = tmp_path / "short.safetensors"
    # one thread: two OpenMP threads thrash when the test runner shares the cores with other work
    cfg.update(steps=30, eval_every=15, eval_size=32, threads=1, out=str(out))
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(cfg))
    threads = torch.get_num_threads()
    try:
        assert script.main([str(path)]) == 0
    finally:
        torch.set_num_threads(threads)
    record = json.loads(Path(record_path(out)).read_text())
    assert record["steps"] == 30 and record["weights_sha256"] == file_sha256(out)
    assert math.isfinite(record["final"]["loss_all"])
    trained = load_induction(device="cpu", weights=out)
    saved = load_file(out)
    state = trained.bridge.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    shipped = load_file(WEIGHTS_PATH)
    assert not torch.equal(shipped["blocks.1.attn.k.weight"], saved["blocks.1.attn.k.weight"])
