"""Input validation of results, interventions, the site cache, interactions and tasks: bad input gets a typed
mechpatch error before any work; the newly accepted forms (token lists, numpy arrays, site strings, mask lists)
give what the canonical form gives."""

import dataclasses

import numpy as np
import pytest
import torch

from mechpatch.cache import cache_activations
from mechpatch.errors import (
    EmptyInputError,
    InvalidArgumentError,
    InvalidTypeError,
    MechpatchError,
    ShapeMismatchError,
    SiteOutOfRangeError,
)
from mechpatch.interactions.basis import InteractionError
from mechpatch.interactions.results import compare
from mechpatch.interactions.run import evaluate_masks, exhaustive_interactions, find_interactions
from mechpatch.interactions.tokens import token_interactions
from mechpatch.patching import sweep
from mechpatch.patching.interventions import Interpolate, Resample
from mechpatch.patching.results import UndefinedEffectError
from mechpatch.prompts import random_pair
from mechpatch.sites import Head, heads
from mechpatch.tasks import TaskError, make_task
from mechpatch.zoo.architectures import random_model


@pytest.fixture(scope="module")
def model():
    return random_model("gpt2", "tiny")


@pytest.fixture(scope="module")
def pair(model):
    return random_pair(model, n=3, seq=7)


@pytest.fixture(scope="module")
def result(model, pair):
    return sweep(model, pair, "head", metric="logit_diff")


@pytest.fixture(scope="module")
def exhaustive(model, pair):
    return exhaustive_interactions(model, pair.clean, heads(model.spec)[:3], metric="loss")


# PatchResult


