"""Sparse recovery on synthetic value functions with planted AND, OR and 3-way terms (seeded, noisy), the Lasso
against a slow coordinate-descent reference, and designs."""

import pytest
import torch

from mechpatch.interactions import FitSettings, InteractionError, find_function_interactions, make_design
from mechpatch.interactions.basis import all_masks, moebius_bruteforce, to_moebius
from mechpatch.interactions.fit import fit_fourier, lasso_path
from mechpatch.interactions.synthetic import planted

N = 144
BUDGET = 2500  # evaluations, held-out masks included


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_pairs_and_triples_recovered_within_budget(seed):
    fn = planted(seed)
    ands, ors, threes = fn.ands, fn.ors, fn.threes
    m = find_function_interactions(fn, N, n_masks=BUDGET, keep=0.5, max_order=3, seed=seed, holdout=0.2)
    print(m.summary(20), m.info)
    assert m.evaluations <= BUDGET
    assert m.r2 >= 0.95
    for pair in ands:
        hit = m.interaction(*pair)
        assert hit.kind == "synergy" and hit.effect == pytest.approx(1.0, abs=0.15), (pair, hit)
    for pair in ors:
        hit = m.interaction(*pair)
        assert hit.kind == "redundancy" and hit.effect == pytest.approx(-1.0, abs=0.15), (pair, hit)
    for t in threes:  # a 3-way AND: synergy of the three (and, at the base run, among each of its pairs)
        hit = m.interaction(*t)
        assert hit.kind == "synergy" and hit.score == pytest.approx(1.0, abs=0.2), (t, hit)
        for sub in [(t[0], t[1]), (t[0], t[2]), (t[1], t[2])]:
            assert m.interaction(*sub).kind == "synergy"
    # nothing strong that was not planted
    true_terms = set(ands) | set(ors) | set(threes) | fn.pairs_of_threes()
    spurious = [i for i in m.interactions() if i.term not in true_terms and abs(i.effect) > 0.2]
    assert not spurious, spurious[:5]


def test_pairs_only_fit_at_high_keep():
    """keep = 0.8 (each mask ablates about 29 of 144): the working point of real models. Pairs only."""
    fn = planted(3, n_three=0)
    ands, ors = fn.ands, fn.ors
    m = find_function_interactions(fn, N, n_masks=BUDGET, keep=0.8, max_order=2, seed=3)
    assert m.r2 >= 0.95
    top = {i.term: i.kind for i in m.top(len(ands) + len(ors))}
    assert top == {**{p: "synergy" for p in ands}, **{p: "redundancy" for p in ors}}


def test_noise_free_fit_is_exact():
    fn = planted(4, n=20, n_and=2, n_or=2, n_three=1, noise=0.0)
    m = find_function_interactions(fn, 20, n_masks=600, max_order=3, seed=4)
    assert m.r2 == pytest.approx(1.0, abs=1e-9)
    z = make_design("bernoulli", 20, 200, seed=9).masks
    assert torch.allclose(m.predict(z), fn(z), atol=1e-8)


def cd_reference(x, y, lam, iters=3000):
    """Plain cyclic coordinate descent for (1/2n)|y - Xw|^2 + lam |w|_1: slow and obviously right."""
    n, p = x.shape
    w = torch.zeros(p, dtype=x.dtype)
    r = y.clone()
    sq = (x * x).sum(0) / n
    for _ in range(iters):
        for j in range(p):
            rho = float(x[:, j] @ r) / n + sq[j] * w[j]
            rho = float(rho)
            new = (1.0 if rho > 0 else -1.0) * max(abs(rho) - lam, 0.0) / float(sq[j])
            r += x[:, j] * (w[j] - new)
            w[j] = new
    return w


def test_lasso_path_matches_coordinate_descent_and_kkt():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 25, generator=g, dtype=torch.float64)
    w_true = torch.zeros(25, dtype=torch.float64)
    w_true[[2, 7, 11]] = torch.tensor([1.5, -2.0, 0.7], dtype=torch.float64)
    y = x @ w_true + 0.1 * torch.randn(60, generator=g, dtype=torch.float64)
    lam_max = float((x.T @ y).abs().max()) / 60
    lambdas = lam_max * torch.tensor([1.0, 0.5, 0.2, 0.05, 0.01], dtype=torch.float64)
    path = lasso_path(x, y, lambdas, max_support=25)
    assert len(path) == 5 and int((path[0] != 0).sum()) == 0
    for lam, w in zip(lambdas.tolist(), path):
        ref = cd_reference(x, y, lam, iters=400)
        assert torch.allclose(w, ref, atol=1e-5), (lam, w, ref)
        grad = x.T @ (y - x @ w) / 60
        on = w != 0
        assert torch.allclose(grad[on], lam * torch.sign(w[on]), atol=1e-6)
        assert (grad[~on].abs() <= lam + 1e-6).all()


def test_fit_recovers_fourier_coefficients_of_a_random_sparse_polynomial():
    g = torch.Generator().manual_seed(2)
    terms = [(), (0,), (3,), (1, 4), (2, 5), (0, 6, 7)]
    coef = torch.tensor([0.5, 1.0, -0.4, 0.8, -0.6, 0.5], dtype=torch.float64)
    from mechpatch.interactions.basis import features

    z = torch.rand(800, 10, generator=g) < 0.3
    fit = fit_fourier(z, features(z, terms, 0.3) @ coef, q=0.3, settings=FitSettings(max_order=3))
    got = dict(zip(fit.terms, fit.coef.tolist()))
    for t, c in zip(terms, coef.tolist()):
        assert got[t] == pytest.approx(c, abs=1e-8)
    assert {t for t in got if len(t) >= 2} == {(1, 4), (2, 5), (0, 6, 7)}
    # and the Moebius form predicts every one of the 1024 masks
    exact = moebius_bruteforce(features(all_masks(10), terms, 0.3) @ coef, 10)
    conv = to_moebius(fit.terms, fit.coef, 0.3)
    assert all(conv.get(t, 0.0) == pytest.approx(c, abs=1e-7) for t, c in exact.items())


def test_designs():
    d = make_design("antithetic", 10, 7, keep=0.5, seed=1)
    assert d.n_masks == 8 and torch.equal(d.masks[0::2], ~d.masks[1::2]) and d.q == 0.5
    train, test = d.split(0.25)
    assert len(set(train.tolist()) | set(test.tolist())) == 8 and all(int(i) % 2 == 0 for i in test[0::2])
    assert make_design("one_out", 4).masks.sum(1).tolist() == [0, 1, 1, 1, 1]
    assert make_design("exhaustive", 6, order=3).n_masks == 1 + 6 + 15 + 20
    with pytest.raises(InteractionError, match="valid: 'bernoulli', 'antithetic', 'exhaustive', 'one_out'"):
        make_design("latin", 4)
    with pytest.raises(InteractionError, match="keep must be a probability"):
        make_design("bernoulli", 4, 10, keep=1.0)
    with pytest.raises(InteractionError, match="needs n_masks"):
        make_design("bernoulli", 4)
    with pytest.raises(InteractionError, match="use at least"):
        fit_fourier(torch.zeros(5, 10, dtype=torch.bool), torch.zeros(5), q=0.5)
    with pytest.raises(InteractionError, match="max_order must be 1, 2 or 3"):
        FitSettings(max_order=4)
