"""Bad arguments to attribution (verify, agreement, atp, attribute) and circuit discovery (acdc, discover,
faithfulness_curve) get typed errors (mechpatch.errors) naming the argument, what was given and what is valid,
before any forward pass; truthy strings are never taken for flags."""

import pytest
import torch

from mechpatch.attribution import agreement, attribute
from mechpatch.attribution.base import AttributionError
from mechpatch.attribution.nodes import atp
from mechpatch.attribution.verify import verify
from mechpatch.circuit.discovery import acdc, discover
from mechpatch.circuit.edges import EdgeError
from mechpatch.circuit.faithfulness import faithfulness_curve
from mechpatch.errors import EmptyInputError, InvalidArgumentError, InvalidTypeError, MemoryBudgetError
from mechpatch.prompts import random_pair
from mechpatch.sites import Head
from mechpatch.zoo.architectures import random_model


@pytest.fixture(scope="module")
def model():
    return random_model("gpt2", "tiny")


@pytest.fixture(scope="module")
def pair(model):
    return random_pair(model, n=3, seq=7)


@pytest.fixture(scope="module")
def result(model, pair):
    return attribute(model, pair, "head", metric="logit_diff")


# ----------------------------------------------------------------------------- verify


@pytest.mark.parametrize("kwargs, error, match", [
    ({"budget": -1}, AttributionError, r"budget must be a positive int .*got -1"),
    ({"budget": 0}, AttributionError, r"budget must be a positive int .*got 0"),
    ({"budget": 2.5}, AttributionError, r"budget must be a positive int .*got 2\.5"),
    ({"n_random": -1}, AttributionError, r"n_random must be an int >= 0 .*got -1"),
    ({"threshold": float("nan")}, AttributionError, r"threshold must be a finite number >= 0 .*got nan"),
    ({"threshold": -0.5}, AttributionError, r"threshold must be a finite number >= 0 .*got -0\.5"),
    ({"relative_threshold": float("inf")}, AttributionError, r"relative_threshold must be a finite number"),
    ({"confidence": 1.0}, AttributionError, r"confidence must be a number in \(0, 1\); got 1\.0"),
    ({"confidence": "high"}, AttributionError, r"confidence must be a number in \(0, 1\); got 'high'"),
    ({"batch_size": 0}, AttributionError, r"batch_size must be a positive int; got 0"),
    ({"method": "fastest"}, AttributionError, r"unknown method 'fastest'; valid: 'auto', 'fast'"),
])
def test_verify_refuses_bad_options(model, pair, result, no_forward, unchecked, kwargs, error, match):
    no_forward(model)
    with unchecked(), pytest.raises(error, match=match):
        verify(model, pair, result, **kwargs)


@pytest.mark.parametrize("args, match", [
    (lambda pair, result: (pair, "est"), r"result must be an AttributionResult from attribute\(\); got str"),
    (lambda pair, result: ("prompts", result), r"pair must be a PromptPair .*got str"),
])
def test_verify_refuses_wrong_types(model, pair, result, no_forward, unchecked, args, match):
    no_forward(model)
    with unchecked(), pytest.raises(InvalidTypeError, match=match):
        verify(model, *args(pair, result))


# ----------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("k", [0, -3, 2.0, True, "5"])
def test_agreement_refuses_k_that_is_not_a_positive_int(unchecked, k):
    with unchecked(), pytest.raises(AttributionError, match=r"k must be a positive int .*got"):
        agreement(torch.rand(5), torch.rand(5), k=k)


def test_agreement_refuses_non_tensors(unchecked):
    with unchecked(), pytest.raises(InvalidTypeError, match=r"approx must be a tensor of effects; got list"):
        agreement([0.1, 0.2], torch.rand(2))


def test_agreement_still_clips_k_to_the_items():
    assert agreement(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0]), k=10).k == 3


# ----------------------------------------------------------------------------- atp / attribute


