"""Probes with control tasks: selectivity separates a planted direction from lexical memorisation (Hewitt & Liang
2019), on synthetic activations whose answer is known, and on a real model's embeddings."""

import math

import pytest
import torch

from mechpatch import zoo
from mechpatch.errors import EmptyInputError, InvalidArgumentError, SiteOutOfRangeError
from mechpatch.probes import ProbeError, control_labels, fit_probe, probe_sites
from mechpatch.sites import Resid


def _planted(n=1200, d=32, n_types=300, seed=0):
    """The label is the sign of a projection on a planted direction; the types are unrelated to it."""
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    x = torch.randn(n, d, generator=g)
    return x, (x @ u > 0).long(), torch.randint(0, n_types, (n,), generator=g), u


def _lexical(n=1200, d=32, n_types=20, seed=0):
    """The activation is its type's embedding plus noise, and the label a fixed random function of the type: a probe
    decodes it perfectly by recognising types, so the control task (random labels per type) is as easy."""
    g = torch.Generator().manual_seed(seed)
    types = torch.randint(0, n_types, (n,), generator=g)
    emb = torch.randn(n_types, d, generator=g)
    label_of_type = torch.randint(0, 2, (n_types,), generator=g)
    return emb[types] + 0.1 * torch.randn(n, d, generator=g), label_of_type[types], types


@pytest.mark.parametrize("kind", ["logistic", "ridge"])
def test_a_planted_direction_is_selective_and_recovered(kind):
    x, y, types, u = _planted()
    p = fit_probe(x, y, types=types, kind=kind)
    assert p.accuracy > 0.9 and p.control_accuracy < 0.65 and p.selectivity > 0.3
    assert p.directions.shape == (1, 32) and abs(float(p.directions[0] @ u.double())) > 0.9
    assert p.n_train + p.n_test == 1200 and p.n_test == 300 and 0.4 < p.majority < 0.6


def test_lexical_memorisation_is_accurate_but_not_selective():
    x, y, types = _lexical()
    p = fit_probe(x, y, types=types)
    assert p.accuracy > 0.95 and p.control_accuracy > 0.9 and p.selectivity < 0.1


def test_the_control_task_gives_each_type_one_label_drawn_from_the_task():
    labels = torch.tensor([0] * 90 + [1] * 10)
    types = torch.arange(100) % 50
    c = control_labels(types, labels, seed=3)
    for t in range(50):
        assert c[types == t].unique().numel() == 1  # every example of a type shares its label
    assert set(c.tolist()) <= {0, 1} and torch.equal(c, control_labels(types, labels, seed=3))
    many = control_labels(torch.arange(5000), torch.tensor([0] * 4500 + [1] * 500), seed=0)
    assert 0.07 < many.double().mean() < 0.13  # the task's label frequencies (10% ones)
    assert not torch.equal(c, control_labels(types, labels, seed=4))


def test_multiclass_probe_directions_are_an_orthonormal_basis():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(900, 16, generator=g)
    y = x[:, :3].argmax(1)  # three classes, read from the first three axes
    p = fit_probe(x, y)
    assert p.classes == (0, 1, 2) and p.accuracy > 0.85 and p.control_accuracy is None and p.selectivity is None
    d = p.directions  # two directions: the prediction depends on differences of the three class weights
    assert d.shape == (2, 16)
    torch.testing.assert_close(d @ d.T, torch.eye(2, dtype=torch.float64), atol=1e-10, rtol=0)
    assert float(d[:, 3:].norm()) < 0.3 * float(d[:, :3].norm())  # the basis lives on the first three axes
    assert float((d[:, :3].sum(1)).abs().max()) < 0.2  # ... in their differences, not their sum


def test_bad_input_is_refused_before_fitting(unchecked):
    x, y, types, _ = _planted(n=40)
    with pytest.raises(ProbeError, match="unknown probe kind 'svm'; valid: 'logistic', 'ridge'"):
        fit_probe(x, y, kind="svm")
    with pytest.raises(ProbeError, match="one class"):
        fit_probe(x, torch.zeros(40, dtype=torch.long))
    with unchecked():  # as a user calls it: mechpatch's own checks, not the test suite's shape checks
        with pytest.raises(ProbeError, match="39 feature rows for 40 labels"):
            fit_probe(x[:39], y)
        with pytest.raises(ProbeError, match=r"labels must be an integer tensor \[example\]; got torch.float32"):
            fit_probe(x, y.float())
    with pytest.raises(ProbeError, match=r"test_fraction must be a number in \(0, 1\)"):
        fit_probe(x, y, test_fraction=1.0)
    with pytest.raises(ProbeError, match="3 types for 40 labels"):
        fit_probe(x, y, types=[1, 2, 3])
    with pytest.raises(ProbeError, match="leave 1 to fit"):
        fit_probe(x[:4], torch.tensor([0, 1, 0, 1]), test_fraction=0.75)


