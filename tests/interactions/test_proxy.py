"""The proxy backend: gradient-boosted trees read out as Moebius coefficients, then the strongest terms refitted.

The read-out is exact: the expanded coefficients predict what the fitted trees predict, on every mask of a small
game. Recovery is held to the planted synthetic functions the other backends are held to.
"""

import itertools

import pytest
import torch

from mechpatch.interactions import find_function_interactions
from mechpatch.interactions.basis import InteractionError
from mechpatch.interactions.proxy import ensemble_moebius, proxy_moebius
from mechpatch.interactions.synthetic import planted


def test_the_trees_read_out_is_exact_on_every_mask():
    from sklearn.ensemble import GradientBoostingRegressor

    n = 8
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(300, n, generator=g) < 0.5
    f = planted(3, n=n, n_and=1, n_or=1, n_three=1, noise=0.05)
    gbt = GradientBoostingRegressor(n_estimators=60, max_depth=4, random_state=0).fit(masks.double().numpy(),
                                                                                       f(masks).numpy())
    read = ensemble_moebius(gbt)
    every = torch.tensor(list(itertools.product([False, True], repeat=n)))
    from_terms = torch.tensor([sum(v for t, v in read.items() if all(bool(m[i]) for i in t)) for m in every],
                              dtype=torch.float64)
    trees = torch.from_numpy(gbt.predict(every.double().numpy()))
    torch.testing.assert_close(from_terms, trees, atol=1e-9, rtol=0)
    assert max(len(t) for t in read) <= 4  # no deeper than the trees


def test_planted_pairs_are_recovered_with_their_signs():
    f = planted(1, n=40, n_and=3, n_or=3, n_three=0, noise=0.05)
    m = find_function_interactions(f, 40, n_masks=1500, keep=0.5, backend="proxy", seed=0)
    assert m.method == "proxy" and m.r2 > 0.9 and m.info["support"] >= 6
    top = {i.term: i for i in m.top(6, order=2)}
    assert set(top) == set(f.ands) | set(f.ors)
    for t in f.ands:  # AND of intact components: needed together (synergy); OR: backups (redundancy)
        assert top[t].kind == "synergy"
    for t in f.ors:
        assert top[t].kind == "redundancy"


def test_bad_input(unchecked):
    masks = torch.zeros(5, 3, dtype=torch.bool)
    with pytest.raises(InteractionError, match="at least 8 masks"):
        proxy_moebius(masks, torch.zeros(5))
    with pytest.raises(InteractionError, match="max_order must be 1, 2 or 3"):
        proxy_moebius(torch.zeros(20, 3, dtype=torch.bool), torch.zeros(20), max_order=4)
    with unchecked(), pytest.raises(InteractionError, match=r"\(4,\) values for 20 masks"):
        proxy_moebius(torch.zeros(20, 3, dtype=torch.bool), torch.zeros(4))