def _atp(model, pair, **kwargs):
    return atp(model, pair.corrupted, [Head(0, 0)], metric="logit_diff", source=pair.clean, answers=pair.answers,
               **kwargs)


@pytest.mark.parametrize("budget", [10, "1KB"])
def test_atp_refuses_a_budget_too_small_for_one_row(model, pair, no_forward, budget):
    no_forward(model)
    with pytest.raises(MemoryBudgetError, match=r"cannot hold one forward\+backward pass of 1 prompt x 7 tokens: "
                                                 r"that needs about"):
        _atp(model, pair, memory_budget=budget)


def test_atp_runs_within_an_ample_budget(model, pair):
    assert _atp(model, pair, memory_budget="1GiB").estimates.shape == (1, 3)


@pytest.mark.parametrize("flag", ["qk_fix", "grad_drop"])
@pytest.mark.parametrize("value", ["no", 1, None])
def test_atp_refuses_non_bool_flags(model, pair, no_forward, unchecked, flag, value):
    no_forward(model)
    with unchecked(), pytest.raises(InvalidTypeError, match=rf"{flag} must be True or False; got {value!r}"):
        _atp(model, pair, **{flag: value})


def test_attribute_refuses_non_bool_by_position(model, pair, no_forward, unchecked):
    no_forward(model)
    with unchecked(), pytest.raises(InvalidTypeError, match=r"by_position must be True, False or None; got 'yes'"):
        attribute(model, pair, "head", metric="logit_diff", by_position="yes")


# ----------------------------------------------------------------------------- acdc / discover


@pytest.mark.parametrize("flag, value", [("lower_is_better", "yes"), ("progress", "no"), ("lower_is_better", 0)])
def test_acdc_refuses_non_bool_flags(model, pair, no_forward, unchecked, flag, value):
    no_forward(model)
    with unchecked(), pytest.raises(InvalidTypeError, match=rf"{flag} must be True, False or None; got {value!r}"):
        acdc(model, pair.clean, metric="kl_div", source=pair.corrupted, **{flag: value})


def _discover(name, model, pair, **kwargs):
    return discover(name, model, pair.clean, metric="logit_diff", source=pair.corrupted, answers=pair.answers,
                    **kwargs)


@pytest.mark.parametrize("name", ["eap", "eap-ig"])
@pytest.mark.parametrize("kwargs, error, match", [
    ({"verify": "no"}, InvalidTypeError, r"verify must be True or False; got 'no'"),
    ({"verify": 1}, InvalidTypeError, r"verify must be True or False; got 1"),
    ({"per_position": "yes"}, InvalidTypeError, r"per_position must be True or False; got 'yes'"),
    ({"n_verify": 5}, InvalidArgumentError, r"n_verify only matters .*needs verify=True"),
    ({"n_verify": 5, "verify": False}, InvalidArgumentError, r"n_verify only matters .*needs verify=True"),
    ({"exact_batch_size": 8}, InvalidArgumentError, r"exact_batch_size only matters .*needs verify=True"),
    ({"verify": True, "n_verify": -1}, InvalidArgumentError, r"n_verify must be a positive int .*got -1"),
    ({"verify": True, "n_verify": 0}, InvalidArgumentError, r"n_verify must be a positive int .*got 0"),
    ({"verify": True, "n_verify": 2.0}, InvalidArgumentError, r"n_verify must be a positive int .*got 2\.0"),
    ({"exact_batch_size": 0}, InvalidArgumentError, r"exact_batch_size must be a positive int .*got 0"),
    ({"verify": True, "exact_batch_size": -2}, InvalidArgumentError, r"exact_batch_size must be a positive int"),
])
def test_discover_eap_options(model, pair, no_forward, unchecked, name, kwargs, error, match):
    no_forward(model)
    with unchecked(), pytest.raises(error, match=match):
        _discover(name, model, pair, **kwargs)


