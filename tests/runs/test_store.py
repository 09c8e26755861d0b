"""The run store: config hash, weights hash, atomic writes, conflicts between runs in one directory."""

import os
import time

import pytest
import torch

from mechpatch.errors import DamagedFileError
from mechpatch.runs.store import (
    RunConflictError,
    RunError,
    RunStore,
    config_hash,
    read_manifest,
    read_tensors,
    weights_hash,
    write_tensors,
)


def test_config_hash_ignores_where_results_go_only():
    base = {"model": "m", "seed": 0, "kinds": ["head"], "out_dir": "a"}
    assert config_hash(base) == config_hash({**base, "out_dir": "b"})
    assert config_hash(base) == config_hash(dict(reversed(list(base.items()))))  # key order does not matter
    assert config_hash(base) != config_hash({**base, "seed": 1})
    assert config_hash(base) != config_hash({**base, "kinds": ["head", "q"]})
    assert len(config_hash(base)) == 64


def test_weights_hash_is_stable_cached_and_sees_one_changed_weight():
    from mechpatch import zoo

    a, b = zoo.load("induction-2l", device="cpu"), zoo.load("induction-2l", device="cpu")
    h = weights_hash(a)
    assert h == weights_hash(b) and len(h) == 64
    t = time.perf_counter()
    assert weights_hash(a) == h  # cached per loaded model
    assert time.perf_counter() - t < 0.01
    with torch.no_grad():
        p = next(b.bridge.parameters())
        p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(float("inf")))  # one ulp
    from mechpatch.runs import store

    store._WEIGHTS_HASHES.clear()
    assert weights_hash(b) != h


def test_tensors_are_written_atomically_with_metadata(tmp_path):
    path = str(tmp_path / "t.safetensors")
    write_tensors(path, {"x": torch.arange(6.0).reshape(2, 3), "m": torch.tensor([True, False])}, {"k": "v"})
    tensors, meta = read_tensors(path)
    assert torch.equal(tensors["x"], torch.arange(6.0).reshape(2, 3)) and meta == {"k": "v"}
    assert os.listdir(tmp_path) == ["t.safetensors"]  # no temporary file left behind


def test_run_life_cycle_and_conflicts(tmp_path):
    cfg = {"model": "m", "seed": 0, "out_dir": str(tmp_path)}
    store = RunStore(str(tmp_path), "sweep", cfg)
    assert store.check() is False and store.status is None
    (tmp_path / "chunks" / "g").mkdir(parents=True)
    (tmp_path / "chunks" / "g" / "00000.safetensors.tmp999").write_text("half a file from a killed writer")
    store.begin(seed=0)
    assert not (tmp_path / "chunks" / "g" / "00000.safetensors.tmp999").exists()
    assert read_manifest(str(tmp_path))["status"] == "running"
    store.save_chunk("g", 0, {"values": torch.ones(2)})
    assert torch.equal(store.load_chunk("g", 0)["values"], torch.ones(2)) and store.load_chunk("g", 1) is None
    store.finish(figures=[])
    m = read_manifest(str(tmp_path))
    assert m["status"] == "finished" and m["finished"] and m["config_hash"] == store.config_hash
    assert {"mechpatch", "torch", "transformer-lens"} <= set(m["versions"])

    again = RunStore(str(tmp_path), "sweep", cfg)
    assert again.check() is True  # finished: nothing to do
    other = RunStore(str(tmp_path), "sweep", {**cfg, "seed": 1})
    with pytest.raises(RunConflictError, match="another config.*--force"):
        other.check()
    assert other.check(force=True) is False  # reads only: the old run is discarded when the new one begins
    assert (tmp_path / "chunks").exists() and read_manifest(str(tmp_path))["config_hash"] == store.config_hash
    other.begin(seed=1, force=True)
    assert not (tmp_path / "chunks").exists()
    assert read_manifest(str(tmp_path))["config_hash"] == other.config_hash


def test_not_a_run_directory(tmp_path):
    with pytest.raises(RunError, match="no manifest.json"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(DamagedFileError, match="not a mechpatch run manifest"):
        read_manifest(str(tmp_path))
