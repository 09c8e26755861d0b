"""Determinism: a computation repeated at the same torch thread count is bitwise identical; across thread
counts (1 and 2) results agree up to float rounding.

Intra-op parallelism may split a reduction differently at another thread count, as may another CPU or BLAS,
so the tests across thread counts compare with a tolerance (1e-5 in float32, 1e-10 in float64). On the CPU
these tests were written on, 1 and 2 threads gave bitwise identical results; that is not promised elsewhere.
Every test restores torch's thread count, whatever happens.
"""

import contextlib
import json
import random

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mechpatch.circuit.components import graph_layout
from mechpatch.circuit.edges import edge_patch
from mechpatch.cli import main
from mechpatch.patching import Mean, run_patches, sweep
from mechpatch.prompts import make_pair
from mechpatch.sites import Head, Mlp, Resid
from tests.conftest import native_config, perturb

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
MODELS = ["gpt2", "attn_only", "gqa", "float64"]


@contextlib.contextmanager
def num_threads(n):
    """Run the block with torch's intra-op thread count set to ``n``, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    assert torch.get_num_threads() == before


@pytest.fixture(scope="module")
def float64():
    """The native MLP model of conftest in float64."""
    from mechpatch.model import load_model

    model = load_model(native_config(dtype=torch.float64), device="cpu", dtype="float64", name="tiny-f64")
    perturb(model.bridge, 400)
    return model


def _pair(model, n=16, seq=10, seed=0):
    """Enough prompts that the batched patched runs span several of torch's parallel grains (32768 elements)."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, model.spec.d_vocab, (n, seq), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2:5] = torch.randint(1, model.spec.d_vocab, (n, 3), generator=g)
    answers = torch.randint(1, model.spec.d_vocab, (n, 2), generator=g)
    return make_pair(model, clean, corrupted, answers=answers)


def _sweep(model, pair):
    r = sweep(model, pair, "head", metric="logit_diff", by_position=True, progress=False)
    return {"values": r.values, "clean": r.clean, "corrupted": r.corrupted}


def _run_patches(model, pair):
    sites = [Head(0, 1), Head(1, 2), [Head(0, 0), Head(1, 3)], Resid(1, "pre")]
    if not model.spec.attn_only:
        sites.append(Mlp(0))
    kl = run_patches(model, pair.corrupted, sites, metric="kl_div", source=pair.clean, clean="source", progress=False)
    mean = run_patches(model, pair.clean, sites, metric="loss", intervention=Mean(), progress=False)
    return {"kl": kl.values, "kl_base": kl.base_values, "mean": mean.values, "mean_base": mean.base_values}


def _edge_patch(model, pair):
    rng = random.Random(0)
    edges = graph_layout(model.spec).edges
    sets = [[], [rng.choice(edges)]] + [rng.sample(edges, 6) for _ in range(6)]
    run = edge_patch(model, pair.clean, sets, metric="logit_diff", source=pair.corrupted, answers=pair.answers,
                     progress=False)
    return {"values": run.values, "base": run.base_values}


COMPUTATIONS = {"sweep": _sweep, "run_patches": _run_patches, "edge_patch": _edge_patch}


def _compute(request, model_name, computation, threads):
    model = request.getfixturevalue(model_name)
    pair = _pair(model)
    with num_threads(threads):
        out = COMPUTATIONS[computation](model, pair)
    return model, out


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("computation", list(COMPUTATIONS))
@pytest.mark.parametrize("model_name", MODELS)
def test_repeat_at_the_same_thread_count_is_bitwise(request, model_name, computation, threads):
    _, first = _compute(request, model_name, computation, threads)
    _, again = _compute(request, model_name, computation, threads)
    for key, value in first.items():
        assert torch.equal(value, again[key]), (key, float((value - again[key]).abs().max()))


@pytest.mark.parametrize("computation", list(COMPUTATIONS))
@pytest.mark.parametrize("model_name", MODELS)
def test_one_and_two_threads_agree(request, model_name, computation):
    model, one = _compute(request, model_name, computation, 1)
    _, two = _compute(request, model_name, computation, 2)
    tol = TOL[model.dtype]
    for key, value in one.items():
        assert value.dtype == two[key].dtype and torch.isfinite(value).all()
        torch.testing.assert_close(two[key], value, atol=tol, rtol=tol, msg=lambda m, key=key: f"{key}: {m}")


def test_cli_sweep_threads(tmp_path, monkeypatch):
    """`mechpatch sweep --threads N`: two runs at one count write bitwise identical tensors; 1 and 2 threads
    agree within float32 rounding. The run records the thread count it used."""
    monkeypatch.setenv("TQDM_DISABLE", "1")  # --quiet sets it for the process: restore it afterwards
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "model": "induction-2l", "task": {"name": "induction", "args": {"n": 8, "block": 5}},
        "kinds": ["resid_pre", "head"], "chunk_size": 8, "seed": 0,
    }))

    def run(threads, name):
        out = tmp_path / name
        with num_threads(torch.get_num_threads()):  # the CLI sets torch's thread count and leaves it set
            assert main(["sweep", str(config), "--out-dir", str(out), "--quiet", "--threads", str(threads)]) == 0
        assert json.loads((out / "manifest.json").read_text())["device"]["torch_threads"] == threads
        return {p.stem: load_file(p) for p in sorted((out / "tensors").glob("*.safetensors"))}

    runs = {(n, i): run(n, f"t{n}-{i}") for n in (1, 2) for i in range(2)}
    ref = runs[1, 0]
    assert set(ref) == {"resid_pre", "head"}
    for n in (1, 2):
        for kind, tensors in runs[n, 0].items():
            again = runs[n, 1][kind]
            assert tensors.keys() == again.keys() == ref[kind].keys()
            assert all(torch.equal(tensors[k], again[k]) for k in tensors), (n, kind)
            assert torch.equal(tensors["noop"], ref[kind]["noop"])
            for k in ("values", "clean", "corrupted"):
                torch.testing.assert_close(tensors[k], ref[kind][k], atol=1e-5, rtol=1e-5)