@pytest.mark.parametrize("name, kwargs, match", [
    ("acdc", {"taus": 0.1}, r"discover\('acdc'\): unknown option 'taus' \(did you mean 'tau'\?\); valid: .*'tau'"),
    ("acdc", {"verify": True}, r"discover\('acdc'\): unknown option 'verify'; valid: 'source'"),
    ("eap", {"top_k": 5, "stepz": 3}, r"unknown options 'top_k' \(did you mean 'top_n'\?\), 'stepz'.*valid: .*'top_n'"),
    ("eap-ig", {"n_verfy": 3}, r"'n_verfy' \(did you mean 'n_verify'\?\)"),
])
def test_discover_refuses_unknown_options(model, pair, no_forward, name, kwargs, match):
    no_forward(model)
    with pytest.raises(InvalidArgumentError, match=match):
        _discover(name, model, pair, **kwargs)


def test_discover_unknown_algorithm_suggests_a_name(model, pair, no_forward, unchecked):
    no_forward(model)
    with pytest.raises(EdgeError, match=r"unknown discovery algorithm 'acd' \(did you mean 'acdc'\?\); valid"):
        _discover("acd", model, pair)
    with unchecked(), pytest.raises(InvalidTypeError, match=r"name must be a discovery algorithm's name; got list"):
        _discover(["eap"], model, pair)


def test_discover_eap_with_verify_still_runs(model, pair):
    res = _discover("eap", model, pair, verify=True, n_verify=3, exact_batch_size=2, top_n=2)
    assert len(res.edges) <= 2 and len(res.meta["exact"]) == 3


# ----------------------------------------------------------------------------- faithfulness_curve


@pytest.mark.parametrize("scores, error, match", [
    ([("L0H0", "logits")], InvalidTypeError, r"scores must be a dict edge -> score .*got list"),
    ({}, EmptyInputError, r"scores is empty: the circuits would be an arbitrary order of edges; give a dict"),
    ({"L0H0->logits": "high"}, InvalidTypeError, r"numeric scores; got 'high' for edge 'L0H0->logits'"),
])
def test_faithfulness_curve_refuses_bad_scores(model, pair, no_forward, unchecked, scores, error, match):
    no_forward(model)
    with unchecked(), pytest.raises(error, match=match):
        faithfulness_curve(model, pair.clean, scores, metric="logit_diff", source=pair.corrupted, answers=pair.answers)


def test_faithfulness_curve_refuses_non_bool_absolute(model, pair, no_forward, unchecked):
    no_forward(model)
    with unchecked(), pytest.raises(InvalidTypeError, match=r"absolute must be True or False; got 'no'"):
        faithfulness_curve(model, pair.clean, {"L0H0->logits": 1.0}, metric="logit_diff", source=pair.corrupted,
                           answers=pair.answers, absolute="no")


def test_eap_called_directly_checks_its_verify_options(unchecked):
    """The checks of discover('eap', ...) hold for eap() / eap_ig() / edge_attribution() called directly too."""
    from mechpatch.attribution import edge_attribution
    from mechpatch.circuit.eap import eap, eap_ig
    from mechpatch.errors import InvalidArgumentError, InvalidTypeError
    from mechpatch.prompts import random_pair
    from mechpatch.zoo.architectures import random_model

    m = random_model("gpt2", "tiny")
    p = random_pair(m, n=2, seq=5)
    kw = dict(metric="logit_diff", source=p.corrupted, answers=p.answers)
    with unchecked():
        for fn in (eap, eap_ig):
            with pytest.raises(InvalidTypeError, match="verify must be True or False; got 'no'"):
                fn(m, p.clean, verify="no", **kw)
            with pytest.raises(InvalidArgumentError, match="n_verify must be a positive int"):
                fn(m, p.clean, verify=True, n_verify=0, **kw)
            with pytest.raises(InvalidArgumentError, match="exact_batch_size must be a positive int"):
                fn(m, p.clean, exact_batch_size=0, **kw)
        with pytest.raises(InvalidTypeError, match="per_position must be True or False"):
            edge_attribution(m, p.clean, per_position="yes", **kw)
