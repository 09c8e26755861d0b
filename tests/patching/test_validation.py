"""Bad arguments to the patching API get typed errors (mechpatch.errors) that name what was wrong and the
valid choices, before any forward pass; positions never wrap around; results keep the model's precision."""

import math

import pytest
import torch

from mechpatch.errors import (
    EmptyInputError,
    InvalidArgumentError,
    ShapeMismatchError,
    SiteOutOfRangeError,
)
from mechpatch.model import load_model
from mechpatch.patching import Grid, Interpolate, LogitDiff, make_grid, run_patches, sweep
from mechpatch.patching.metrics import TokenLogProb
from mechpatch.patching.paths import path_patch
from mechpatch.patching.plan import _mask_index
from mechpatch.prompts import PromptPair
from mechpatch.sites import Head, Mlp, Query, Resid
from tests.conftest import _gpt2_hf, native_config, perturb


def _pair(model, n=2, seq=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, model.spec.d_vocab, (n, seq), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 1) % model.spec.d_vocab
    answers = torch.randint(1, model.spec.d_vocab, (n, 2), generator=g)
    return PromptPair(clean, corrupted, answers)


# ----------------------------------------------------------------------------- positions never wrap around


@pytest.mark.parametrize("positions, bad", [([50], 50), ([0, 1, 99], 99), ([-8], -8), ([7], 7)])
def test_sweep_positions_outside_the_prompt_are_refused(gpt2, no_forward, positions, bad):
    pair = _pair(gpt2)  # 7 tokens: positions=[50] used to run as position 1, labelled "1"
    no_forward(gpt2)
    with pytest.raises(SiteOutOfRangeError, match=rf"position {bad} is outside the prompt of 7 tokens "
                                                  r"\(valid: 0\.\.6, or -7\.\.-1 from the end\)"):
        sweep(gpt2, pair, "resid_pre", metric="logit_diff", positions=positions)


def test_negative_positions_count_from_the_end_and_are_labelled_by_their_index(gpt2):
    grid = make_grid(gpt2, "resid_pre", 7, positions=[0, -1, -3])
    assert grid.labels[1] == ("0", "6", "4")
    assert [c[0].pos for c in grid.cells[:3]] == [(0,), (6,), (4,)]
    pair = _pair(gpt2)
    a = sweep(gpt2, pair, "resid_pre", metric="logit_diff", positions=[-1, -3])
    b = sweep(gpt2, pair, "resid_pre", metric="logit_diff", positions=[6, 4])
    assert a.labels == b.labels
    assert torch.equal(a.values, b.values)  # the same patches: the same computation


@pytest.mark.parametrize("positions, match", [([1, 1], r"1 \(given as 1 and 1\)"), ([6, -1], r"6 \(given as 6 and -1\)")])
def test_duplicate_positions_are_refused(gpt2, no_forward, positions, match):
    no_forward(gpt2)
    with pytest.raises(InvalidArgumentError, match=match):
        sweep(gpt2, _pair(gpt2), "head", metric="logit_diff", by_position=True, positions=positions)


def test_sweep_layers_are_checked(gpt2, no_forward):
    no_forward(gpt2)
    pair = _pair(gpt2)
    with pytest.raises(InvalidArgumentError, match=r"layers \[1\] are given more than once"):
        sweep(gpt2, pair, "head", metric="logit_diff", layers=[1, 0, 1])
    with pytest.raises(SiteOutOfRangeError, match=r"layer 5 is out of range; the model has 2 layers \(valid: 0\.\.1\)"):
        sweep(gpt2, pair, "resid_pre", metric="logit_diff", layers=[5])
    with pytest.raises(EmptyInputError, match="positions is empty"):
        sweep(gpt2, pair, "resid_pre", metric="logit_diff", positions=[])
    with pytest.raises(InvalidArgumentError, match="shape a named sweep kind"):
        sweep(gpt2, pair, [Head(0, 0)], metric="logit_diff", positions=[1])


def test_plan_and_hook_points_do_not_wrap_positions(gpt2):
    """A hook point made without a prompt length is checked when it is indexed, not taken modulo the length."""
    point = gpt2.hook_point(Head(0, 1, pos=9))
    with pytest.raises(SiteOutOfRangeError, match="position 9 is outside the prompt of 7 tokens"):
        _mask_index(point, 7)
    with pytest.raises(SiteOutOfRangeError, match="position 9 is outside the prompt of 7 tokens"):
        point.index(7)
    assert _mask_index(gpt2.hook_point(Head(0, 1, pos=-1)), 7)[0].tolist() == [6]


