"""Path patching: the batched delta method equals literal freeze-everything-else patching."""

import pytest
import torch
from jaxtyping import TypeCheckError

from mechpatch.errors import (
    EmptyInputError,
    InvalidArgumentError,
    ShapeMismatchError,
    SiteOutOfRangeError,
    UnsupportedSiteError,
)
from mechpatch.patching import run_patches
from mechpatch.patching.metrics import KLDivergence, LogitDiff
from mechpatch.patching.paths import path_patch, path_patch_reference
from mechpatch.sites import Head, Key, Mlp, Query, Value, heads


def _pair(seed=3, n=3, seq=7):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(1, 100, (n, seq), generator=g)
    src = base.clone()
    src[:, 1:4] = torch.randint(1, 100, (n, 3), generator=g)
    answers = torch.randint(1, 100, (n, 2), generator=g)
    return base, src, answers


def _senders(model):
    out = [h for h in heads(model.spec)]
    if not model.spec.attn_only:
        out += [Mlp(0), (Head(0, 1), Mlp(0))]
    out.append((Head(0, 0), Head(0, 3)))
    return out


@pytest.mark.parametrize("method", ["fast", "hooks"])
def test_logits_receiver_equals_reference(any_model, method):
    base, src, answers = _pair()
    senders = _senders(any_model)
    metric = LogitDiff(answers=answers)
    run = path_patch(any_model, base, senders, receivers="logits", metric=metric, source=src, batch_size=3,
                     method=method)
    ref = path_patch_reference(any_model, base, senders, receivers="logits", metric=metric, source=src)
    torch.testing.assert_close(run.values, ref, atol=1e-5, rtol=1e-5)
    assert (run.effect.abs().amax(1) > 1e-4).all(), "every sender should change the logits in a perturbed model"


@pytest.mark.parametrize("method", ["fast", "hooks"])
@pytest.mark.parametrize("receiver", ["query", "key", "value", "mixed"])
def test_qkv_receivers_equal_reference(any_model, receiver, method):
    base, src, answers = _pair(seed=5)
    recs = {
        "query": [Query(1, 2, pos=-1), Query(1, 0, pos=-1)],
        "key": [Key(1, 1)],
        "value": [Value(1, 0, pos=[2, 3, 6])],
        "mixed": [Query(1, 1), Key(1, 0, pos=[1, 2]), Value(1, 1)],
    }[receiver]
    senders = _senders(any_model) + [Head(1, 0)]  # a layer-1 sender reaches no layer-1 receiver
    run = path_patch(any_model, base, senders, receivers=recs, metric=KLDivergence(), source=src, batch_size=4,
                     method=method)
    ref = path_patch_reference(any_model, base, senders, receivers=recs, metric=KLDivergence(), source=src)
    torch.testing.assert_close(run.values, ref, atol=1e-5, rtol=1e-5)
    assert run.noop[-1] and not run.noop[0]
    assert torch.equal(run.values[-1], run.base_values)
    assert (run.effect[:-1].abs().amax(1) > 0).any()


def test_last_layer_heads_direct_effect_equals_engine(attn_only):
    """In an attention-only model a last-layer head reaches the logits only directly, so its path-patching
    effect equals plain activation patching (run by the engine: a different mechanism)."""
    gpt2 = attn_only
    base, src, answers = _pair(seed=9)
    metric = LogitDiff(answers=answers)
    senders = [Head(1, h) for h in range(gpt2.spec.n_heads)]
    run = path_patch(gpt2, base, senders, receivers="logits", metric=metric, source=src)
    plain = run_patches(gpt2, base, senders, metric=metric, source=src, method="reference")
    torch.testing.assert_close(run.values, plain.values, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["fast", "hooks"])
def test_batching_does_not_change_values(llama, method):
    base, src, answers = _pair(seed=11)
    metric = LogitDiff(answers=answers)
    senders = _senders(llama)
    a = path_patch(llama, base, senders, receivers=[Query(1, 3, pos=-1)], metric=metric, source=src, batch_size=1,
                   method=method)
    b = path_patch(llama, base, senders, receivers=[Query(1, 3, pos=-1)], metric=metric, source=src, batch_size=64,
                   method=method)
    torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-5)


def test_bad_inputs(gpt2):
    base, src, answers = _pair()
    metric = LogitDiff(answers=answers)
    with pytest.raises(UnsupportedSiteError, match="senders"):
        path_patch(gpt2, base, [Head(0, 1, pos=2)], receivers="logits", metric=metric, source=src)
    with pytest.raises(UnsupportedSiteError, match="receivers"):
        path_patch(gpt2, base, [Head(0, 1)], receivers="resid", metric=metric, source=src)
    with pytest.raises(UnsupportedSiteError, match="Query/Key/Value"):
        path_patch(gpt2, base, [Head(0, 1)], receivers=[Mlp(1)], metric=metric, source=src)
    # shape checking at the boundary (jaxtyping under the tests, our own error without it)
    with pytest.raises((ShapeMismatchError, TypeCheckError)):
        path_patch(gpt2, base, [Head(0, 1)], receivers="logits", metric=metric, source=src[:, :5])
    with pytest.raises(EmptyInputError, match="no sender"):
        path_patch(gpt2, base, [], receivers="logits", metric=metric, source=src)
    with pytest.raises(EmptyInputError, match="no receivers"):
        path_patch(gpt2, base, [Head(0, 1)], receivers=[], metric=metric, source=src)
    with pytest.raises(InvalidArgumentError, match="valid: 'auto', 'fast', 'hooks'"):
        path_patch(gpt2, base, [Head(0, 1)], receivers="logits", metric=metric, source=src, method="slow")
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        path_patch(gpt2, base, [Head(0, 1)], receivers="logits", metric=metric, source=src, batch_size=0)
    # positions never wrap around: a receiver or metric position past the prompt is refused
    with pytest.raises(SiteOutOfRangeError, match="position 50 is outside the prompt"):
        path_patch(gpt2, base, [Head(0, 1)], receivers=[Query(1, 0, pos=50)], metric=metric, source=src)
    with pytest.raises(SiteOutOfRangeError, match="metric 'logit_diff' position 50"):
        path_patch(gpt2, base, [Head(0, 1)], receivers="logits", metric=LogitDiff(answers=answers, positions=(50,)),
                   source=src)


@pytest.mark.parametrize("method", ["fast", "hooks"])
def test_receivers_in_several_layers(method):
    """Receivers in layers 1 and 2 of a 3-layer model: each layer's input sees only the senders before it."""
    from tests.conftest import native_model

    model = native_model(4, "tiny-3l", n_layers=3, attn_only=False, d_mlp=64)
    base, src, answers = _pair(seed=13, seq=6)
    senders = [Head(0, 2), Mlp(1), Head(1, 1), (Head(0, 0), Head(1, 3)), Head(2, 0)]
    recs = [Query(1, 0, pos=[4, 5]), Key(2, 3, pos=5), Value(2, 1)]
    metric = LogitDiff(answers=answers)
    run = path_patch(model, base, senders, receivers=recs, metric=metric, source=src, method=method, batch_size=2)
    ref = path_patch_reference(model, base, senders, receivers=recs, metric=metric, source=src)
    torch.testing.assert_close(run.values, ref, atol=1e-5, rtol=1e-5)
    assert run.noop.tolist() == [False, False, False, False, True]
