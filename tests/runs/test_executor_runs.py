"""Interaction runs and discovery on Ray actors against the local executor, on a real local Ray runtime.

An interactions run hands each chunk of masks (with the engine's arguments) to workers that hold only the model; an
EAP or EAP-IG discovery hands each chunk of prompts to workers that prepared the attribution from the config; ACDC
hands each forward's units of candidate rows to workers that prepared its clean and corrupted runs. All must end
bitwise equal to the local executor's run (one thread everywhere, see ``test_executor``), and a discovery through a
driver killed mid-run and resumed on the other executor.
"""

import json
import os
import signal

import pandas as pd
import pytest
import torch

from mechpatch.config import ConfigError, from_dict
from mechpatch.runs.discover import DiscoverConfig, prompt_ranges, run_discover, run_discoveries
from mechpatch.runs.store import RunError
from mechpatch.runs.interactions import InteractionsConfig, run_interactions
from mechpatch.runs.store import read_tensors

from .test_executor import RAY, _cli, _manifest, _n_chunks, _wait_for, assert_same_run, one_thread  # noqa: F401

INTERACTIONS = {"model": "induction-2l", "task": "induction", "task_args": {"n": 6, "block": 6},
                "components": "heads", "n_masks": 120, "chunk_size": 25, "seed": 0}
DISCOVER = {"model": "induction-2l", "task": "induction", "task_args": {"n": 12, "block": 6}, "method": "eap",
            "chunk_size": 2, "tau": 0.01, "seed": 0}


def _interactions(out, **changes):
    return run_interactions(from_dict(InteractionsConfig, {**INTERACTIONS, "out_dir": str(out), **changes}),
                            quiet=True)


def _discover(out, **changes):
    return run_discover(from_dict(DiscoverConfig, {**DISCOVER, "out_dir": str(out), **changes}), quiet=True)


def _same_discovery(a, b) -> None:
    """Two discovery runs hold bitwise-identical chunks of prompts, edge tables and circuits."""
    chunks = sorted(os.listdir(os.path.join(a, "chunks", "eap")))
    assert chunks == sorted(os.listdir(os.path.join(b, "chunks", "eap"))) and len(chunks) > 1
    for name in chunks:
        ta, tb = (read_tensors(os.path.join(d, "chunks", "eap", name))[0] for d in (a, b))
        assert ta.keys() == tb.keys() == {"scores", "passes", "prompts"}
        assert all(torch.equal(ta[k], tb[k]) for k in ta), name
    ea, eb = (pd.read_parquet(os.path.join(d, "results", "edges.parquet")) for d in (a, b))
    assert ea.equals(eb)
    sa, sb = (json.load(open(os.path.join(d, "summary.json"))) for d in (a, b))
    assert sa["circuit"] == sb["circuit"] and sa["CPR"] == sb["CPR"] and sa["faithfulness"] == sb["faithfulness"]


# ----------------------------------------------------------------------------- checked before any work


def test_an_executor_needs_a_chunk_size_and_chunk_sizes_are_checked(tmp_path):
    for method in ("acdc", "eap"):
        with pytest.raises(ConfigError, match="executor: ray shares out units of chunk_size.*set chunk_size"):
            from_dict(DiscoverConfig, {**DISCOVER, "method": method, "chunk_size": None, "executor": RAY})
    with pytest.raises(ConfigError, match="chunk_size must be a positive integer"):
        from_dict(DiscoverConfig, {**DISCOVER, "chunk_size": 0})
    with pytest.raises(ConfigError, match="unknown executor 'spark'"):
        from_dict(InteractionsConfig, {**INTERACTIONS, "executor": {"spark": {}}})
    assert prompt_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]


# ----------------------------------------------------------------------------- real Ray runtimes


@pytest.mark.slow
def test_interactions_on_ray_equal_local_bitwise(tmp_path):
    _interactions(tmp_path / "local")
    _interactions(tmp_path / "ray", executor=RAY)
    assert_same_run(tmp_path / "local", tmp_path / "ray")
    a, b = (json.load(open(tmp_path / d / "interactions.json")) for d in ("local", "ray"))
    for fit in (*a.values(), *b.values()):
        fit.pop("seconds")  # wall time
    assert a == b and a["exhaustive"] is not None
    attempt = _manifest(tmp_path / "ray")["attempts"][-1]
    assert attempt["executor"]["kind"] == "ray" and len({w["pid"] for w in attempt["workers"]}) == 2
    assert _manifest(tmp_path / "local")["attempts"][-1]["executor"]["kind"] == "local"