def test_metric_positions_do_not_wrap(gpt2, no_forward):
    pair = _pair(gpt2)
    no_forward(gpt2)
    metric = LogitDiff(answers=pair.answers, positions=(50,))
    with pytest.raises(SiteOutOfRangeError, match=r"metric 'logit_diff' position 50 is outside the prompt of 7"):
        run_patches(gpt2, pair.corrupted, [Head(0, 0)], metric=metric, source=pair.clean)
    with pytest.raises(SiteOutOfRangeError, match=r"metric 'logit_diff' position 50"):
        path_patch(gpt2, pair.corrupted, [Head(0, 0)], receivers=[Query(1, 0, pos=-1)], metric=metric,
                   source=pair.clean)
    with pytest.raises(SiteOutOfRangeError, match=r"metric 'token_logprob' position 9"):
        TokenLogProb(positions=(9,), tokens=pair.clean).compute(torch.zeros(2, 1, 100), torch.arange(2))


def test_attribution_positions_do_not_wrap(gpt2, no_forward):
    from mechpatch.attribution.nodes import atp

    pair = _pair(gpt2)
    no_forward(gpt2)
    with pytest.raises(SiteOutOfRangeError, match=r"position 9 is outside the prompt of 7 tokens"):
        atp(gpt2, pair.corrupted, [Head(0, 0, pos=9)], metric="logit_diff", source=pair.clean, answers=pair.answers)
    with pytest.raises(SiteOutOfRangeError, match=r"metric 'logit_diff' position 7"):
        atp(gpt2, pair.corrupted, [Head(0, 0)], metric=LogitDiff(positions=(7,)), source=pair.clean,
            answers=pair.answers)


# ----------------------------------------------------------------------------- typed errors, before any work


def test_bad_choices_name_the_valid_ones(gpt2, no_forward):
    pair = _pair(gpt2)
    no_forward(gpt2)
    with pytest.raises(InvalidArgumentError, match="unknown direction 'denoising'; valid: 'denoise', 'noise'"):
        sweep(gpt2, pair, "head", metric="logit_diff", direction="denoising")
    for call in (lambda m: sweep(gpt2, pair, "head", metric="logit_diff", method=m),
                 lambda m: run_patches(gpt2, pair.corrupted, [Head(0, 0)], metric="logit_diff", source=pair.clean,
                                       answers=pair.answers, method=m)):
        with pytest.raises(InvalidArgumentError,
                           match="unknown method 'fastest'; valid: 'auto', 'fast', 'hooks', 'reference'"):
            call("fastest")
    with pytest.raises(InvalidArgumentError, match="clean must be 'source', 'base' or None"):
        run_patches(gpt2, pair.corrupted, [Head(0, 0)], metric="kl_div", source=pair.clean, clean="clean")


@pytest.mark.parametrize("batch_size", [0, -3, True])
def test_batch_size_must_be_a_positive_int(gpt2, no_forward, batch_size):
    pair = _pair(gpt2)
    no_forward(gpt2)
    with pytest.raises(InvalidArgumentError, match="batch_size must be a positive int or None"):
        sweep(gpt2, pair, "head", metric="logit_diff", batch_size=batch_size)
    with pytest.raises(InvalidArgumentError, match="batch_size must be a positive int"):
        path_patch(gpt2, pair.corrupted, [Head(0, 0)], receivers="logits", metric="logit_diff", source=pair.clean,
                   answers=pair.answers, batch_size=batch_size)


@pytest.mark.parametrize("budget", ["lots", "2 parsecs", "0", "0.1", "-1GB", "...", 0, -5])
def test_memory_budget_is_checked_before_running(gpt2, no_forward, budget):
    pair = _pair(gpt2)
    no_forward(gpt2)
    with pytest.raises(InvalidArgumentError, match="memory budget"):
        sweep(gpt2, pair, "head", metric="logit_diff", memory_budget=budget)


