"""Path patching from heads on models that normalise the attention output before it joins the residual stream
(Gemma 2, Gemma 3, OLMo 2): the fast and hooks methods recompute the post-norm on the base run's pre-norm
attention sum plus the sender heads' change, per layer, and equal the literal freeze-everything-else reference."""

import os

import pytest
import torch

from mechpatch.patching import paths
from mechpatch.patching.paths import path_patch, path_patch_reference
from mechpatch.prompts import random_pair
from mechpatch.sites import Head, Key, Mlp, Query, Value
from mechpatch.zoo.architectures import random_model

os.environ.setdefault("TQDM_DISABLE", "1")

TOL = dict(atol=1e-5, rtol=1e-5)
POST_NORM = ("gemma2", "gemma3", "olmo2")
#: single heads, several heads of one layer, heads of two layers, heads and MLPs, a layer-1-only set
SENDERS = [
    [Head(0, 0)],
    [Head(0, 1), Head(0, 2), Head(0, 3)],
    [Head(0, 2), Head(1, 1)],
    [Head(0, 1), Mlp(0)],
    [Head(0, 0), Mlp(0), Head(1, 3), Mlp(1)],
    [Head(1, 0), Head(1, 2)],
]
RECEIVERS = {
    "logits": "logits",
    "query": [Query(1, 1)],
    "query_at_end": [Query(1, 2, pos=(7,)), Query(1, 0, pos=(7,))],  # the run resumes at the last position
    "mixed": [Key(1, 0, pos=(3, 5)), Value(1, 1), Query(1, 3, pos=(6, 7))],
}


@pytest.fixture(scope="module", params=POST_NORM)
def case(request):
    """A tiny random-weight post-norm model and a prompt pair longer than its sliding window of 4."""
    model = random_model(request.param, "tiny", seed=5)
    assert all("ln1_post" in blk._modules for blk in model.bridge.blocks)
    return model, random_pair(model, n=3, seq=8, seed=1, corrupt=(1, 2, 4))


def _kw(pair):
    return dict(metric="logit_diff", source=pair.corrupted, answers=pair.answers)


@pytest.mark.parametrize("receivers", list(RECEIVERS))
def test_fast_equals_hooks_equals_the_literal_reference(case, receivers):
    model, pair = case
    recs = RECEIVERS[receivers]
    fast_run = path_patch(model, pair.clean, SENDERS, receivers=recs, method="fast", batch_size=4, **_kw(pair))
    hooks_run = path_patch(model, pair.clean, SENDERS, receivers=recs, method="hooks", batch_size=4, **_kw(pair))
    ref = path_patch_reference(model, pair.clean, SENDERS, receivers=recs, **_kw(pair))
    torch.testing.assert_close(fast_run.values, hooks_run.values, **TOL)
    torch.testing.assert_close(fast_run.values, ref, **TOL)
    torch.testing.assert_close(hooks_run.values, ref, **TOL)
    reaching = ~fast_run.noop
    assert (fast_run.effect[reaching].abs().amax(1) > 1e-4).all(), "every sender set reaching a receiver matters"
    assert fast_run.noop.tolist() == [False] * 5 + [receivers != "logits"]


def test_auto_takes_the_fast_path_and_agrees(case):
    model, pair = case
    senders = SENDERS[:3]
    auto = path_patch(model, pair.clean, senders, receivers=RECEIVERS["mixed"], method="auto", **_kw(pair))
    fast_run = path_patch(model, pair.clean, senders, receivers=RECEIVERS["mixed"], method="fast", **_kw(pair))
    torch.testing.assert_close(auto.values, fast_run.values, atol=0.0, rtol=0.0)


def test_the_post_norm_is_recomputed_not_added(case, monkeypatch):
    """The old additive change (each head's ``dz @ W_O`` added past the norm) is wrong on these models: the
    heads of one layer change the residual stream by more than the sum of their norm-recomputed single changes,
    and path patching that ignores the norm misses the literal reference, which the real one matches."""
    model, pair = case
    one_layer = (Head(0, 1), Head(0, 3))
    with torch.inference_mode():
        layers, names = {0}, ["blocks.0.ln1_post.hook_in"]
        base = paths._sender_outputs(model, pair.clean, layers, set(), names)
        src = paths._sender_outputs(model, pair.corrupted, layers, set(), ())
        joint = paths._delta(model, one_layer, 1, base, src)
        singles = sum(paths._delta(model, (h,), 1, base, src) for h in one_layer)
        literal = _frozen_attn_out(model, pair, one_layer) - _frozen_attn_out(model, pair, ())
    torch.testing.assert_close(joint, literal, **TOL)
    assert (joint - singles).abs().amax() > 1e-2

    kw = dict(receivers="logits", method="hooks", **_kw(pair))
    senders = [list(one_layer), [Head(0, 0)]]
    ref = path_patch_reference(model, pair.clean, senders, receivers="logits", **_kw(pair))
    torch.testing.assert_close(path_patch(model, pair.clean, senders, **kw).values, ref, **TOL)
    monkeypatch.setattr(paths, "_bridge_post_norm", lambda model, layer: None)  # the old, additive change
    naive = path_patch(model, pair.clean, senders, **kw).values
    assert ((naive - ref).abs().amax(1) > 1e-3).all()


def _frozen_attn_out(model, pair, heads):
    """Layer 0's attention output (after its post-norm) with ``heads`` at source and every other head at base."""
    z_name = "blocks.0.attn.hook_z"
    store = {}

    def keep(name):
        def fn(act, hook):
            store[name] = act.detach().clone()
        return fn

    model.bridge.run_with_hooks(pair.corrupted, fwd_hooks=[(z_name, keep("src"))])
    model.bridge.run_with_hooks(pair.clean, fwd_hooks=[(z_name, keep("base"))])
    z = store["base"].clone()
    for h in heads:
        z[:, :, h.head] = store["src"][:, :, h.head]
    model.bridge.run_with_hooks(pair.clean, fwd_hooks=[(z_name, lambda act, hook: z),
                                                       ("blocks.0.hook_attn_out", keep("out"))])
    return store["out"]
