"""The optional SPEX backend (shapiq, the ``spex`` extra): planted pairs recovered with their signs, exact Moebius
terms against the exhaustive path on a small function, the engine path against exhaustive patching."""

import sys

import pytest
import torch

from mechpatch.interactions import (
    InteractionError,
    exhaustive_interactions,
    find_function_interactions,
    find_interactions,
    make_design,
)
from mechpatch.interactions.run import exhaustive_moebius
from mechpatch.interactions.synthetic import planted
from mechpatch.patching import Mean
from mechpatch.sites import heads


def test_planted_pairs_recovered_with_signs():
    pytest.importorskip("shapiq")
    fn = planted(0, n=32, n_and=2, n_or=2, n_three=0, noise=0.05)
    m = find_function_interactions(fn, 32, n_masks=3000, keep=0.5, seed=0, backend="spex")
    print(m.summary(8), m.info, m.evaluations)
    assert m.method == "spex" and m.evaluations <= 3000 and m.r2 >= 0.95
    for pair in fn.ands:
        hit = m.interaction(*pair)
        assert hit.kind == "synergy" and hit.effect == pytest.approx(1.0, abs=0.15), (pair, hit)
    for pair in fn.ors:
        hit = m.interaction(*pair)
        assert hit.kind == "redundancy" and hit.effect == pytest.approx(-1.0, abs=0.15), (pair, hit)
    spurious = [i for i in m.interactions() if i.term not in set(fn.ands) | set(fn.ors) and abs(i.effect) > 0.2]
    assert not spurious, spurious[:5]


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_moebius_terms_equal_the_exhaustive_ones(direction):
    pytest.importorskip("shapiq")

    def f(z):  # an OR pair, an AND pair, a three-way term and mains (z = patched)
        x, zd = (~z).double(), z.double()
        return (1.0 + 0.5 * zd[:, 2] - 0.25 * x[:, 7] + torch.maximum(x[:, 0], x[:, 1]) + 0.8 * x[:, 3] * x[:, 4]
                - 0.6 * zd[:, 5] * zd[:, 6] * zd[:, 8])

    n = 10
    m = find_function_interactions(f, n, n_masks=1500, max_order=3, holdout=0.0, direction=direction,
                                   backend="spex")
    d = make_design("exhaustive", n, order=3)
    exact = exhaustive_moebius(d.masks, f(d.masks))
    terms = set(exact) | set(m.moebius)
    assert max(abs(m.moebius.get(t, 0.0) - exact.get(t, 0.0)) for t in terms) < 1e-6
    assert m.interaction(0, 1).kind == "redundancy" and m.interaction(3, 4).kind == "synergy"
    assert m.direction == direction and m.evaluations <= 1500


def test_engine_path_matches_exhaustive_patching(attn_only):
    pytest.importorskip("shapiq")
    g = torch.Generator().manual_seed(0)
    base = torch.randint(1, attn_only.spec.d_vocab, (4, 8), generator=g)
    comps = heads(attn_only.spec)
    ex = exhaustive_interactions(attn_only, base, comps, metric="loss", intervention=Mean())
    sp = find_interactions(attn_only, base, comps, metric="loss", n_masks=1200, intervention=Mean(), backend="spex")
    print(sp.summary(6), sp.info, sp.evaluations, sp.forwards)
    assert sp.components == ex.components and not sp.higher_is_better and sp.forwards >= 1
    assert sp.evaluations <= 1200
    for t in [t for t in ex.moebius if len(t) <= 1] + sorted(ex.moebius, key=lambda t: -abs(ex.moebius[t]))[:3]:
        assert sp.moebius.get(t, 0.0) == pytest.approx(ex.moebius[t], abs=0.05 * max(1.0, abs(ex.moebius[t])))


def test_missing_shapiq_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "shapiq.approximator.sparse", None)
    with pytest.raises(InteractionError, match=r"mechpatch\[spex\]"):
        find_function_interactions(lambda z: z.double().sum(1), 8, n_masks=100, backend="spex")
    with pytest.raises(InteractionError, match="backend"):
        find_function_interactions(lambda z: z.double().sum(1), 8, n_masks=100, backend="spexx")