def test_probes_at_sites_of_a_model_read_the_cached_activations():
    """On the bundled induction model, the parity of the last token is decodable from its embedding (resid_pre 0):
    accurate, but exactly what the control task (a random label per token type) also learns: not selective."""
    from mechpatch.cache import cache_activations

    model = zoo.load("induction-2l")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 20, (400, 6), generator=g)  # 20 token types: every one seen in training
    labels = tokens[:, -1] % 2
    sites = [Resid(0, "pre"), Resid(1, "post")]
    sweep = probe_sites(model, tokens, sites, labels=labels, position=-1)
    assert list(sweep.probes) == ["L0.resid_pre", "L1.resid_post"]
    p = sweep.probes["L0.resid_pre"]
    assert p.accuracy > 0.9 and p.control_accuracy > 0.8 and p.selectivity < 0.15
    # the same fit on the activations cached by hand: the sweep reads position -1 of each prompt
    act = cache_activations(model, tokens, [Resid(0, "pre")])[Resid(0, "pre")][:, -1]
    again = fit_probe(act, labels, types=tokens[:, -1], site="L0.resid_pre")
    # the same activations through the same fit: bitwise identity of one computation is the point here
    assert again.accuracy == p.accuracy and again.control_accuracy == p.control_accuracy
    df = sweep.to_dataframe()
    assert list(df["site"]) == ["L0.resid_pre", "L1.resid_post"] and df["selectivity"].notna().all()
    assert len(sweep.figure().data) == 4
    with pytest.raises(ProbeError, match="3 labels for 400 prompts"):
        probe_sites(model, tokens, sites, labels=labels[:3])  # a prompt count the shape checks cannot see
    with pytest.raises(SiteOutOfRangeError, match=r"position 6 is outside the prompt of 6 tokens \(valid: 0..5"):
        probe_sites(model, tokens, sites, labels=labels, position=6)


def test_the_causal_check_removes_each_probes_directions():
    """probe_effects patches Subspace(directions, of=Zero()) at the probe's site and position: the same numbers as
    the engine called directly, and a table and figure that carry them beside the accuracies."""
    from mechpatch.patching import Zero, run_patches
    from mechpatch.patching.interventions import Subspace
    from mechpatch.probes import probe_effects
    from mechpatch.tasks import make_task

    model = zoo.load("induction-2l")
    (b,) = make_task("induction", model, n=120, block=6, seed=0).batches
    labels = b.clean[:, -2] % 2  # position -2: its prediction (of the last token) is in the loss
    sites = [Resid(0, "pre"), Resid(1, "pre")]
    sweep = probe_effects(model, b.clean, probe_sites(model, b.clean, sites, labels=labels, position=-2),
                          metric="loss")
    for site in sites:
        direct = run_patches(model, b.clean, [[Resid(site.layer, "pre", pos=-2)]], metric="loss",
                             intervention=Subspace(sweep.probes[site.label].directions.float(), of=Zero()))
        expected = float(direct.values.double().mean() - direct.base_values.double().mean())
        assert sweep.effects[site.label] == pytest.approx(expected, abs=1e-6)
    assert sweep.effects["L0.resid_pre"] != 0.0
    assert list(sweep.to_dataframe()["effect"]) == [sweep.effects[s.label] for s in sites]
    assert len(sweep.figure().data) == 5
    per_prompt = probe_sites(model, b.clean, sites, labels=labels, position=torch.full((120,), -1))
    with pytest.raises(ProbeError, match="one position in all of them"):
        probe_effects(model, b.clean, per_prompt, metric="loss")


_SEEDS = r"seed must be an int in 0..4294967295"
_C = r"C \(the inverse regularisation strength\) must be a positive finite number"
_FRACTION = r"test_fraction must be a number in \(0, 1\)"


