"""Fourier <-> Moebius conversions against brute force, and the sign conventions on hand-built functions
whose answer is known by construction (AND = synergy, OR = redundancy, in both directions and polarities)."""

from itertools import combinations

import pytest
import torch

from mechpatch.errors import InvalidArgumentError
from mechpatch.interactions import InteractionError, InteractionModel, make_design
from mechpatch.interactions.basis import (
    all_masks,
    features,
    game_from_base,
    interaction_index,
    moebius_bruteforce,
    to_moebius,
)
from mechpatch.interactions.run import exhaustive_moebius


def random_sparse_fourier(n, seed, n_terms=12, max_order=3):
    g = torch.Generator().manual_seed(seed)
    terms = [()]
    while len(terms) < n_terms:
        k = int(torch.randint(1, max_order + 1, (1,), generator=g))
        t = tuple(sorted(torch.randperm(n, generator=g)[:k].tolist()))
        if t not in terms:
            terms.append(t)
    return terms, torch.randn(len(terms), generator=g, dtype=torch.float64)


@pytest.mark.parametrize("q", [0.5, 0.2, 0.85])
def test_fourier_to_base_moebius_equals_brute_force(q):
    n = 6
    terms, coef = random_sparse_fourier(n, seed=int(q * 100))
    values = features(all_masks(n), terms, q) @ coef  # f on all 64 subsets
    exact = moebius_bruteforce(values, n)
    fast = to_moebius(terms, coef, q)
    for t, c in exact.items():
        assert fast.get(t, 0.0) == pytest.approx(c, abs=1e-9), t
    assert set(fast) <= set(exact)


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_game_corner_equals_brute_force_on_presence(direction):
    n, q = 5, 0.3
    terms, coef = random_sparse_fourier(n, seed=7)
    z = all_masks(n)
    values = features(z, terms, q) @ coef
    # presence x = 1 - z when noising: the game's value of coalition K is f at z = complement of K
    x = ~z if direction == "noise" else z
    bits = (x.long() * (1 << torch.arange(n))).sum(1)
    game_values = torch.empty_like(values)
    game_values[bits] = values
    exact = moebius_bruteforce(game_values, n)
    fast = to_moebius(terms, coef, q, corner="game", direction=direction)
    via_base = game_from_base(to_moebius(terms, coef, q), direction)
    for t, c in exact.items():
        assert fast.get(t, 0.0) == pytest.approx(c, abs=1e-9)
        assert via_base.get(t, 0.0) == pytest.approx(c, abs=1e-9)


def test_exhaustive_moebius_matches_brute_force_up_to_its_order():
    n = 5
    terms, coef = random_sparse_fourier(n, seed=3, max_order=4)
    d = make_design("exhaustive", n, order=2)
    got = exhaustive_moebius(d.masks, features(d.masks, terms, 0.5) @ coef)
    exact = moebius_bruteforce(features(all_masks(n), terms, 0.5) @ coef, n)
    assert len(got) == 1 + n + n * (n - 1) // 2
    for t, c in got.items():
        assert c == pytest.approx(exact[t], abs=1e-9)


def table(fn, n):
    """A model holding the exact Moebius effects of fn(masks) over all 2^n masks."""
    z = all_masks(n)
    return moebius_bruteforce(fn(z).double(), n)


def both_ablated(z):
    return z[:, 0] & z[:, 1]


# Each case: the clean behaviour as a function of which components are intact (x) or patched (z).
CASES = {
    # noising (z = ablated): OR-redundant heads -> behaviour survives unless both are ablated
    ("noise", "or"): lambda z: 1.0 - (z[:, 0] & z[:, 1]).double(),
    # noising: AND -> behaviour needs both intact
    ("noise", "and"): lambda z: (~z[:, 0] & ~z[:, 1]).double(),
    # denoising (z = restored): OR -> restoring either brings it back
    ("denoise", "or"): lambda z: (z[:, 0] | z[:, 1]).double(),
    # denoising: AND -> both must be restored
    ("denoise", "and"): lambda z: (z[:, 0] & z[:, 1]).double(),
}


