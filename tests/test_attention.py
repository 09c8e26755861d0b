"""Head scores from cached attention patterns: exact on hand-made patterns, and on the bundled induction model they
find the circuit ACDC finds there (previous-token head L0H2 into the induction head L1H0's keys)."""

import json
import math

import pytest
import torch

from mechpatch import zoo
from mechpatch.attention import attention_patterns, attention_to, attention_view, attention_vs_effect, head_scores
from mechpatch.errors import InvalidArgumentError, ShapeMismatchError, SiteOutOfRangeError


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
    with pytest.raises(SiteOutOfRangeError, match=r"query 4 is outside the prompt of 4 tokens \(valid: 0..3"):
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


_P = _one_hot([0, 0, 1, 2])
_TOKENS = torch.tensor([[1, 2, 3, 4]])
_PATTERNS = r"patterns must be a float tensor \[prompt, layer, head, query, key\]"


@pytest.mark.parametrize("call, error, match", [
    (lambda: head_scores(_P, _TOKENS.tolist(), "previous-token"), ShapeMismatchError,
     r"tokens must be an integer tensor \[prompt, pos\] of token ids .*; got list"),
    (lambda: head_scores(_P, _TOKENS.float(), "previous-token"), ShapeMismatchError, "tokens must be an integer tensor"),
    (lambda: head_scores(_P[0], _TOKENS, "previous-token"), ShapeMismatchError, _PATTERNS),
    (lambda: head_scores(_P.tolist(), _TOKENS, "previous-token"), ShapeMismatchError, _PATTERNS + ".*; got list"),
    (lambda: attention_to(_P, True, 0), InvalidArgumentError, "query True is not an int"),
    (lambda: attention_to(_P, 0, torch.tensor([True])), InvalidArgumentError, "key True is not an int"),
    (lambda: attention_to(_P, 1.0, 0), InvalidArgumentError, "query 1.0 is not an int"),
    (lambda: attention_to(_P, 0, torch.tensor([1.0])), InvalidArgumentError, "key 1.0 is not an int"),
    (lambda: attention_to(_P[0], -1, 0), ShapeMismatchError, _PATTERNS),
    (lambda: attention_to(_P, -5, 0), SiteOutOfRangeError, r"query -5 is outside the prompt of 4 tokens"),
    (lambda: attention_to(_P, 0, torch.tensor([1, 2])), ShapeMismatchError,
     r"key must be an int or an integer tensor \[prompt\] \(1 here\)"),
])
def test_head_scores_and_attention_to_refuse_bad_input(call, error, match, unchecked):
    with unchecked(), pytest.raises(error, match=match):
        call()


def _with(value, *where):
    t = torch.full((2, 3), 0.5)
    for l, h in where:
        t[l, h] = value
    return t


_A = _with(0.5)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(effect=_with(math.nan, (0, 1))), InvalidArgumentError,
     r"effect has non-finite values \(NaN or inf\) at 1 head\(s\): 'L0H1'"),
    (dict(effect=_with(math.inf, (0, 1), (1, 2))), InvalidArgumentError, "effect has non-finite .* 'L0H1', 'L1H2'"),
    (dict(attention=_with(math.nan, (1, 0))), InvalidArgumentError, "attention has non-finite .* 'L1H0'"),
    (dict(top=0), InvalidArgumentError, "top must be a positive int"),
    (dict(top=-2), InvalidArgumentError, "top must be a positive int"),
    (dict(top=True), InvalidArgumentError, "top must be a positive int"),
    (dict(top=2.5), InvalidArgumentError, "top must be a positive int"),
    (dict(attends=math.nan), InvalidArgumentError, "attends must be a finite number"),
    (dict(matters="0.1"), InvalidArgumentError, "matters must be a finite number"),
    (dict(effect=_A.tolist()), ShapeMismatchError, r"effect \(list\) must both be tensors \[layer, head\]"),
])
def test_attention_vs_effect_refuses_non_finite_effects_and_bad_options(kwargs, error, match, unchecked):
    args = {"attention": _A, "effect": _with(0.2), **kwargs}
    with unchecked(), pytest.raises(error, match=match):
        attention_vs_effect(**args)


def _meta(view) -> dict:
    """The view's embedded JSON, parsed as strictly as the page's JSON.parse does (no NaN or Infinity)."""
    text = view.html.split('id="mp-meta">', 1)[1].split("</script>", 1)[0]
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"the page's JSON holds {c}, which JSON.parse refuses"))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(scores=_with(math.nan, (0, 1))), InvalidArgumentError,
     r"scores has non-finite values \(NaN or inf\) at 1 head\(s\): 'L0H1'"),
    (dict(scores=_with(-math.inf, (1, 2)), layers=[4, 7]), InvalidArgumentError, "scores has non-finite .* 'L7H2'"),
    (dict(patterns=torch.full((1, 2, 3, 4, 4), math.nan)), InvalidArgumentError, "patterns hold non-finite weights"),
    (dict(scores=torch.zeros(3, 2)), ShapeMismatchError, r"scores must be a tensor \[layer, head\] = \(2, 3\)"),
    (dict(layers=["0", "1"]), InvalidArgumentError, "layers must name the patterns' layers by int index"),
    (dict(layers=[True, False]), InvalidArgumentError, "layers must name the patterns' layers by int index"),
    (dict(tokens=torch.zeros(1, 4)), ShapeMismatchError, "tokens must hold 1 prompts of 4 token strings"),
    (dict(patterns=torch.zeros(2, 3, 4, 4)), ShapeMismatchError, _PATTERNS),
])
def test_attention_view_refuses_non_finite_scores_naming_the_heads(kwargs, error, match, unchecked):
    args = {"patterns": torch.full((1, 2, 3, 4, 4), 0.25), "tokens": [["a", "b", "c", "d"]], **kwargs}
    with unchecked(), pytest.raises(error, match=match):
        attention_view(**args)


def test_attention_views_json_is_strict():
    scores = torch.tensor([[0.1, -0.2, 0.3], [0.0, 1.0, 2.0]])
    meta = _meta(attention_view(torch.full((1, 2, 3, 4, 4), 0.25), [["a", "b", "c", "</script>"]], scores=scores,
                                layers=[4, 7]))
    assert meta["layers"] == [4, 7] and meta["scores"] == scores.double().tolist() and meta["score_max"] == 2.0
    assert meta["tokens"] == [["a", "b", "c", "</script>"]]
