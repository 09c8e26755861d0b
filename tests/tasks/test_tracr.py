"""tracr tasks: ACDC's data on the compiled models, the output-MSE metric, patching with known effects."""

import pytest
import torch

from mechpatch import zoo
from mechpatch.patching import run_patches
from mechpatch.patching.interventions import Zero
from mechpatch.sites import Head
from mechpatch.tasks import TaskError, make_task


@pytest.fixture(scope="module")
def reverse():
    return zoo.load("tracr-reverse")


@pytest.fixture(scope="module")
def xprop():
    return zoo.load("tracr-xproportion")


def test_reverse_data_is_a_derangement_of_the_permutations(reverse):
    task = make_task("tracr-reverse", reverse, seed=3)
    (b,) = task.batches
    from mechpatch.zoo.tracr import BOS, input_encoding

    assert b.clean.shape == (6, 4) and (b.clean[:, 0] == input_encoding("tracr-reverse")[BOS]).all()
    assert sorted(b.prompts) == ["123", "132", "213", "231", "312", "321"]
    assert all(c != k for c, k in zip(b.prompts, b.corrupted_prompts))
    assert sorted(b.corrupted_prompts) == sorted(b.prompts)


def test_metric_is_zero_on_clean_and_positive_on_corrupted(reverse, xprop):
    for model, name in ((reverse, "tracr-reverse"), (xprop, "tracr-xproportion")):
        task = make_task(name, model)
        scores = task.evaluate(model)
        assert torch.allclose(scores.clean, torch.zeros_like(scores.clean))
        assert (scores.corrupted > 0).float().mean() > 0.5  # an input's outputs differ from most others'
        (b,) = task.batches
        out_c, out_k = model(b.clean), model(b.corrupted)
        manual = ((out_k[:, 1:] - out_c[:, 1:]) ** 2).mean(dim=(1, 2))
        torch.testing.assert_close(scores.corrupted, manual)


def test_zero_ablating_every_head_breaks_reverse(reverse):
    """Reverse needs its attention heads; zero-ablating one changes the output (metric > 0) on some prompt."""
    task = make_task("tracr-reverse", reverse)
    (b,) = task.batches
    run = run_patches(reverse, b.clean, [Head(layer, 0) for layer in range(4)], metric=task.metric, intervention=Zero(),
                      clean="base")
    assert run.values.shape == (4, 6)
    assert (run.values.amax(1) > 1e-3).sum() >= 2


def test_wrong_model_and_sizes(reverse, xprop):
    with pytest.raises(TaskError, match="tracr-xproportion"):
        make_task("tracr-xproportion", reverse)
    with pytest.raises(TaskError, match="at most 256"):
        make_task("tracr-xproportion", xprop, n=300)


def test_fast_path_handles_bidirectional_attention(reverse):
    """tracr models attend both ways: a patch at a late position changes earlier ones too. The fast path
    (which otherwise resumes at the first patched position) must equal the plain-hook reference."""
    from mechpatch.patching import fast
    from mechpatch.patching.paths import path_patch, path_patch_reference
    from mechpatch.sites import Mlp, Query, Resid

    assert fast.resolve(reverse)[0] is None
    task = make_task("tracr-reverse", reverse)
    (b,) = task.batches
    variants = [[Head(1, 0, pos=3)], [Resid(2, "pre", pos=[2, 3])], [Mlp(0, pos=3)], [Head(3, 0, pos=1)]]
    ref = run_patches(reverse, b.clean, variants, metric=task.metric, source=b.corrupted, clean="base",
                      method="reference")
    got = run_patches(reverse, b.clean, variants, metric=task.metric, source=b.corrupted, clean="base", method="fast")
    torch.testing.assert_close(got.values, ref.values, atol=1e-5, rtol=1e-5)
    assert (ref.values.amax(1) > 1e-3).any()
    senders = [Head(0, 0), Mlp(0), Head(1, 0), Mlp(1)]
    recs = [Query(2, 0, pos=3)]
    pp = path_patch(reverse, b.clean, senders, receivers=recs, metric=task.metric, source=b.corrupted, method="fast")
    pref = path_patch_reference(reverse, b.clean, senders, receivers=recs, metric=task.metric, source=b.corrupted)
    torch.testing.assert_close(pp.values, pref, atol=1e-5, rtol=1e-5)