@pytest.mark.parametrize("options, match", [
    (dict(seed=-1), _SEEDS), (dict(seed=2**40), _SEEDS), (dict(seed=True), _SEEDS), (dict(seed=1.0), _SEEDS),
    (dict(C="1"), _C), (dict(C=0.0), _C), (dict(C=-1), _C), (dict(C=math.inf), _C), (dict(C=math.nan), _C),
    (dict(test_fraction="0.25"), _FRACTION), (dict(test_fraction=math.nan), _FRACTION),
    (dict(test_fraction=True), _FRACTION), (dict(test_fraction=0), _FRACTION),
    (dict(kind=["logistic"]), "unknown probe kind"), (dict(types=torch.zeros(40, 2)), r"types must hold one type"),
])
def test_fit_probe_refuses_bad_options_before_fitting(options, match, monkeypatch, unchecked):
    x, y, _, _ = _planted(n=40)
    monkeypatch.setattr("mechpatch.probes._classifier", lambda *a: pytest.fail("fitted before the options were checked"))
    with unchecked(), pytest.raises(ProbeError, match=match):
        fit_probe(x, y, **options)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_fit_probe_refuses_non_finite_features_naming_the_rows(bad, monkeypatch):
    x, y, _, _ = _planted(n=40)
    x[[3, 17], 5] = bad
    monkeypatch.setattr("mechpatch.probes._classifier", lambda *a: pytest.fail("fitted non-finite features"))
    with pytest.raises(ProbeError, match=r"activations at L2.resid_post are not finite \(NaN or inf\) in 2 of 40 "
                                         r"examples \(rows 3, 17\)"):
        fit_probe(x, y, site="L2.resid_post")


@pytest.fixture(scope="module")
def small():
    """The bundled induction model and 40 prompts of 6 tokens, with a two-class label."""
    tokens = torch.randint(0, 20, (40, 6), generator=torch.Generator().manual_seed(0))
    return zoo.load("induction-2l"), tokens, tokens[:, -1] % 2


@pytest.mark.parametrize("sites, options, error, match", [
    (None, dict(kind="svm"), ProbeError, "unknown probe kind 'svm'; valid: 'logistic', 'ridge'"),
    (None, dict(test_fraction=1.5), ProbeError, _FRACTION),
    (None, dict(test_fraction="0.25"), ProbeError, _FRACTION),
    (None, dict(test_fraction=0.01), ProbeError, "leave 40 to fit and 0 to test"),
    (None, dict(seed=-1), ProbeError, _SEEDS),
    (None, dict(C="1"), ProbeError, _C),
    (None, dict(labels=torch.zeros(40, dtype=torch.long)), ProbeError, "one class"),
    (None, dict(types=[1, 2]), ProbeError, "2 types for 40 labels"),
    (None, dict(position=True), InvalidArgumentError, "position True is not an int"),
    (None, dict(position=torch.ones(40, dtype=torch.bool)), InvalidArgumentError, "position True is not an int"),
    (None, dict(position=torch.ones(40)), InvalidArgumentError, "position 1.0 is not an int"),
    (None, dict(position=-7), SiteOutOfRangeError, "position -7 is outside the prompt of 6 tokens"),
    (None, dict(position=torch.zeros(3, dtype=torch.long)), ProbeError, r"integer tensor \[prompt\] \(40 here\)"),
    ([3], {}, ProbeError, r"sites must be sites or site strings \(e.g. Resid\(1, 'post'\) or 'L1.resid_post'\)"),
    (["L5.resid_pre"], {}, SiteOutOfRangeError, "layer 5 is out of range"),
    ([], {}, EmptyInputError, "no sites"),
    (["L0H1.pattern"], {}, ProbeError, r"L0H1.pattern is not one vector per prompt and position \(its activation is "
                                       r"\[batch, query, key\]\)"),
    (["L0.resid_pre@2"], {}, ProbeError, "L0.resid_pre@2 is not one vector per prompt and position .* at fixed "
                                         "positions"),
])
def test_probe_sites_refuses_bad_input_before_caching(small, sites, options, error, match, monkeypatch, unchecked):
    model, tokens, labels = small
    monkeypatch.setattr("mechpatch.probes.cache_activations",
                        lambda *a, **k: pytest.fail("cached activations before the arguments were checked"))
    options = {"labels": labels, **options}
    with unchecked(), pytest.raises(error, match=match):
        probe_sites(model, tokens, [Resid(0, "pre")] if sites is None else sites, **options)


def test_probe_sites_takes_site_strings_as_the_rest_of_the_api_does(small):
    model, tokens, labels = small
    by_site = probe_sites(model, tokens, [Resid(0, "pre"), Resid(1, "post")], labels=labels, seed=1)
    by_name = probe_sites(model, tokens, ["L0.resid_pre", "L1.resid_post"], labels=labels, seed=1)
    wildcard = probe_sites(model, tokens, "L*.resid_post", labels=labels, seed=1)
    assert by_name.sites == by_site.sites == (Resid(0, "pre"), Resid(1, "post"))
    assert list(wildcard.probes) == ["L0.resid_post", "L1.resid_post"]
    for label, probe in by_site.probes.items():
        assert by_name.probes[label].accuracy == probe.accuracy  # the same activations, split and fit
    assert wildcard.probes["L1.resid_post"].accuracy == by_site.probes["L1.resid_post"].accuracy