@pytest.mark.parametrize("direction,logic", list(CASES))
@pytest.mark.parametrize("higher_is_better", [True, False])
def test_pair_kinds_by_construction(direction, logic, higher_is_better):
    fn = CASES[(direction, logic)]
    sign = 1.0 if higher_is_better else -1.0  # a loss-like metric: lower = more of the behaviour
    moebius = table(lambda z: sign * fn(z), 3)
    m = InteractionModel(("A", "B", "C"), moebius, direction, higher_is_better, "exhaustive")
    (pair,) = m.interactions()
    assert pair.term == (0, 1)
    assert pair.kind == ("redundancy" if logic == "or" else "synergy")
    assert abs(pair.effect) == pytest.approx(1.0) and abs(pair.score) == pytest.approx(1.0)
    # main effects: under OR each head alone looks unimportant when noising; under AND each looks essential
    mains = [i.score for i in m.mains()]
    if direction == "noise":
        assert mains[:2] == pytest.approx([0.0, 0.0] if logic == "or" else [1.0, 1.0])
    else:
        assert mains[:2] == pytest.approx([1.0, 1.0] if logic == "or" else [0.0, 0.0])
    assert mains[2] == pytest.approx(0.0)


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_three_way_and_is_synergy_in_both_directions(direction):
    if direction == "noise":
        fn = lambda z: (~z[:, 0] & ~z[:, 1] & ~z[:, 2]).double()  # noqa: E731
    else:
        fn = lambda z: (z[:, 0] & z[:, 1] & z[:, 2]).double()  # noqa: E731
    m = InteractionModel(tuple("ABCD"), table(fn, 4), direction)
    (triple,) = m.interactions(order=3)
    assert triple.term == (0, 1, 2) and triple.kind == "synergy" and triple.score == pytest.approx(1.0)


def test_shapley_indices_of_known_games():
    # AND of two (presence game x0 x1): Shapley values 1/2 each, interaction index 1
    m = InteractionModel(("A", "B"), table(lambda z: (~z[:, 0] & ~z[:, 1]).double(), 2), "noise")
    assert m.game() == pytest.approx({(0, 1): 1.0})
    assert m.shapley() == pytest.approx({(0,): 0.5, (1,): 0.5})
    assert m.shapley(order=2, index="shapley") == pytest.approx({(0, 1): 1.0})
    # OR of two: x0 + x1 - x0 x1 -> Shapley 1/2 each, interaction -1; Banzhaf of a component 1/2
    m = InteractionModel(("A", "B"), table(lambda z: 1.0 - (z[:, 0] & z[:, 1]).double(), 2), "noise")
    assert m.shapley(order=2) == pytest.approx({(0, 1): -1.0})
    assert m.shapley(index="banzhaf") == pytest.approx({(0,): 0.5, (1,): 0.5})
    # efficiency: Shapley values sum to v(all) - v(none), on a random game
    terms, coef = random_sparse_fourier(5, seed=11)
    z = all_masks(5)
    m = InteractionModel(tuple("ABCDE"), moebius_bruteforce(features(z, terms, 0.5) @ coef, 5), "noise")
    full, empty = float(features(z[:1], terms, 0.5) @ coef), float(features(z[-1:], terms, 0.5) @ coef)
    assert sum(m.shapley().values()) == pytest.approx(full - empty)


def test_interaction_index_by_formula():
    game = {(0,): 1.0, (0, 1): 2.0, (0, 1, 2): 3.0}
    assert interaction_index(game, (0, 1), "shapley") == pytest.approx(2.0 + 3.0 / 2)
    assert interaction_index(game, (0, 1), "banzhaf") == pytest.approx(2.0 + 3.0 / 2)
    assert interaction_index(game, (0,), "shapley") == pytest.approx(1.0 + 2.0 / 2 + 3.0 / 3)
    assert interaction_index(game, (0,), "banzhaf") == pytest.approx(1.0 + 2.0 / 2 + 3.0 / 4)
    with pytest.raises(InteractionError, match="valid: 'moebius', 'shapley', 'banzhaf'"):
        interaction_index(game, (0,), "owen")


def test_model_prediction_reproduces_its_function():
    terms, coef = random_sparse_fourier(6, seed=5)
    z = all_masks(6)
    values = features(z, terms, 0.4) @ coef
    m = InteractionModel(tuple("ABCDEF"), to_moebius(terms, coef, 0.4))
    assert torch.allclose(m.predict(z), values, atol=1e-9)
    assert m.r2_on(z, values) == pytest.approx(1.0)


def test_errors_name_valid_choices():
    with pytest.raises(InteractionError, match="valid: 'base', 'game'"):
        to_moebius([()], [1.0], 0.5, corner="middle")
    with pytest.raises(InvalidArgumentError, match="unknown direction 'sideways'; valid: 'denoise', 'noise'"):
        InteractionModel(("A",), {}, direction="sideways")
    with pytest.raises(InvalidArgumentError, match="unknown direction 'noising'; valid: 'denoise', 'noise'"):
        to_moebius([()], [1.0], 0.5, corner="game", direction="noising")
    with pytest.raises(InteractionError, match="q must be a number in"):
        features(torch.zeros(2, 2, dtype=torch.bool), [()], q=1.0)
    m = InteractionModel(("A", "B"), {(): 0.0})
    with pytest.raises(InteractionError, match="unknown component 'C'; valid: A, B"):
        m.effect("C")
    with pytest.raises(InteractionError, match="valid: 'synergy', 'redundancy'"):
        m.interactions(kind="and")
    assert [t for t in combinations(range(3), 2)] == [(0, 1), (0, 2), (1, 2)]
