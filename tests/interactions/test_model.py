"""Interactions of real model components: masks through the engine agree with one-variant-per-forward patching,
the exhaustive path is exact, and on the trained model with backup induction heads the sparse fit finds the
redundant pairs and matches exhaustive pairwise ablation."""

import pytest
import torch

from mechpatch.interactions import (
    InteractionError,
    compare,
    evaluate_masks,
    exhaustive_interactions,
    find_interactions,
    make_design,
)
from mechpatch.interactions.run import exhaustive_moebius
from mechpatch.patching import Mean, Replace, Resample, Zero, run_patches
from mechpatch.patching.metrics import KLDivergence
from mechpatch.sites import Head, Mlp, heads
from mechpatch.tasks import make_induction
from mechpatch.zoo.redundant_induction import load_redundant_induction


@pytest.fixture(scope="module")
def redundant():
    model = load_redundant_induction(device="cpu")
    (batch,) = make_induction(model, n=16, block=10, seed=0).batches
    return model, batch, make_induction(model, n=16, block=10, seed=0).metric


def tokens(model, n=4, seq=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.spec.d_vocab, (n, seq), generator=g)


@pytest.mark.parametrize("intervention", [Zero(), Mean(), Resample(seed=3), Replace()])
def test_masks_equal_one_variant_per_forward(gpt2, intervention):
    """Each mask's value equals patching the union of its components' sites with the reference method; the
    empty mask is the base run and repeated masks run once."""
    base, source = tokens(gpt2), tokens(gpt2, seed=1)
    comps = [Head(0, 1), [Head(1, 0), Head(1, 2)], Mlp(0)]  # a site set is one component
    masks = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    got = evaluate_masks(gpt2, base, comps, masks=masks, metric="loss", source=source, intervention=intervention)
    assert got.evaluations == 3  # empty mask free, duplicate run once
    variants = [[Head(0, 1)], [Head(1, 0), Head(1, 2), Mlp(0)], [Head(0, 1), Head(1, 0), Head(1, 2), Mlp(0)]]
    ref = run_patches(gpt2, base, variants, metric="loss", source=source, intervention=intervention, method="reference")
    assert torch.allclose(got.per_prompt[0], ref.base_values, atol=1e-5)
    assert torch.allclose(got.per_prompt[1:4], ref.values, atol=1e-4)
    assert torch.equal(got.per_prompt[4], got.per_prompt[2])
    assert torch.allclose(got.values, got.per_prompt.double().mean(1))


def test_exhaustive_is_inclusion_exclusion_of_measured_sets(attn_only):
    base = tokens(attn_only)
    comps = heads(attn_only.spec, layers=[1])
    ex = exhaustive_interactions(attn_only, base, comps, metric="loss", intervention=Mean())
    assert ex.evaluations == 4 + 6 and ex.forwards >= 1 and not ex.higher_is_better  # loss: lower is better
    v = lambda sites: float(run_patches(attn_only, base, [sites], metric="loss", intervention=Mean(),
                                        method="reference").values.mean())
    base_value = float(run_patches(attn_only, base, [comps[0]], metric="loss", intervention=Mean()).base_values.mean())
    pair = v([comps[0], comps[2]]) - v([comps[0]]) - v([comps[2]]) + base_value
    assert ex.effect("L1H0", "L1H2") == pytest.approx(pair, abs=1e-4)
    assert ex.effect(1) == pytest.approx(v([comps[1]]) - base_value, abs=1e-4)
    with pytest.raises(InteractionError, match="lack subset"):
        exhaustive_moebius(make_design("exhaustive", 3, order=2).masks[[0, 4]], torch.zeros(2))


def test_inputs_are_checked(attn_only):
    base = tokens(attn_only)
    comps = heads(attn_only.spec, layers=[0])
    with pytest.raises(InteractionError, match=r"masks must be a bool tensor \[mask, 4\]"):
        evaluate_masks(attn_only, base, comps, masks=torch.zeros(2, 3, dtype=torch.bool), metric="loss")
    with pytest.raises(InteractionError, match="non-empty sequence of sites"):
        evaluate_masks(attn_only, base, [], masks=torch.zeros(2, 0, dtype=torch.bool), metric="loss")
    with pytest.raises(InteractionError, match="pass it as source="):
        find_interactions(attn_only, base, comps, metric="loss", direction="denoise", intervention=Replace())
    with pytest.raises(InteractionError, match="valid: 'bernoulli', 'antithetic'"):
        find_interactions(attn_only, base, comps, metric="loss", design="exhaustive")


def test_kl_metric_is_lower_is_better(attn_only):
    base = tokens(attn_only, n=3)
    comps = heads(attn_only.spec)
    m = find_interactions(attn_only, base, comps, metric=KLDivergence(), n_masks=120, keep=0.7)
    assert not m.higher_is_better and m.r2 is not None and m.evaluations <= 120


def test_redundant_induction_heads_found_and_match_exhaustive(redundant):
    """One-at-a-time ablation credits each induction head with little; the sparse fit over all 16 heads finds
    every layer-1 pair redundant (negative, as exhaustive pairwise ablation measures) and reproduces the
    exhaustive ranking of the strongest pairs."""
    model, batch, metric = redundant
    comps = heads(model.spec)
    ex = exhaustive_interactions(model, batch.clean, comps, metric=metric, intervention=Mean())
    sp = find_interactions(model, batch.clean, comps, metric=metric, n_masks=800, keep=0.8, intervention=Mean(), seed=0)
    print(ex.summary(8), "\n", sp.summary(8))
    l1 = [(i, j) for i in range(8, 16) for j in range(i + 1, 16)]
    assert all(ex.moebius[p] < 0 for p in l1)  # the ground truth: all 28 layer-1 pairs are backups
    found = [sp.interaction(*p) for p in l1 if sp.moebius.get(p, 0.0) != 0.0]
    assert len(found) >= 20 and all(i.kind == "redundancy" for i in found)
    assert sp.r2 >= 0.95
    top5, top10 = compare(sp, ex, k=5), compare(sp, ex, k=10)
    print("evaluations / forwards: sparse", sp.evaluations, sp.forwards, "exhaustive", ex.evaluations, ex.forwards,
          top5, top10)
    assert top5["topk_overlap"] >= 0.6 and top10["topk_overlap"] >= 0.6 and top10["topk_sign"] == 1.0
    assert top5["spearman"] >= 0.8
    assert ex.evaluations == 16 * 15 // 2 + 16 and sp.evaluations <= 800


def test_top_and_summary_refuse_negative_counts_and_order_one_gives_main_effects(unchecked):
    """top(-1) used to cut from the end; top(k, order=1) and interactions(order=1) always returned []."""
    from mechpatch.interactions import InteractionModel
    from mechpatch.interactions.basis import InteractionError

    m = InteractionModel(("A", "B", "C"), {(): 1.0, (0,): 0.5, (1,): -2.0, (0, 1): 0.3, (0, 2): -0.2, (1, 2): 0.1})
    for bad in (-1, True, 1.5):
        with unchecked(), pytest.raises(InteractionError, match="k must be a non-negative int"):
            m.top(bad)
    with pytest.raises(InteractionError, match="k must be a non-negative int"):
        m.summary(-1)
    with pytest.raises(InteractionError, match="order must be a positive int"):
        m.interactions(order=0)
    assert [i.term for i in m.top(5, order=1)] == [(1,), (0,)]
    assert [i.term for i in m.top(2)] == [(0, 1), (0, 2)]
    assert m.top(0) == []
