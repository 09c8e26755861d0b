"""The engine's fast paths against the slow reference (one patch per forward, plain bridge hooks)."""

import random
from collections.abc import Callable

import pytest
import torch

from mechpatch.errors import (
    EmptyInputError,
    InvalidArgumentError,
    ShapeMismatchError,
    SiteOutOfRangeError,
    UnknownSiteKindError,
)
from mechpatch.patching import (
    SWEEP_KINDS,
    Custom,
    Interpolate,
    LogitDiff,
    Mean,
    MetricError,
    Replace,
    Resample,
    Zero,
    make_grid,
    run_patches,
    sweep,
)
from mechpatch.patching.fast import FastPathUnavailable
from mechpatch.prompts import make_pair, random_pair
from mechpatch.sites import Attn, Embed, Head, HeadResult, Key, Mlp, Neuron, Pattern, PosEmbed, Query, Resid, Value

TOL = dict(atol=1e-5, rtol=1e-5)


def make_test_pair(model, n=3, seq=7, seed=0, corrupt=(2, 4)):
    return random_pair(model, n, seq, seed=seed, corrupt=corrupt)


def kinds_for(model):
    out = []
    for kind in SWEEP_KINDS:
        if kind in ("z", "query", "key", "value", "neuron"):
            continue  # aliases; neurons are covered by random site sets
        if model.spec.attn_only and kind in ("resid_mid", "mlp_out"):
            continue
        if kind == "head_result" and model.spec.architecture == "TransformerLensNative":
            continue  # the native bridge cannot enable use_attn_result (tested in test_model)
        out.append(kind)
    return out


@pytest.mark.parametrize("method", ["fast", "hooks"])
def test_every_sweep_kind_equals_the_reference(any_model, method):
    pair = make_test_pair(any_model)
    for kind in kinds_for(any_model):
        for by_position in (False, True):
            ref = sweep(any_model, pair, kind, metric="logit_diff", by_position=by_position, method="reference",
                        progress=False)
            got = sweep(any_model, pair, kind, metric="logit_diff", by_position=by_position, method=method,
                        batch_size=5)
            torch.testing.assert_close(got.values, ref.values, **TOL, msg=f"{kind} by_position={by_position}")
            assert torch.equal(got.noop, ref.noop)


def _random_site(model, rng, seq_len):
    s = model.spec
    layer = rng.randrange(s.n_layers)
    pos = rng.choice([None, rng.randrange(seq_len), sorted(rng.sample(range(seq_len), 2))])
    options = [
        lambda: Resid(layer, rng.choice(["pre", "post"] + ([] if s.attn_only else ["mid"])), pos=pos),
        lambda: Attn(layer, pos=pos),
        lambda: Head(layer, rng.randrange(s.n_heads), pos=pos),
        lambda: Query(layer, rng.randrange(s.n_heads), pos=pos),
        lambda: Key(layer, rng.randrange(s.n_kv_heads), pos=pos),
        lambda: Value(layer, rng.randrange(s.n_kv_heads), pos=pos),
        lambda: Pattern(layer, rng.randrange(s.n_heads), pos=pos),
        lambda: Embed(pos=pos),
    ]
    if s.has_mlp:
        options += [lambda: Mlp(layer, pos=pos), lambda: Neuron(layer, rng.randrange(s.d_mlp), pos=pos)]
    if s.has_pos_embed:
        options.append(lambda: PosEmbed(pos=pos))
    if s.architecture != "TransformerLensNative":
        options.append(lambda: HeadResult(layer, rng.randrange(s.n_heads), pos=pos))
    return rng.choice(options)()


@pytest.mark.parametrize("intervention", [Replace(), Zero(), Interpolate(0.3), Resample(seed=2), Mean()],
                         ids=["replace", "zero", "interpolate", "resample", "mean"])
def test_random_site_sets_per_row_equal_the_reference(any_model, intervention):
    """Each row patches its own random set of 1-4 sites of mixed kinds, layers and positions."""
    pair = make_test_pair(any_model, seed=5)
    rng = random.Random(hash(any_model.name) % 1000)
    variants = []
    for _ in range(24):
        sites = {_random_site(any_model, rng, pair.seq_len) for _ in range(rng.randint(1, 4))}
        variants.append(sorted(sites, key=str))
    metric = LogitDiff(answers=pair.answers)
    ref = run_patches(any_model, pair.corrupted, variants, metric=metric, source=pair.clean, intervention=intervention,
                      method="reference", progress=False)
    for method in ("fast", "hooks"):
        got = run_patches(any_model, pair.corrupted, variants, metric=metric, source=pair.clean,
                          intervention=intervention, method=method, batch_size=7)
        torch.testing.assert_close(got.values, ref.values, **TOL, msg=method)
        assert torch.equal(got.noop, ref.noop)