def test_normalized_equal_runs_is_typed(result):
    same = dataclasses.replace(result, corrupted=result.clean)
    with pytest.raises(UndefinedEffectError, match="same metric value") as info:
        same.normalized()
    assert isinstance(info.value, MechpatchError)
    assert isinstance(info.value, ZeroDivisionError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("index, error, phrase", [
    ((5, 0), SiteOutOfRangeError, "layer index 5 is out of range; valid: 0..1"),
    ((0, 9), SiteOutOfRangeError, "head index 9 is out of range; valid: 0..3"),
    ((-1, 0), SiteOutOfRangeError, "layer index -1 is out of range"),
    ((0, -1), SiteOutOfRangeError, "head index -1"),
    ((0,), InvalidArgumentError, "one index per grid axis"),
    ((0, 0, 0), InvalidArgumentError, "one index per grid axis"),
    ((), InvalidArgumentError, "got 0"),
])
def test_value_at_refuses(result, index, error, phrase):
    assert result.grid_shape == (2, 4)
    with pytest.raises(error, match=phrase):
        result.value_at(*index)


@pytest.mark.parametrize("index", [(0.0, 0), ("0", 0), (True, 0)])
def test_value_at_refuses_types(result, unchecked, index):
    with unchecked(), pytest.raises(InvalidTypeError, match="index must be an int"):
        result.value_at(*index)


def test_value_at_reads_the_cell(result):
    assert result.value_at(1, 3) == pytest.approx(float(result.mean()[1, 3]))


# interventions


@pytest.mark.parametrize("seed", ["a", 1.5, None, True])
def test_resample_seed_type(unchecked, seed):
    with unchecked(), pytest.raises(InvalidTypeError, match="Resample seed must be an int"):
        Resample(seed=seed)


def test_resample_seed_range():
    with pytest.raises(InvalidArgumentError, match="Resample seed must be in"):
        Resample(seed=2 ** 70)


def test_resample_seed_numpy_int(unchecked):
    with unchecked():
        iv = Resample(seed=np.int64(3))
    assert iv.seed == 3 and type(iv.seed) is int


def test_interpolate_extrapolate_flag(unchecked):
    with unchecked(), pytest.raises(InvalidTypeError, match="must be True or False"):
        Interpolate(0.5, extrapolate="no")


# SiteCache and as_tokens


def test_cache_site_strings(model, pair):
    cache = cache_activations(model, pair.clean, [Head(1, 0), Head(0, 2, pos=-1)])
    torch.testing.assert_close(cache["L1H0"], cache[Head(1, 0)])
    torch.testing.assert_close(cache["L0H2@-1"], cache[Head(0, 2, pos=-1)])
    with pytest.raises(KeyError, match="was not cached"):
        cache["L1H0@-1"]


@pytest.mark.parametrize("site, error", [(3, InvalidTypeError), (None, InvalidTypeError), ("L1.nope", MechpatchError)])
def test_cache_bad_keys(model, pair, unchecked, site, error):
    cache = cache_activations(model, pair.clean, [Head(1, 0)])
    with unchecked(), pytest.raises(error):
        cache[site]


@pytest.mark.parametrize("convert", [lambda t: t.tolist(), lambda t: t.numpy(), lambda t: t.numpy().astype(np.int32),
                                     lambda t: [tuple(r) for r in t.tolist()]])
def test_cache_token_lists_and_arrays(model, pair, unchecked, convert):
    want = cache_activations(model, pair.clean, [Head(1, 0)])
    with unchecked():
        got = cache_activations(model, convert(pair.clean), [Head(1, 0)])
    torch.testing.assert_close(got[Head(1, 0)], want[Head(1, 0)])
    assert torch.equal(got.tokens.cpu(), pair.clean.cpu())


def test_cache_flat_token_list_is_one_prompt(model, pair, unchecked):
    want = cache_activations(model, pair.clean[:1], [Head(1, 0)])
    with unchecked():
        got = cache_activations(model, pair.clean[0].tolist(), [Head(1, 0)])
    torch.testing.assert_close(got[Head(1, 0)], want[Head(1, 0)])


@pytest.mark.parametrize("prompts, error, phrase", [
    (lambda t: t.float().numpy(), InvalidTypeError, "numpy array of float32 is not token ids"),
    (lambda t: t.float().tolist(), InvalidTypeError, "element of type float"),
    (lambda t: [[True, False]], InvalidTypeError, "element of type bool"),
    (lambda t: [t[0].tolist(), t[1].tolist()[:3]], ShapeMismatchError, "different lengths"),
    (lambda t: [[0, 10 ** 6]], ShapeMismatchError, "vocabulary"),
    (lambda t: [[0, 2 ** 70]], ShapeMismatchError, "vocabulary"),
    (lambda t: 3.5, InvalidTypeError, "got float"),
])
def test_cache_bad_token_lists(model, pair, unchecked, prompts, error, phrase):
    with unchecked(), pytest.raises(error, match=phrase):
        cache_activations(model, prompts(pair.clean), [Head(1, 0)])


# interactions


@pytest.mark.parametrize("kwargs, phrase", [
    (dict(k=0), "k must be an int >= 1; got 0"),
    (dict(k=-1), "k must be an int >= 1; got -1"),
    (dict(k=1.5), "k must be an int >= 1"),
    (dict(k=True), "k must be an int >= 1"),
    (dict(order=0), "order must be an int >= 1; got 0"),
    (dict(order=-2), "order must be an int >= 1"),
])
def test_compare_refuses(exhaustive, unchecked, kwargs, phrase):
    with unchecked(), pytest.raises(InteractionError, match=phrase):
        compare(exhaustive, exhaustive, **kwargs)


def test_compare_accepts(exhaustive):
    assert compare(exhaustive, exhaustive, k=2)["topk_overlap"] == 1.0


@pytest.mark.parametrize("kwargs, phrase", [
    (dict(seed="a"), "seed must be an int; got str 'a'"),
    (dict(seed=1.5), "seed must be an int; got float"),
    (dict(seed=True), "seed must be an int"),
    (dict(holdout="0.2"), "holdout must be a fraction in"),
    (dict(holdout=True), "holdout must be a fraction in"),
    (dict(higher_is_better="no"), "higher_is_better must be True or False"),
    (dict(higher_is_better=1), "higher_is_better must be True or False"),
])
def test_find_interactions_refuses(model, pair, unchecked, kwargs, phrase):
    def forward(*args, **kw):
        raise AssertionError("the model ran before the arguments were checked")

    with unchecked(), pytest.raises(InteractionError, match=phrase):
        find_interactions(forward, pair.clean, heads(model.spec)[:3], metric="loss", n_masks=40, **kwargs)


def test_exhaustive_refuses_flag(model, pair, unchecked):
    with unchecked(), pytest.raises(InteractionError, match="higher_is_better must be True or False"):
        exhaustive_interactions(model, pair.clean, heads(model.spec)[:3], metric="loss", higher_is_better="no")


def test_evaluate_masks_empty(model, pair):
    with pytest.raises(EmptyInputError, match="masks is empty"):
        evaluate_masks(model, pair.clean, heads(model.spec)[:3], masks=torch.zeros(0, 3, dtype=torch.bool),
                       metric="loss")


@pytest.mark.parametrize("masks, error, phrase", [
    ([], EmptyInputError, "masks is empty"),
    ([[1, 0, 0]], InteractionError, "lists of True/False"),
    ([[True, False], [True]], InteractionError, "lists of True/False"),
    ([[True, False]], InteractionError, r"bool tensor \[mask, 3\]"),
    ("TFF", InteractionError, "got str"),
])
def test_evaluate_masks_bad(model, pair, unchecked, masks, error, phrase):
    with unchecked(), pytest.raises(error, match=phrase):
        evaluate_masks(model, pair.clean, heads(model.spec)[:3], masks=masks, metric="loss")


def test_evaluate_masks_list(model, pair, unchecked):
    rows = [[True, False, False], [False, True, True], [False, False, False]]
    want = evaluate_masks(model, pair.clean, heads(model.spec)[:3], masks=torch.tensor(rows), metric="loss")
    with unchecked():
        got = evaluate_masks(model, pair.clean, heads(model.spec)[:3], masks=rows, metric="loss")
    torch.testing.assert_close(got.per_prompt, want.per_prompt)


@pytest.mark.parametrize("kwargs, phrase", [
    (dict(bach_size=4), "'bach_size' \\(did you mean 'batch_size'\\?\\)"),
    (dict(holdot=0.1), "did you mean 'holdout'"),
    (dict(zzz=1), "unknown keyword argument 'zzz'; valid:"),
    (dict(exact=True, holdout=0.1), "unknown keyword argument 'holdout'"),
])
def test_token_interactions_unknown_keyword(model, pair, kwargs, phrase):
    with pytest.raises(InteractionError, match=phrase):
        token_interactions(model, pair.clean[:1], metric="loss", filler=0, **kwargs)


# tasks


@pytest.mark.parametrize("kwargs, phrase", [
    (dict(blok=3), "unknown keyword argument 'blok' \\(did you mean 'block'\\?\\); valid: 'n', 'block'"),
    (dict(blok=3, sed=1), "unknown keyword arguments 'blok' .*'sed' \\(did you mean 'seed'\\?\\)"),
    (dict(zzz=1), "unknown keyword argument 'zzz'; valid"),
])
def test_make_task_unknown_keyword(model, kwargs, phrase):
    with pytest.raises(TaskError, match=phrase):
        make_task("induction", model, **kwargs)


def test_make_task_known_keyword(model):
    task = make_task("induction", model, n=2, block=3)
    assert task is not None
