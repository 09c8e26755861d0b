"""mechpatch's sweeps equal TransformerLens's own patching functions on the same inputs."""

import os

import pytest
import torch

from mechpatch.patching import sweep

from patching.test_engine import make_test_pair

os.environ.setdefault("TQDM_DISABLE", "1")
tlp = pytest.importorskip("transformer_lens.patching")  # a hard dependency: never actually skipped

TOL = dict(atol=1e-5, rtol=1e-5)

# TransformerLens function -> (mechpatch sweep kind, by_position, permutation of TL's axes into ours)
CASES = {
    "get_act_patch_resid_pre": ("resid_pre", True, None),
    "get_act_patch_resid_mid": ("resid_mid", True, None),
    "get_act_patch_attn_out": ("attn_out", True, None),
    "get_act_patch_mlp_out": ("mlp_out", True, None),
    "get_act_patch_attn_head_out_all_pos": ("head", False, None),
    "get_act_patch_attn_head_q_all_pos": ("q", False, None),
    "get_act_patch_attn_head_k_all_pos": ("k", False, None),
    "get_act_patch_attn_head_v_all_pos": ("v", False, None),
    "get_act_patch_attn_head_pattern_all_pos": ("pattern", False, None),
    # TL's by-position head sweeps are [layer, pos, head]; ours are [layer, head, pos]
    "get_act_patch_attn_head_out_by_pos": ("head", True, (0, 2, 1)),
    "get_act_patch_attn_head_q_by_pos": ("q", True, (0, 2, 1)),
    "get_act_patch_attn_head_k_by_pos": ("k", True, (0, 2, 1)),
    "get_act_patch_attn_head_v_by_pos": ("v", True, (0, 2, 1)),
    "get_act_patch_attn_head_pattern_by_pos": ("pattern", True, None),  # [layer, head, dest_pos] in both
}


def _tl_metric(answers):
    def metric(logits):
        last = logits[:, -1]
        return (last.gather(1, answers[:, :1]) - last.gather(1, answers[:, 1:])).mean()

    return metric


@pytest.mark.parametrize(
    "model_name, function",
    [(m, f) for m in ("gpt2", "attn_only") for f in sorted(CASES)
     if not (m == "attn_only" and CASES[f][0] in ("mlp_out", "resid_mid"))],  # no MLP in attn-only models
)
def test_equal_to_transformer_lens(request, model_name, function):
    model = request.getfixturevalue(model_name)
    kind, by_position, perm = CASES[function]
    pair = make_test_pair(model)
    _, clean_cache = model.bridge.run_with_cache(pair.clean)
    with torch.inference_mode():
        expected = getattr(tlp, function)(model.bridge, pair.corrupted, clean_cache, _tl_metric(pair.answers))
    ours = sweep(model, pair, kind, metric="logit_diff", by_position=by_position)
    got = ours.mean()
    if perm is not None:
        got = got.permute(*perm)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected.float(), **TOL)


def test_bridge_resid_mid_hooks_that_return_a_tensor_do_not_reach_the_residual(gpt2):
    """The TransformerLens 4.3 trap that mechpatch works around (HookSpec.write_via).

    hook_resid_mid fires as LN2's input: an in-place edit (what TL's patching functions do) reaches
    the residual stream, but a hook that returns a new tensor changes only the MLP's input. If this
    test fails, TransformerLens changed the behaviour and the write_via redirect may go.
    """
    pair = make_test_pair(gpt2)
    _, clean = gpt2.bridge.run_with_cache(pair.clean)
    seen = {}

    def returned(act, hook):
        return clean["blocks.0.hook_resid_mid"].clone()

    def grab(name):
        def hook(act, hook):
            seen[name] = act.clone()

        return hook

    gpt2.bridge.run_with_hooks(pair.corrupted, fwd_hooks=[
        ("blocks.0.hook_resid_mid", returned), ("blocks.0.hook_mlp_out", grab("mlp")),
        ("blocks.0.hook_resid_post", grab("post")),
    ])
    _, corrupted = gpt2.bridge.run_with_cache(pair.corrupted)
    torch.testing.assert_close(seen["post"], corrupted["blocks.0.hook_resid_mid"] + seen["mlp"])  # not clean's
    assert not torch.allclose(seen["post"], clean["blocks.0.hook_resid_mid"] + seen["mlp"], atol=1e-3)
