"""Components of an interaction search: each given once and present in the model, refused before any forward
pass otherwise; mask values in the model's precision."""

import pytest
import torch

import mechpatch.interactions.run as run_module
from mechpatch.errors import SiteOutOfRangeError
from mechpatch.interactions import evaluate_masks, exhaustive_interactions, find_interactions
from mechpatch.interactions.basis import InteractionError
from mechpatch.runs.interactions import resolve_components
from mechpatch.model import load_model
from mechpatch.sites import Head, ModelSpec, heads
from tests.conftest import native_config, perturb

#: the redundant-induction-2l shape: 2 attention-only layers of 8 heads
SPEC = ModelSpec(n_layers=2, n_heads=8, d_model=64, d_head=16, d_vocab=64, n_ctx=32, attn_only=True)


@pytest.fixture
def no_engine(monkeypatch):
    monkeypatch.setattr(run_module, "run_patches", lambda *a, **k: pytest.fail("the engine ran before refusing"))


@pytest.fixture(scope="module")
def base(attn_only):
    return torch.randint(1, attn_only.spec.d_vocab, (2, 6), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("call", ["find", "exhaustive", "masks"])
def test_repeated_components_are_refused(attn_only, base, no_engine, call):
    """A repeated site gave a fake self-interaction (L1H0 x L1H0 synergy) and every pair with it twice."""
    comps = [Head(1, 0), Head(1, 0), Head(1, 1), Head(0, 0)]
    with pytest.raises(InteractionError, match=r"components are repeated: L1H0 \(components 0 and 1\)"):
        if call == "find":
            find_interactions(attn_only, base, comps, metric="loss", n_masks=50)
        elif call == "exhaustive":
            exhaustive_interactions(attn_only, base, comps, metric="loss")
        else:
            evaluate_masks(attn_only, base, comps, masks=torch.ones(3, 4, dtype=torch.bool), metric="loss")


def test_repeated_site_sets_are_refused_in_any_order(attn_only, base, no_engine):
    comps = [(Head(0, 0), Head(0, 1)), Head(1, 2), [Head(0, 1), Head(0, 0)], Head(1, 2)]
    with pytest.raises(InteractionError, match=r"L0H0\+L0H1 = L0H1\+L0H0 \(components 0 and 2\); L1H2 \(components 1 "
                                               r"and 3\); give each component once"):
        find_interactions(attn_only, base, comps, metric="loss", n_masks=50)


def test_distinct_components_are_accepted(attn_only, base):
    """The same head at different positions, or inside different sets, is not a repeat."""
    comps = [Head(1, 0, pos=5), Head(1, 0, pos=4), (Head(1, 0), Head(1, 1))]
    r = evaluate_masks(attn_only, base, comps, masks=torch.eye(3, dtype=torch.bool), metric="loss")
    assert r.values.shape == (3,)


def test_config_components_repeated(no_engine):
    with pytest.raises(InteractionError, match=r"components are repeated: L1H0 \(components 0 and 1\)"):
        resolve_components(SPEC, ["L1H0", "L1H0", "L1H1", "L0H0"])
    with pytest.raises(InteractionError, match=r"L1H3 \(from 'L1H\*'\) = L1H3 \(components 3 and 8\)"):
        resolve_components(SPEC, ["L1H*", "L1H3"])
    with pytest.raises(InteractionError, match=r"L0H0\+L0H1 = L0H1\+L0H0 \(from 'L0H1 \+ L0H0'\) \(components 0 and 1\)"):
        resolve_components(SPEC, ["L0H0+L0H1", "L0H1 + L0H0"])
    assert len(resolve_components(SPEC, ["L1H*", "L0H0+L0H1"])) == 9


@pytest.mark.parametrize("entry, match", [
    ("L1H9", r"head 9 is out of range; the model has 8 heads per layer \(valid: 0\.\.7\)"),
    ("L5H*", r"layer 5 is out of range; the model has 2 layers \(valid: 0\.\.1\)"),
    ("L0H0+L2H1", r"layer 2 is out of range; the model has 2 layers \(valid: 0\.\.1\)"),
])
def test_config_components_the_model_lacks(entry, match):
    with pytest.raises(SiteOutOfRangeError, match=match):
        resolve_components(SPEC, [entry])


def test_float64_mask_values_stay_float64(base):
    model = load_model(native_config(attn_only=True), device="cpu", dtype="float64", name="attn-only-f64")
    perturb(model.bridge, 5)
    comps = heads(model.spec)[:3]
    masks = torch.tensor([[True, False, False], [True, True, False], [False, False, False]])
    r = evaluate_masks(model, base, comps, masks=masks, metric="loss")
    assert r.per_prompt.dtype == torch.float64
    exact = run_module.run_patches(model, base, [[comps[0]], [comps[0], comps[1]]], metric="loss",
                                   intervention=run_module.Zero())
    assert torch.equal(r.per_prompt[:2], exact.values)  # the engine's float64 values, not rounded to float32
    assert torch.equal(r.per_prompt[2], exact.base_values)