@pytest.mark.parametrize("alpha", [2.0, -0.1, 1.0001, float("nan"), float("inf"), -float("inf")])
def test_interpolate_alpha_is_a_finite_number_in_0_1(alpha):
    with pytest.raises(InvalidArgumentError, match=r"Interpolate alpha must be"):
        Interpolate(alpha)


def test_interpolate_extrapolates_only_when_asked():
    assert Interpolate(0.0).alpha == 0 and Interpolate(1.0).alpha == 1
    assert Interpolate(-1e-3, extrapolate=True).alpha == -1e-3  # e.g. a central finite difference
    with pytest.raises(InvalidArgumentError, match="finite"):
        Interpolate(float("nan"), extrapolate=True)
    with pytest.raises(InvalidArgumentError, match="extrapolate=True"):
        Interpolate(1.5)


def test_grid_shape_errors_are_typed():
    with pytest.raises(ShapeMismatchError, match=r"grid of shape \(2,\) needs 2 cells, got 1"):
        Grid(((Head(0, 0),),), (2,), ("patch",), (("a", "b"),))
    with pytest.raises(ShapeMismatchError, match="one axis name and one label list per dimension"):
        Grid(((Head(0, 0),),), (1,), (), (("a",),))


def test_path_patch_empty_senders_and_receivers(gpt2, no_forward):
    pair = _pair(gpt2)
    no_forward(gpt2)
    with pytest.raises(EmptyInputError, match="no sender sets"):
        path_patch(gpt2, pair.corrupted, [], receivers="logits", metric="logit_diff", source=pair.clean,
                   answers=pair.answers)
    with pytest.raises(EmptyInputError, match="no receivers"):
        path_patch(gpt2, pair.corrupted, [Head(0, 0)], receivers=[], metric="logit_diff", source=pair.clean,
                   answers=pair.answers)


# ----------------------------------------------------------------------------- the model's precision


@pytest.fixture(scope="module")
def gpt2_f64(tokenizer):
    return load_model(_gpt2_hf(), tokenizer=tokenizer, device="cpu", dtype="float64", name="gpt2-f64")


@pytest.fixture(scope="module")
def native_f64():
    model = load_model(native_config(attn_only=False, d_mlp=128), device="cpu", dtype="float64", name="native-f64")
    perturb(model.bridge, 7)
    return model


def test_value_dtype():
    from mechpatch.patching.metrics import value_dtype

    assert value_dtype(torch.float64) == torch.float64
    assert value_dtype(torch.float32) == value_dtype(torch.float16) == value_dtype(torch.bfloat16) == torch.float32


@pytest.mark.parametrize("metric", ["logit_diff", "prob_diff", "kl_div", "loss"])
@pytest.mark.parametrize("method", ["fast", "hooks", "reference"])
def test_float64_models_give_float64_results(gpt2_f64, method, metric):
    pair = _pair(gpt2_f64)
    res = sweep(gpt2_f64, pair, "head", metric=metric, method=method)
    assert res.values.dtype == res.clean.dtype == res.corrupted.dtype == torch.float64
    # exact float64 arithmetic: the methods agree far below float32's resolution (~1e-7 relative)
    ref = sweep(gpt2_f64, pair, "head", metric=metric, method="reference")
    torch.testing.assert_close(res.values, ref.values, atol=1e-10, rtol=1e-10)


def test_float64_run_patches_and_path_patch(native_f64):
    pair = _pair(native_f64, seed=4)
    run = run_patches(native_f64, pair.corrupted, [Head(0, 1), Mlp(1), Resid(1, pos=2)], metric="logit_diff",
                      source=pair.clean, answers=pair.answers)
    assert run.values.dtype == run.base_values.dtype == run.source_values.dtype == torch.float64
    senders = [Head(0, 1), [Head(0, 0), Mlp(0)], Head(1, 2)]
    runs = {}
    for method in ("fast", "hooks"):
        for receivers in ("logits", [Query(1, 3, pos=-1)]):
            pp = path_patch(native_f64, pair.corrupted, senders, receivers=receivers, metric="logit_diff",
                            source=pair.clean, answers=pair.answers, method=method)
            assert pp.values.dtype == pp.base_values.dtype == torch.float64
            runs[method, str(receivers)] = pp.values
    # the two methods agree far below float32's resolution
    for receivers in ("logits", str([Query(1, 3, pos=-1)])):
        torch.testing.assert_close(runs["fast", receivers], runs["hooks", receivers], atol=1e-10, rtol=1e-10)


