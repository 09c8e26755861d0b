"""Token interactions (feature attribution): input positions as components, ablated through the engine's rows.

The reference is obviously correct: on the induction model the token embedding is the whole of ``hook_embed``
(positions are a separate embedding), so ablating a set of tokens with a filler token equals running the prompt with
those tokens replaced by the filler. The exact Moebius transform of all 2^n masks must reproduce that value on
every mask; Shapley values and Shapley interaction indices read from it must equal shapiq's exact computation on the same game.
"""

import itertools

import pytest
import torch

from mechpatch import zoo
from mechpatch.interactions import find_interactions
from mechpatch.interactions.basis import InteractionError
from mechpatch.interactions.plot import token_figure
from mechpatch.interactions.tokens import MAX_EXACT, token_interactions
from mechpatch.patching.interventions import Mean, Replace, Zero
from mechpatch.sites import Embed

# a repeated sequence: the induction model predicts the token after the previous occurrence of the last token
PROMPT = [7, 23, 11, 31, 7, 23, 11]  # ... -> 31
ANSWER = 31
POSITIONS = [0, 1, 2, 3, 5, 6]  # six tokens: 64 masks; position 4 stays


def metric(logits, prompt):
    """Log-probability of the induction answer at the last position."""
    return logits[:, -1].log_softmax(-1)[:, ANSWER]


@pytest.fixture(scope="module")
def model():
    return zoo.load("induction-2l")


@pytest.fixture(scope="module")
def exact(model):
    return token_interactions(model, torch.tensor([PROMPT]), POSITIONS, metric=metric, filler=0, exact=True)


def _oracle(model, ablated):
    tokens = torch.tensor([PROMPT])
    tokens[0, list(ablated)] = 0
    with torch.no_grad():
        return float(metric(model.bridge(tokens), None)[0])


def test_the_exact_transform_reproduces_every_mask(model, exact):
    assert exact.evaluations == 2 ** len(POSITIONS) - 1 and exact.order == len(POSITIONS)
    assert exact.components[0] == "0:#7" and exact.info["positions"] == POSITIONS
    for k in range(len(POSITIONS) + 1):
        for subset in itertools.combinations(range(len(POSITIONS)), k):
            value = sum(v for term, v in exact.moebius.items() if set(term) <= set(subset))
            assert value == pytest.approx(_oracle(model, [POSITIONS[i] for i in subset]), abs=1e-4)


def test_the_sparse_fit_is_the_component_search_over_embedding_sites(model):
    """The sparse path is find_interactions over one Embed site per position, the filler as the source run: the
    same masks and the same fit (the fit's quality on real prompts is measured in bench_interactions)."""
    tokens = torch.tensor([PROMPT])
    sparse = token_interactions(model, tokens, POSITIONS, metric=metric, filler=0, n_masks=40, seed=3)
    direct = find_interactions(model, tokens, [(Embed(pos=p),) for p in POSITIONS], metric=metric, n_masks=40,
                               seed=3, keep=0.8, max_order=3, source=torch.zeros_like(tokens),
                               intervention=Replace())
    assert sparse.moebius == direct.moebius and sparse.evaluations == direct.evaluations
    assert sparse.components == ("0:#7", "1:#23", "2:#11", "3:#31", "5:#23", "6:#11")


def test_shapley_values_and_interaction_indices_equal_shapiqs_exact_computation(model, exact):
    shapiq = pytest.importorskip("shapiq", reason="the spex extra (CI installs it)")
    n = len(POSITIONS)

    def game(coalitions):  # shapiq's coalitions: True = the player is present (the token kept)
        return [_oracle(model, [POSITIONS[i] for i in range(n) if not c[i]]) for c in coalitions]

    computer = shapiq.ExactComputer(n_players=n, game=lambda c: __import__("numpy").array(game(c)))
    sv = computer(index="SV", order=1)
    sii = computer(index="SII", order=2)
    ours_sv = exact.shapley(order=1)
    ours_sii = exact.shapley(order=2)
    sign = exact.polarity  # ours are signed by higher_is_better (True here: a log-probability)
    for i in range(n):
        assert sign * ours_sv[(i,)] == pytest.approx(float(sv[(i,)]), abs=1e-4)
    for pair in itertools.combinations(range(n), 2):
        assert sign * ours_sii[pair] == pytest.approx(float(sii[pair]), abs=1e-4)


def test_baselines(model):
    tokens = torch.tensor([PROMPT])
    zero = token_interactions(model, tokens, [6], metric=metric, intervention=Zero(), exact=True)
    assert zero.evaluations == 1 and zero.info["baseline"] == "Zero"
    corrupted = torch.tensor([[7, 23, 11, 31, 7, 23, 19]])
    by_source = token_interactions(model, tokens, [6], metric=metric, source=corrupted, exact=True)
    assert by_source.moebius[(0,)] == pytest.approx(_oracle_with(model, corrupted) - _oracle(model, []), abs=1e-4)
    mean = token_interactions(model, tokens, [6], metric=metric, exact=True,
                              intervention=Mean(reference=torch.tensor([[1, 2, 3, 4, 5, 6, 8], [9, 8, 7, 6, 5, 4, 3]])))
    assert mean.info["baseline"] == "Mean" and mean.moebius[(0,)] != 0.0


def _oracle_with(model, tokens):
    with torch.no_grad():
        return float(metric(model.bridge(tokens), None)[0])


def test_bad_input_is_refused_before_any_forward(model, unchecked):
    tokens = torch.tensor([PROMPT])
    with pytest.raises(InteractionError, match="give one baseline .* got none"):
        token_interactions(model, tokens, metric=metric)
    with pytest.raises(InteractionError, match="give one baseline"):
        token_interactions(model, tokens, metric=metric, filler=0, intervention=Zero())
    with pytest.raises(InteractionError, match=r"positions must be a non-empty list of ints in -7..6"):
        token_interactions(model, tokens, [1, 7], metric=metric, filler=0)
    with pytest.raises(InteractionError, match="positions name a token twice"):
        token_interactions(model, tokens, [1, -6], metric=metric, filler=0)
    with unchecked(), pytest.raises(InteractionError, match="take one prompt"):
        token_interactions(model, torch.tensor([PROMPT, PROMPT]), metric=metric, filler=0)
    with unchecked(), pytest.raises(InteractionError, match="source has 6 tokens and the prompt 7"):
        token_interactions(model, tokens, metric=metric, source=torch.tensor([PROMPT[:-1]]))
    with pytest.raises(InteractionError, match="filler must be a token"):
        token_interactions(model, tokens, metric=metric, filler=10 ** 9)
    long = torch.arange(1, MAX_EXACT + 3)[None]
    with pytest.raises(InteractionError, match=f"at most {MAX_EXACT} tokens"):
        token_interactions(model, long, metric=metric, filler=0, exact=True)
    with pytest.raises(InteractionError, match="unknown backend 'trees'; valid: 'mechpatch', 'proxy', 'spex'"):
        token_interactions(model, tokens, metric=metric, filler=0, backend="trees")


def test_token_figure(exact):
    fig = token_figure(exact, k=4)
    texts = list(fig.data[-3].text)
    assert texts == ["#7", "#23", "#11", "#31", "#23", "#11"]
    assert sum(1 for t in fig.data if t.mode == "lines" and t.showlegend is False) == 4  # four arcs
    with pytest.raises(InteractionError, match="token_figure draws a model from token_interactions"):
        from mechpatch.interactions import InteractionModel

        token_figure(InteractionModel(("a", "b"), {(): 0.0, (0, 1): 1.0}))