@pytest.mark.slow
def test_spex_interactions_on_ray_equal_local_bitwise(tmp_path):
    """SPEX picks its masks call by call: each call's chunks travel to the workers with their masks."""
    pytest.importorskip("shapiq", reason="the spex extra (CI installs it)")
    changes = {"backend": "spex", "n_masks": 600, "chunk_size": 100, "exhaustive": False}
    _interactions(tmp_path / "local", **changes)
    _interactions(tmp_path / "ray", executor=RAY, **changes)
    assert_same_run(tmp_path / "local", tmp_path / "ray")
    assert len([g for g in os.listdir(tmp_path / "ray" / "chunks") if g.startswith("sparse-")]) > 1


@pytest.mark.slow
@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_eap_discovery_on_ray_equals_local_bitwise(tmp_path, method):
    local = _discover(tmp_path / "local", method=method)
    ray = _discover(tmp_path / "ray", method=method, executor=RAY)
    _same_discovery(tmp_path / "local", tmp_path / "ray")
    assert local["edges_kept"] > 0 and ray["forwards"] == local["forwards"]
    manifest = _manifest(tmp_path / "ray")
    assert manifest["chunks_computed_last_attempt"] == 6 and len(manifest["attempts"][-1]["workers"]) == 2


@pytest.mark.slow
def test_acdc_on_ray_equals_local_bitwise(tmp_path):
    """Each forward's candidate rows in units of 4, computed by two workers: the same search, decision by decision."""
    changes = {"method": "acdc", "chunk_size": 4, "tau": 0.02, "task_args": {"n": 8, "block": 6}}
    local = _discover(tmp_path / "local", **changes)
    ray = _discover(tmp_path / "ray", executor=RAY, **changes)
    sa, sb = (read_tensors(str(tmp_path / d / "chunks" / "acdc" / "00000.safetensors"))[0] for d in ("local", "ray"))
    assert sa.keys() == sb.keys()  # the search's final state, bit for bit (NaN: edges never evaluated)
    assert all(sa[k].numpy().tobytes() == sb[k].numpy().tobytes() for k in sa if k != "seconds")
    ea, eb = (pd.read_parquet(tmp_path / d / "results" / "edges.parquet") for d in ("local", "ray"))
    assert ea.equals(eb) and local["circuit"] == ray["circuit"] and local["forwards"] == ray["forwards"]
    assert 0 < local["edges_kept"] < local["edges_total"]
    assert len(_manifest(tmp_path / "ray")["attempts"][-1]["workers"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [("local", RAY), (RAY, "local")])
def test_a_discovery_killed_mid_run_resumes_on_the_other_executor_identical(tmp_path, first, then):
    changes = {"method": "eap-ig", "chunk_size": 1, "task_args": {"n": 24, "block": 6}}
    proc = _cli({**DISCOVER, **changes, "out_dir": str(tmp_path / "run"), "executor": first}, tmp_path / "c.yaml",
                command="discover")
    _wait_for(lambda: _n_chunks(tmp_path / "run") >= 2, proc, "two chunks")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _n_chunks(tmp_path / "run")
    assert done < 24 and _manifest(tmp_path / "run")["status"] == "running"
    _discover(tmp_path / "run", executor=then, **changes)
    manifest = _manifest(tmp_path / "run")
    assert manifest["chunks_loaded_last_attempt"] >= done and manifest["chunks_computed_last_attempt"] <= 24 - done
    _discover(tmp_path / "ref", **changes)
    _same_discovery(tmp_path / "ref", tmp_path / "run")


# ----------------------------------------------------------------------------- batches of searches


def _batch_cfgs(root, prefix):
    """Three ACDC thresholds, another seed and an EAP run of one model: five independent searches."""
    acdc = {**DISCOVER, "method": "acdc", "chunk_size": None, "task_args": {"n": 8, "block": 6}}
    out = [from_dict(DiscoverConfig, {**acdc, "tau": tau, "out_dir": str(root / f"{prefix}-{tau}")})
           for tau in (0.01, 0.03, 0.1)]
    out.append(from_dict(DiscoverConfig, {**acdc, "tau": 0.03, "seed": 1, "out_dir": str(root / f"{prefix}-seed1")}))
    out.append(from_dict(DiscoverConfig, {**DISCOVER, "chunk_size": 4, "out_dir": str(root / f"{prefix}-eap")}))
    return out


def test_a_batch_is_checked_before_any_work(tmp_path):
    cfgs = _batch_cfgs(tmp_path, "run")
    other_model = from_dict(DiscoverConfig, {**DISCOVER, "model": "tracr-reverse", "task": "tracr-reverse",
                                             "task_args": {}, "out_dir": str(tmp_path / "x")})
    with pytest.raises(RunError, match="one model: the configs name models induction-2l, tracr-reverse"):
        run_discoveries([cfgs[0], other_model])
    with pytest.raises(RunError, match="the same run directory"):
        run_discoveries([cfgs[0], cfgs[0]])
    with pytest.raises(RunError, match="sets an executor of its own"):
        run_discoveries([cfgs[4], from_dict(DiscoverConfig, {**DISCOVER, "executor": RAY,
                                                             "out_dir": str(tmp_path / "y")})])
    with pytest.raises(ConfigError, match="ACDC"):  # an invalid config is refused as it is read
        from_dict(DiscoverConfig, {**DISCOVER, "method": "acdc", "per_position": True})
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", RAY])
def test_a_batch_of_searches_equals_each_run_alone(tmp_path, executor):
    """Thresholds and seeds of ACDC, and an EAP run, each search one unit: every run directory ends as
    run_discover alone would write it (the ACDC state handed over from the worker, bit for bit)."""
    batch = run_discoveries(_batch_cfgs(tmp_path, "batch"), executor=executor, quiet=True)
    alone = [run_discover(c, quiet=True) for c in _batch_cfgs(tmp_path, "alone")]
    for a, b, ca, cb in zip(batch, alone, _batch_cfgs(tmp_path, "batch"), _batch_cfgs(tmp_path, "alone")):
        assert a["circuit"] == b["circuit"] and a["forwards"] == b["forwards"] and a["CPR"] == b["CPR"]
        ea, eb = (pd.read_parquet(os.path.join(c.out_dir, "results", "edges.parquet")) for c in (ca, cb))
        assert ea.equals(eb), ca.out_dir
        assert _manifest(ca.out_dir)["attempts"][-1]["search_computed_by"]["kind"] == \
            ("local" if executor == "local" else "ray")
    kept = [a["edges_kept"] for a in batch[:3]]
    assert kept[0] >= kept[1] >= kept[2] and kept[0] > kept[2]  # a higher threshold removes more
    again = run_discoveries(_batch_cfgs(tmp_path, "batch"), executor=executor, quiet=True)  # finished: read back
    assert [a["circuit"] for a in again] == [a["circuit"] for a in batch]


def test_a_batch_on_the_command_line(tmp_path, capsys):
    import yaml

    from mechpatch.cli import main

    paths = []
    for tau in (0.01, 0.1):
        paths.append(str(tmp_path / f"{tau}.yaml"))
        with open(paths[-1], "w") as f:
            yaml.safe_dump({**DISCOVER, "method": "acdc", "chunk_size": None, "tau": tau,
                            "out_dir": str(tmp_path / f"run-{tau}")}, f)
    assert main(["discover", *paths, "--executor", "ray", "--workers", "2", "--dry-run"]) == 0
    assert capsys.readouterr().out.count("tau 0.") == 2
    assert main(["discover", *paths, "--out-dir", str(tmp_path / "x"), "--dry-run"]) == 2
    assert "a batch writes each config's own out_dir" in capsys.readouterr().err
    assert main(["discover", *paths, "-q", "--threads", "1"]) == 0
    assert all(_manifest(tmp_path / f"run-{tau}")["status"] == "finished" for tau in (0.01, 0.1))


# ----------------------------------------------------------------------------- sweeps by chunks of prompts


def test_prompt_chunks_are_refused_where_an_intervention_draws_on_all_prompts(tmp_path):
    from .test_executor import _cfg

    with pytest.raises(ConfigError, match="intervention 'mean' draws on all of a batch's prompts"):
        _cfg(tmp_path, prompt_chunk=2, intervention="mean", direction="noise")
    with pytest.raises(ConfigError, match="prompt_chunk must be a positive integer"):
        _cfg(tmp_path, prompt_chunk=0)


@pytest.mark.slow
def test_a_sweep_by_chunks_of_prompts_on_ray_equals_local_and_the_whole_sweep(tmp_path):
    """Chunks of 4 of the 6 prompts: 2 units per chunk of cells, joined in prompt order by the driver."""
    from mechpatch.runs.sweep import load_sweep, run_sweep

    from .test_executor import _cfg

    local = run_sweep(_cfg(tmp_path / "local", prompt_chunk=4), quiet=True)
    run_sweep(_cfg(tmp_path / "ray", prompt_chunk=4, executor=RAY), quiet=True)
    assert_same_run(tmp_path / "local", tmp_path / "ray")
    assert len(os.listdir(tmp_path / "local" / "chunks" / "head")) == 2 * 3  # 8 heads in chunks of 3, x 2
    whole = run_sweep(_cfg(tmp_path / "whole"), quiet=True)
    for kind in ("resid_pre", "head"):
        a, b = local.results[kind], whole.results[kind]
        assert a.values.shape == b.values.shape and a.axes == b.axes and torch.equal(a.noop, b.noop)
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.clean, b.clean, atol=1e-5, rtol=1e-5)
    assert load_sweep(str(tmp_path / "ray")).manifest["config"]["prompt_chunk"] == 4