def test_float32_models_still_give_float32(gpt2):
    pair = _pair(gpt2)
    res = sweep(gpt2, pair, "head", metric="logit_diff")
    assert res.values.dtype == res.clean.dtype == torch.float32


def test_float64_attribution(gpt2_f64):
    from mechpatch.attribution.edges import edge_attribution
    from mechpatch.attribution.nodes import atp

    pair = _pair(gpt2_f64)
    run = atp(gpt2_f64, pair.corrupted, [Head(0, 0), Head(1, 1)], metric="logit_diff", source=pair.clean,
              answers=pair.answers, grad_drop=True)
    assert run.estimates.dtype == run.scores.dtype == run.dropped.dtype == run.base_values.dtype == torch.float64
    eap = edge_attribution(gpt2_f64, pair.clean, metric="logit_diff", source=pair.corrupted, answers=pair.answers)
    assert eap.scores.dtype == eap.base_values.dtype == torch.float64
    assert math.isfinite(float(eap.scores.abs().sum()))


def test_an_activation_the_fast_path_lacks_falls_back_to_hooks():
    """solu_ln (a native TransformerLens activation) made fast.resolve raise a bare ValueError, so even
    method="auto" failed; now "auto" runs on the bridge's hooks and "fast" says why it cannot."""
    from tests.conftest import native_model
    from mechpatch.patching.fast import FastPathUnavailable

    model = native_model(3, "solu-ln", attn_only=False, d_mlp=64, act_fn="solu_ln")
    pair = _pair(model)
    run = run_patches(model, pair.corrupted, [Head(0, 1), Mlp(1)], metric="logit_diff", source=pair.clean,
                      answers=pair.answers)
    assert run.method == "hooks"
    with pytest.raises(FastPathUnavailable, match="unsupported act_fn 'solu_ln'"):
        run_patches(model, pair.corrupted, [Head(0, 1)], metric="logit_diff", source=pair.clean, answers=pair.answers,
                    method="fast")


def test_positions_without_a_position_axis_are_refused_not_ignored(gpt2, no_forward):
    """sweep(model, pair, "head", positions=[3]) ran every head over all positions, silently."""
    no_forward(gpt2)
    pair = _pair(gpt2)
    with pytest.raises(InvalidArgumentError, match=r"positions=\[3\] would be ignored: a 'head' sweep .*by_position=True"):
        sweep(gpt2, pair, "head", metric="logit_diff", positions=[3])
    with pytest.raises(InvalidArgumentError, match=r"'resid_pre' sweep with by_position=False has no position axis"):
        sweep(gpt2, pair, "resid_pre", metric="logit_diff", by_position=False, positions=[3])
    with pytest.raises(InvalidArgumentError, match="'neuron' sweep"):
        sweep(gpt2, pair, "neuron", metric="logit_diff", positions=[3])
    assert make_grid(gpt2, "q", 7, by_position=True, positions=[3]).shape == (2, 4, 1)
    # make_grid itself leaves them unused: a sweep config's one positions list shapes each kind that has the axis
    assert make_grid(gpt2, "head", 7, positions=[3]).shape == (2, 4)


# ----------------------------------------------------------------------------- answers, metrics, site forms (audit)


