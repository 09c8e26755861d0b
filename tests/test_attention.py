"""Head scores from cached attention patterns: exact on hand-made patterns, and on the bundled induction model they
find the circuit ACDC finds there (previous-token head L0H2 into the induction head L1H0's keys)."""

import pytest
import torch

from mechpatch import zoo
from mechpatch.attention import attention_patterns, attention_to, head_scores
from mechpatch.errors import InvalidArgumentError, ShapeMismatchError


def _one_hot(keys_per_query: list[int]) -> torch.Tensor:
    s = len(keys_per_query)
    p = torch.zeros(1, 1, 1, s, s)
    p[0, 0, 0, torch.arange(s), torch.tensor(keys_per_query)] = 1.0
    return p


def test_scores_on_hand_made_patterns():
    tokens = torch.tensor([[7, 8, 9, 7, 8, 9]])
    # every query on the key after the earlier occurrence of its token (queries 3, 4, 5: keys 1, 2, 3)
    induction = _one_hot([0, 0, 0, 1, 2, 3])
    assert head_scores(induction, tokens, "induction").item() == pytest.approx(1.0)
    assert head_scores(induction, tokens, "duplicate-token").item() == pytest.approx(0.0)
    duplicate = _one_hot([0, 0, 0, 0, 1, 2])  # queries 3, 4, 5 on the earlier 7, 8, 9
    assert head_scores(duplicate, tokens, "duplicate-token").item() == pytest.approx(1.0)
    assert head_scores(duplicate, tokens, "previous-token").item() == pytest.approx(1 / 5)  # query 1 on key 0
    # uniform causal attention: query q gives 1/(q+1) to each key; previous-token averages that over q = 1..5
    uniform = torch.tril(torch.ones(6, 6, dtype=torch.float64)) / torch.arange(1, 7)[:, None]
    uniform = uniform[None, None, None]
    expected = sum(1 / (q + 1) for q in range(1, 6)) / 5
    assert head_scores(uniform, tokens, "previous-token").item() == pytest.approx(expected, abs=1e-12)
    # induction: queries 3..5 each have one target (keys 1..3), weight 1/(q+1)
    assert head_scores(uniform, tokens, "induction").item() == pytest.approx((1 / 4 + 1 / 5 + 1 / 6) / 3, abs=1e-12)
    # attention from a named query position to a named key position, per prompt
    two = torch.cat([induction, duplicate])
    assert attention_to(two, torch.tensor([5, 5]), torch.tensor([3, 2])).item() == pytest.approx(1.0)
    assert attention_to(two, -1, 0).item() == pytest.approx(0.0)


def test_the_induction_models_heads_are_named():
    model = zoo.load("induction-2l")
    g = torch.Generator().manual_seed(0)
    half = torch.randint(1, model.spec.d_vocab, (16, 8), generator=g)
    tokens = torch.cat([half, half], 1)  # a random sequence repeated: the induction task's shape
    patterns = attention_patterns(model, tokens, batch_size=5)
    assert patterns.shape == (16, 2, model.spec.n_heads, 16, 16)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(16, 2, model.spec.n_heads, 16))
    # the same patterns as TransformerLens's own cache, run independently
    _, cache = model.bridge.run_with_cache(tokens)
    torch.testing.assert_close(patterns[:, 1], cache["blocks.1.attn.hook_pattern"].float(), atol=1e-6, rtol=1e-5)
    prev = head_scores(patterns, tokens, "previous-token")
    ind = head_scores(patterns, tokens, "induction")
    # measured: layer 0 heads 0.81, 0.62, 0.80, 0.14 on the previous token; L1H0 0.80 on induction targets
    assert prev[0, 2] > 0.7 and prev[0].max() > 0.7 and prev[1].max() < 0.2  # L0H2: the circuit's previous-token head
    assert divmod(int(ind.argmax()), model.spec.n_heads) == (1, 0) and ind[1, 0] > 0.7 and ind[0].max() < 0.1
    only_1 = attention_patterns(model, tokens, layers=[1])
    torch.testing.assert_close(only_1[:, 0], patterns[:, 1])


def test_bad_input(unchecked):
    tokens = torch.tensor([[1, 2, 3, 4]])
    p = _one_hot([0, 0, 1, 2])
    with pytest.raises(InvalidArgumentError, match="unknown head score 'copy'; valid: 'previous-token'"):
        head_scores(p, tokens, "copy")
    with pytest.raises(InvalidArgumentError, match="no query of these prompts has a induction target"):
        head_scores(p, tokens, "induction")
    with unchecked():
        with pytest.raises(ShapeMismatchError, match=r"tokens \(1, 3\) do not match patterns of 1 prompts x 4"):
            head_scores(p, tokens[:, :3], "previous-token")
    with pytest.raises(InvalidArgumentError, match="query positions must be in -4..3"):
        attention_to(p, 4, 0)
    model = zoo.load("induction-2l")
    with pytest.raises(InvalidArgumentError, match="layers must be a non-empty list of layer indices 0..1"):
        attention_patterns(model, tokens, layers=[2])


def test_attention_beside_effect_names_the_disagreements(unchecked):
    from mechpatch.attention import attention_effect_figure, attention_vs_effect

    attention = torch.tensor([[0.9, 0.0, 0.5], [0.05, 0.6, 0.0]])
    effect = torch.tensor([[0.5, 0.4, 0.01], [0.0, -0.3, 0.02]])
    t = attention_vs_effect(attention, effect, top=3)
    kinds = dict(zip(t["head"], t["disagreement"]))
    assert kinds["L0H0"] == "" and kinds["L1H1"] == ""  # attends and matters (a negative effect matters too)
    assert kinds["L0H1"] == "effect without attention" and kinds["L0H2"] == "attention without effect"
    assert list(t["head"])[:3] == ["L0H0", "L0H1", "L1H1"]  # by |effect|
    assert len(attention_effect_figure(t).data) == 3
    with unchecked(), pytest.raises(ShapeMismatchError, match="must both be"):
        attention_vs_effect(attention, effect.T)