def test_batched_equals_one_at_a_time(gqa):
    pair = make_test_pair(gqa, n=4)
    one = sweep(gqa, pair, "head", metric="logit_diff", by_position=True, batch_size=1)
    many = sweep(gqa, pair, "head", metric="logit_diff", by_position=True, batch_size=1000)
    torch.testing.assert_close(one.values, many.values, **TOL)
    executed = int((~one.noop).sum())  # no-op cells need no forward pass (their value is the base run's)
    assert 0 < executed < 2 * 4 * 7
    assert one.meta["forwards"] == executed and many.meta["forwards"] == 1


def test_noops_are_reported(gpt2):
    """Where clean and corrupted activations are equal, a patch cannot change anything: reported as no-op.

    Only token 3 is corrupted. Before layer 0 the residual stream differs at position 3 alone; after
    attention has mixed positions, it differs at every position from 3 on.
    """
    pair = make_test_pair(gpt2, corrupt=(3,))
    res = sweep(gpt2, pair, "resid_pre", metric="logit_diff")
    expected = torch.tensor([[1, 1, 1, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(res.noop, expected)
    torch.testing.assert_close(res.values[expected], res.corrupted.expand(int(expected.sum()), -1), **TOL)
    assert "no-op cells=9" in repr(res)
    df = res.to_dataframe()
    assert df["noop"].sum() == 9 * pair.n_prompts
    interp0 = run_patches(gpt2, pair.corrupted, [Head(1, 0)], metric=LogitDiff(answers=pair.answers), source=pair.clean,
                          intervention=Interpolate(0.0))
    assert interp0.noop.all()


def test_denoising_everything_restores_clean_and_noising_restores_corrupted(any_model):
    pair = make_test_pair(any_model)
    res = sweep(any_model, pair, [Resid(0, "pre")], metric="logit_diff")
    torch.testing.assert_close(res.values[0], res.clean, **TOL)
    torch.testing.assert_close(res.normalized(), torch.ones(1), **TOL)
    last = any_model.spec.n_layers - 1
    res = sweep(any_model, pair, [Resid(last, "post")], metric="logit_diff", direction="noise")
    torch.testing.assert_close(res.values[0], res.corrupted, **TOL)
    torch.testing.assert_close(res.normalized(), torch.zeros(1), **TOL)


def test_interventions_have_the_values_they_promise(gpt2):
    pair = make_test_pair(gpt2, n=4)
    site = [Head(1, 2)]
    metric = LogitDiff(answers=pair.answers)
    kw = dict(source=pair.clean, method="reference")
    replace = run_patches(gpt2, pair.corrupted, [site], metric=metric, intervention=Replace(), **kw)
    torch.testing.assert_close(
        run_patches(gpt2, pair.corrupted, [site], metric=metric, intervention=Interpolate(1.0), **kw).values,
        replace.values)

    def zero_hook(act, hook):
        act = act.clone()
        act[:, :, 2] = 0
        return act

    logits = gpt2.bridge.run_with_hooks(pair.corrupted, fwd_hooks=[("blocks.1.attn.hook_z", zero_hook)])
    expected = (logits[:, -1].gather(1, pair.answers[:, :1]) - logits[:, -1].gather(1, pair.answers[:, 1:]))[:, 0]
    got = run_patches(gpt2, pair.corrupted, [site], metric=metric, intervention=Zero(), method="fast")
    torch.testing.assert_close(got.values[0], expected, **TOL)
    # mean over a reference set equals replacing with that mean by hand
    ref_tokens = torch.randint(1, 100, (5, pair.seq_len), generator=torch.Generator().manual_seed(3))
    _, ref_cache = gpt2.bridge.run_with_cache(ref_tokens)
    mean_z = ref_cache["blocks.1.attn.hook_z"][:, :, 2].mean(0)

    def mean_hook(act, hook):
        act = act.clone()
        act[:, :, 2] = mean_z
        return act

    logits = gpt2.bridge.run_with_hooks(pair.corrupted, fwd_hooks=[("blocks.1.attn.hook_z", mean_hook)])
    expected = (logits[:, -1].gather(1, pair.answers[:, :1]) - logits[:, -1].gather(1, pair.answers[:, 1:]))[:, 0]
    got = run_patches(gpt2, pair.corrupted, [site], metric=metric, intervention=Mean(reference=ref_tokens),
                      method="fast")
    torch.testing.assert_close(got.values[0], expected, **TOL)
    donors = Resample(seed=0).donors(4, 4, same_pool=True)
    assert not torch.equal(donors, torch.arange(4)) and (donors != torch.arange(4)).all()


def test_metrics(gpt2):
    pair = make_test_pair(gpt2)
    res = sweep(gpt2, pair, [Head(0, 0)], metric="kl_div")
    torch.testing.assert_close(res.clean, torch.zeros(3), atol=1e-6, rtol=0)
    assert (res.corrupted > 0).all()
    loss = sweep(gpt2, pair, [Head(0, 0)], metric="loss")
    assert loss.values.shape == (1, 3) and (loss.values > 0).all()
    probs = sweep(gpt2, pair, [Head(0, 0)], metric="prob_diff")
    assert (probs.clean.abs() <= 1).all()
    custom = sweep(gpt2, pair, [Head(0, 0)], metric=lambda logits, prompt: logits[:, -1, 5])
    _, clean_logits = None, gpt2.bridge(pair.clean)
    torch.testing.assert_close(custom.clean, clean_logits[:, -1, 5], **TOL)


def test_bad_metrics_are_typed_errors(gpt2):
    pair = make_test_pair(gpt2)
    with pytest.raises(MetricError, match=r"one value per row, shape \(3,\); got \(\)"):
        sweep(gpt2, pair, [Head(0, 0)], metric=lambda logits, prompt: logits.sum())
    with pytest.raises(MetricError, match="NaN"):
        sweep(gpt2, pair, [Head(0, 0)], metric=lambda logits, prompt: logits[:, -1, 0] * float("nan"))
    with pytest.raises(MetricError, match="valid: 'logit_diff'"):
        sweep(gpt2, pair, [Head(0, 0)], metric="accuracy")
    no_answers = make_pair(gpt2, pair.clean, pair.corrupted)
    with pytest.raises(MetricError, match="needs answer tokens"):
        sweep(gpt2, no_answers, [Head(0, 0)], metric="logit_diff")
    assert Custom().name == "custom"


def test_bad_input_is_a_typed_error(gpt2, attn_only):
    pair = make_test_pair(gpt2)
    with pytest.raises(SiteOutOfRangeError, match="layer 5"):
        sweep(gpt2, pair, [Head(5, 0)], metric="logit_diff")
    with pytest.raises(SiteOutOfRangeError, match="position 9 is outside the prompt of 7 tokens"):
        sweep(gpt2, pair, [Head(0, 0, pos=9)], metric="logit_diff")
    with pytest.raises(ShapeMismatchError, match="differ in shape"):  # (tensors: jaxtyping catches it first)
        run_patches(gpt2, ["Mary and John went"], [Head(0, 0)], metric="logit_diff", source=["Mary and John"])
    with pytest.raises(ShapeMismatchError, match="needs source tokens"):
        run_patches(gpt2, pair.corrupted, [Head(0, 0)], metric=LogitDiff(answers=pair.answers))
    with pytest.raises(EmptyInputError):
        sweep(gpt2, pair, [], metric="logit_diff")
    with pytest.raises(EmptyInputError):
        run_patches(gpt2, pair.corrupted, [[]], metric="logit_diff", source=pair.clean)
    with pytest.raises(UnknownSiteKindError, match="valid: 'resid_pre'"):
        sweep(gpt2, pair, "heads", metric="logit_diff")
    with pytest.raises(InvalidArgumentError, match="valid: 'denoise', 'noise'"):
        sweep(gpt2, pair, "head", metric="logit_diff", direction="denoising")
    with pytest.raises(InvalidArgumentError, match="valid: 'auto', 'fast'"):
        sweep(gpt2, pair, "head", metric="logit_diff", method="quick")
    # ours (InvalidArgumentError), or the runtime type checker's (a TypeError) under the test hook
    with pytest.raises((InvalidArgumentError, TypeError), match="intervention"):
        run_patches(gpt2, pair.corrupted, [Head(0, 0)], metric="logit_diff", source=pair.clean, intervention=Zero)
    from mechpatch.errors import UnsupportedSiteError

    with pytest.raises(UnsupportedSiteError):
        sweep(attn_only, make_test_pair(attn_only), "mlp_out", metric="logit_diff")


def break_the_fast_path(monkeypatch) -> Callable[[], None]:
    """Make the functional forward stop reproducing the bridge (a wrong attention scale), so that the fast path's check
    refuses every model; returns the function that puts it right again."""
    from mechpatch.patching import fast
    from mechpatch.patching import functional as F_

    extract = F_.extract

    def wrong_scale(bridge):
        fm = extract(bridge)
        fm.attn_scale *= 1.5
        return fm

    def restore() -> None:
        monkeypatch.setattr(F_, "extract", extract)
        fast._cache.clear()

    monkeypatch.setattr(F_, "extract", wrong_scale)
    fast._cache.clear()
    return restore


def test_fast_path_refuses_what_it_cannot_hold_exactly(gpt2, monkeypatch):
    from mechpatch.patching import fast

    pair = make_test_pair(gpt2)
    restore = break_the_fast_path(monkeypatch)
    with pytest.raises(FastPathUnavailable, match="differs from the bridge"):
        sweep(gpt2, pair, [Head(0, 0)], metric="logit_diff", method="fast")
    res = sweep(gpt2, pair, [Head(0, 0)], metric="logit_diff")  # auto falls back to the bridge-hooks path
    assert res.meta["method"] == "hooks" and "differs from the bridge" in res.meta["fallback_reason"]
    restore()
    monkeypatch.setattr(fast, "VERIFIED_ARCHITECTURES", ("LlamaForCausalLM",))
    fast._cache.clear()
    with pytest.raises(FastPathUnavailable, match="GPT2LMHeadModel is not verified"):
        sweep(gpt2, pair, [Head(0, 0)], metric="logit_diff", method="fast")
    fast._cache.clear()


def test_cuda_out_of_memory_halves_the_chunk_and_loses_nothing(gqa, monkeypatch):
    from mechpatch.patching import fast

    pair = make_test_pair(gqa)
    expected = sweep(gqa, pair, "head", metric="logit_diff", by_position=True)
    real = fast.run_chunk
    sizes = []

    def flaky(*args):
        ids = args[-1]
        sizes.append(len(ids))
        if len(ids) > 5:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(*args)

    monkeypatch.setattr(fast, "run_chunk", flaky)
    got = sweep(gqa, pair, "head", metric="logit_diff", by_position=True, batch_size=56)
    torch.testing.assert_close(got.values, expected.values, **TOL)
    executed = int((~expected.noop).sum())  # no-op cells are not run
    assert sizes[0] == executed > 5 and sum(s for s in sizes if s <= 5) == executed
    assert got.meta["oom_halvings"] == sum(1 for s in sizes if s > 5)  # every failed chunk was halved once
    assert got.meta["smallest_chunk"] == min(sizes) and "oom_halvings" not in expected.meta


def test_result_labels_and_dataframe(gpt2):
    pair = make_test_pair(gpt2)
    res = sweep(gpt2, pair, "head", metric="logit_diff", by_position=True)
    assert res.axes == ("layer", "head", "pos") and res.grid_shape == (2, 4, 7)
    assert res.labels[0] == ("L0", "L1") and res.labels[1][3] == "H3"
    assert res.labels[2][0].startswith("0:")  # position labels carry the token
    df = res.to_dataframe()
    assert len(df) == 2 * 4 * 7 * 3
    assert set(df.columns) >= {"layer", "head", "pos", "sites", "noop", "prompt", "value"}
    row = df[(df["layer"] == "L1") & (df["head"] == "H2") & (df["pos_index"] == 4) & (df["prompt"] == 1)]
    assert float(row.value.iloc[0]) == pytest.approx(float(res.values[1, 2, 4, 1]))
    assert res.sem().shape == (2, 4, 7)
    grid = make_grid(gpt2, "k", 7, by_position=False)
    assert grid.axes == ("layer", "kv_head")


def test_a_memory_budget_that_cannot_hold_one_patch_is_refused_before_any_work(gqa, monkeypatch):
    from mechpatch.errors import MemoryBudgetError
    from mechpatch.patching import engine

    pair = make_test_pair(gqa)
    calls = []
    monkeypatch.setattr(engine, "_prepare_runs", lambda *a, **k: calls.append(a))
    for method in ("fast", "hooks"):
        with pytest.raises(MemoryBudgetError, match="cannot hold one patch"):
            sweep(gqa, pair, "head", metric="logit_diff", method=method, memory_budget=1024)
    assert calls == []  # refused before the base run
    monkeypatch.undo()
    heads = [(Head(layer, h),) for layer in range(gqa.spec.n_layers) for h in range(gqa.spec.n_heads)]
    one = engine._held_bytes(gqa, engine.compile_plan(gqa, heads, 7), 3, 7, "fast") + engine._row_bytes(gqa, 7, 1) * 3
    res = sweep(gqa, pair, "head", metric="logit_diff", method="fast", memory_budget=one)
    assert res.meta["forwards"] == int((~res.noop).sum())  # room for exactly one variant per forward