@pytest.mark.parametrize("answers, phrase", [
    (torch.tensor([[-1, 3], [4, 5]]), r"answers ids must be in 0\.\.99 \(the vocabulary\); got -1\.\.5"),
    (torch.tensor([[150, 3], [4, 5]]), r"answers ids must be in 0\.\.99"),
    (torch.tensor([[1, 3], [4, 5], [6, 7]]), r"answers must be \[n_prompts=2, n_answers\]; got shape \(3, 2\)"),
    (torch.tensor([[1.0, 3.0], [4.0, 5.0]]), r"answers must be integer token ids"),
])
def test_answers_outside_the_vocabulary_or_the_prompts_are_refused_by_every_entry_point(gpt2, no_forward, unchecked,
                                                                                          answers, phrase):
    """An answer id of -1 used to read the last vocabulary entry (and extra rows were ignored), in every method."""
    from mechpatch.attribution import atp
    from mechpatch.circuit.edges import edge_patch

    pair = _pair(gpt2)
    no_forward(gpt2)
    calls = [
        lambda: run_patches(gpt2, pair.corrupted, [Head(0, 0)], metric="logit_diff", source=pair.clean,
                            answers=answers),
        lambda: path_patch(gpt2, pair.corrupted, [Head(0, 0)], receivers="logits", metric="logit_diff",
                           source=pair.clean, answers=answers),
        lambda: atp(gpt2, pair.corrupted, [Head(0, 0)], metric="logit_diff", source=pair.clean, answers=answers),
        lambda: edge_patch(gpt2, pair.corrupted, [[("L0H0", "logits")]], metric="logit_diff", source=pair.clean,
                           answers=answers),
        lambda: run_patches(gpt2, pair.corrupted, [Head(0, 0)], metric=LogitDiff(answers=answers), source=pair.clean),
    ]
    with unchecked():
        for call in calls:
            with pytest.raises(ShapeMismatchError, match=phrase):
                call()


def test_answer_words_outside_a_word_level_vocabulary_are_refused(gpt2):
    from mechpatch.errors import TokenizerError
    from mechpatch.prompts import make_pair

    with pytest.raises(TokenizerError, match=r"'Zebra' is not in the tokenizer's vocabulary"):
        make_pair(gpt2, ["When Mary and John"], ["When Alice and John"], answers=[["Zebra", "John"]])
    assert make_pair(gpt2, ["When Mary and John"], ["When Alice and John"], answers=[["Mary", "John"]]).answers.shape \
        == (1, 2)


@pytest.mark.parametrize("metric", [LogitDiff, lambda **kw: __import__("mechpatch.patching.metrics").patching
                                    .metrics.ProbDiff(**kw)])
@pytest.mark.parametrize("positions", [(2, 5), ()])
def test_answer_metrics_read_one_position(metric, positions):
    """LogitDiff(positions=(2, 5)) used to read position 5 only; positions=() failed inside the metric."""
    from mechpatch.patching.metrics import MetricError

    with pytest.raises(MetricError, match="reads the answer at one position"):
        metric(positions=positions)
    assert metric(positions=(2,)).positions == (2,)


def test_head_notation_for_keys_is_refused_where_heads_share_keys(gqa, gpt2):
    """'L0H1.k' on a GQA model used to patch key/value group 1 (other heads' keys) without a word."""
    from mechpatch.errors import UnsupportedSiteError
    from mechpatch.sites import Key, parse_site, select

    per = gqa.spec.n_heads // gqa.spec.n_kv_heads
    with pytest.raises(UnsupportedSiteError, match=rf"head {per} reads group 1\), so they are named by group: "
                                                   r"'L0G1\.k'"):
        select(gqa.spec, f"L0H{per}.k")
    with pytest.raises(UnsupportedSiteError, match="named by group"):
        gqa.hook_point(parse_site(f"L0H{per}.v"))
    assert select(gqa.spec, "L0G1.k") == [Key(0, 1)]
    assert select(gpt2.spec, "L0H1.k") == [Key(0, 1)]  # one group per head: the same site


@pytest.mark.parametrize("pos", [[1.5], torch.tensor([1.9]), "12", "END", True])
def test_site_positions_are_not_coerced(pos, unchecked):
    """pos=[1.5] used to become (1,), pos="12" (1, 2); pos="END" was a raw ValueError."""
    from mechpatch.errors import InvalidTypeError

    with unchecked(), pytest.raises(InvalidTypeError, match="pos must be an int, a sequence of ints or None"):
        Head(1, 0, pos=pos)


def test_site_positions_take_numpy_and_torch_integers():
    import numpy as np

    assert Head(1, 0, pos=np.int64(3)).pos == (3,)
    assert Head(1, 0, pos=torch.tensor([1, 2])).pos == (1, 2)
    assert Head(1, 0, pos=[np.int64(2), 4]).pos == (2, 4)


def test_sites_may_be_given_as_strings_or_one_site_everywhere(gpt2):
    """A list of site strings used to be read character by character ("cannot parse site 'L'"), and one Site was
    'not iterable'. Both now mean what they say, and give the same numbers as the Site objects."""
    from mechpatch.cache import cache_activations

    pair = _pair(gpt2)
    kw = dict(metric="logit_diff", source=pair.clean, answers=pair.answers)
    want = run_patches(gpt2, pair.corrupted, [[Head(1, 0)]], **kw).values
    for variants in (["L1H0"], "L1H0", Head(1, 0), [Head(1, 0)]):
        assert torch.equal(run_patches(gpt2, pair.corrupted, variants, **kw).values, want)
    both = sweep(gpt2, pair, ["L1H0", "L0H1"], metric="logit_diff")
    assert both.labels[0] == ("L1H0", "L0H1")
    assert torch.equal(sweep(gpt2, pair, Head(1, 0), metric="logit_diff").values,
                       sweep(gpt2, pair, [Head(1, 0)], metric="logit_diff").values)
    together = run_patches(gpt2, pair.corrupted, [["L1H*"]], **kw).values  # a wildcard is one set
    assert torch.equal(together, run_patches(gpt2, pair.corrupted, [[Head(1, h) for h in range(gpt2.spec.n_heads)]],
                                             **kw).values)
    path_kw = dict(metric="logit_diff", source=pair.clean, answers=pair.answers)
    assert torch.equal(path_patch(gpt2, pair.corrupted, Head(0, 1), receivers="L1H0.q", **path_kw).values,
                       path_patch(gpt2, pair.corrupted, [[Head(0, 1)]], receivers=[Query(1, 0)], **path_kw).values)
    assert cache_activations(gpt2, pair.clean, "L1H0").sites == cache_activations(gpt2, pair.clean, [Head(1, 0)]).sites


def test_bad_site_forms_and_sweep_flags_are_refused(gpt2, no_forward, unchecked):
    from mechpatch.errors import InvalidTypeError, UnsupportedSiteError

    pair = _pair(gpt2)
    no_forward(gpt2)
    kw = dict(metric="logit_diff", source=pair.clean, answers=pair.answers)
    with unchecked():
        with pytest.raises(InvalidTypeError, match="variants must be a site, a site string, or a list"):
            run_patches(gpt2, pair.corrupted, 3, **kw)
        with pytest.raises(EmptyInputError, match="no sites selected"):
            run_patches(gpt2, pair.corrupted, [[]], **kw)
        with pytest.raises(InvalidTypeError, match="by_position must be True, False or None; got 'yes'"):
            sweep(gpt2, pair, "head", by_position="yes", metric="logit_diff")
        with pytest.raises(InvalidArgumentError, match="'neuron' sweep is layer x neuron"):
            sweep(gpt2, pair, "neuron", by_position=True, metric="logit_diff")
        with pytest.raises(UnsupportedSiteError, match="receivers must be 'logits' or Query/Key/Value sites"):
            path_patch(gpt2, pair.corrupted, [Head(0, 0)], receivers="logit", **kw)
        with pytest.raises(InvalidArgumentError, match="path patching needs source="):
            path_patch(gpt2, pair.corrupted, [Head(0, 0)], receivers="logits", metric="logit_diff", source=None,
                       answers=pair.answers)


def test_selection_takes_the_model_and_refuses_what_is_not_a_site(gpt2, unchecked):
    """select(model, ...) used to fail with "'HookedModel' object has no attribute 'n_layers'"; select(spec, 3) and
    sweep(..., layers=1) / positions=3 were bare TypeErrors."""
    from mechpatch.errors import InvalidTypeError
    from mechpatch.sites import heads, layers, select

    assert select(gpt2, "L1H*") == select(gpt2.spec, "L1H*")
    assert heads(gpt2) == heads(gpt2.spec) and layers(gpt2) == layers(gpt2.spec)
    pair = _pair(gpt2)
    with unchecked():
        with pytest.raises(InvalidTypeError, match="a site spec is a site, its label"):
            select(gpt2.spec, 3)
        with pytest.raises(InvalidTypeError, match="expected a model or its ModelSpec"):
            select("gpt2", "L0H0")
        with pytest.raises(InvalidTypeError, match="layers must be a list of layer indices"):
            sweep(gpt2, pair, "resid_pre", metric="logit_diff", layers=1)
        with pytest.raises(InvalidTypeError, match="positions must be a list of token positions"):
            sweep(gpt2, pair, "resid_pre", metric="logit_diff", positions=3)
