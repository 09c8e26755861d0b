"""Subspace interventions: only an activation's component in a subspace moves (projected out with ``of=Zero()``,
swapped in from the other run with ``of=Replace()``). Every engine method equals a hand-written hook; a full basis
is the inner intervention itself; bad bases and sites are refused before any forward."""

import pytest
import torch

from mechpatch import zoo
from mechpatch.attribution import atp
from mechpatch.circuit.edges import EdgeError, edge_patch
from mechpatch.circuit.components import as_edge
from mechpatch.errors import InvalidArgumentError, ShapeMismatchError
from mechpatch.patching import Replace, Zero, run_patches
from mechpatch.patching.interventions import Subspace, describe
from mechpatch.sites import Head, Pattern, Resid


@pytest.fixture(scope="module")
def setup():
    model = zoo.load("induction-2l")
    g = torch.Generator().manual_seed(0)
    base = torch.randint(1, model.spec.d_vocab, (4, 8), generator=g)
    source = torch.randint(1, model.spec.d_vocab, (4, 8), generator=g)
    answers = torch.randint(1, model.spec.d_vocab, (4, 2), generator=g)
    basis = torch.randn(3, model.spec.d_model, generator=g)  # not orthonormal: the span is what counts
    return model, base, source, answers, basis


def _by_hand(model, base, source, answers, basis, layer, pos, of):
    """The intervention written out: at blocks.{layer}.hook_resid_pre, position ``pos``, the component in span(basis)
    becomes the other run's (``of="replace"``) or zero; logit difference at the last token."""
    q, _ = torch.linalg.qr(basis.double().T)
    q = q.float()
    name = f"blocks.{layer}.hook_resid_pre"
    _, cache = model.bridge.run_with_cache(source, names_filter=name)
    other = cache[name][:, pos] if of == "replace" else torch.zeros_like(cache[name][:, pos])

    def hook(act, hook=None):
        act = act.clone()
        x = act[:, pos]
        act[:, pos] = x + ((other - x) @ q) @ q.T
        return act

    logits = model.bridge.run_with_hooks(base, fwd_hooks=[(name, hook)])[:, -1]
    rows = torch.arange(len(base))
    return logits[rows, answers[:, 0]] - logits[rows, answers[:, 1]]


@pytest.mark.parametrize("of", ["zero", "replace"])
def test_every_method_equals_the_hook_written_by_hand(setup, of):
    model, base, source, answers, basis = setup
    iv = Subspace(basis, of=Zero() if of == "zero" else Replace())
    expected = _by_hand(model, base, source, answers, basis, 1, 5, of)
    for method in ("fast", "hooks", "reference"):
        run = run_patches(model, base, [[Resid(1, "pre", pos=5)]], metric="logit_diff", answers=answers,
                          source=source, intervention=iv, method=method)
        torch.testing.assert_close(run.values[0], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, run.base_values, atol=1e-3)  # the intervention did something


def test_a_full_basis_is_the_inner_intervention_and_the_span_is_what_counts(setup):
    model, base, source, answers, basis = setup
    sites = [[Resid(0, "post")], [Resid(1, "pre", pos=[2, 6])], [Head(1, 0)], [Head(0, 2, pos=3)]]
    kw = dict(metric="logit_diff", answers=answers, source=source)
    for inner in (Replace(), Zero()):
        for s in sites:
            d = model.spec.d_head if isinstance(s[0], Head) else model.spec.d_model
            full = run_patches(model, base, [s], intervention=Subspace(torch.eye(d), of=inner), **kw)
            plain = run_patches(model, base, [s], intervention=inner, **kw)
            torch.testing.assert_close(full.values, plain.values, atol=1e-5, rtol=1e-5)
    q, _ = torch.linalg.qr(basis.T)
    a = run_patches(model, base, sites[:2], intervention=Subspace(basis, of=Zero()), **kw)
    b = run_patches(model, base, sites[:2], intervention=Subspace(q.T * 3.0, of=Zero()), **kw)
    torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-5)
    # head outputs: a basis of d_head vectors, fast equals hooks
    head = Subspace(torch.randn(2, model.spec.d_head, generator=torch.Generator().manual_seed(1)), of=Replace())
    fast = run_patches(model, base, [[Head(1, 0)], [Head(1, 1)]], intervention=head, method="fast", **kw)
    hooks = run_patches(model, base, [[Head(1, 0)], [Head(1, 1)]], intervention=head, method="hooks", **kw)
    torch.testing.assert_close(fast.values, hooks.values, atol=1e-5, rtol=1e-5)
    assert describe(head) == "subspace(2 of 16, corrupted)"


def test_attribution_along_a_subspace(setup):
    """AtP's first-order term moves the same projected change: a full basis gives the inner intervention's."""
    model, base, source, answers, basis = setup
    kw = dict(metric="logit_diff", answers=answers, source=source)
    sites = [Resid(1, "pre", pos=5), Resid(0, "post")]
    full = atp(model, base, sites, intervention=Subspace(torch.eye(model.spec.d_model)), **kw)
    plain = atp(model, base, sites, intervention=Replace(), **kw)
    torch.testing.assert_close(full.estimates, plain.estimates, atol=1e-5, rtol=1e-5)
    part = atp(model, base, sites, intervention=Subspace(basis), **kw)
    assert not torch.allclose(part.estimates, plain.estimates, atol=1e-4)


def test_bad_bases_and_sites_are_refused_before_any_forward(setup, unchecked):
    model, base, source, answers, basis = setup
    kw = dict(metric="logit_diff", answers=answers, source=source)
    with pytest.raises(InvalidArgumentError, match="linearly independent rows; got rank 1 of 2"):
        Subspace(torch.stack([basis[0], 2 * basis[0]]))
    with pytest.raises(InvalidArgumentError, match=r"of=...\) takes Replace\(\), Zero\(\), Mean\(\) or Resample"):
        Subspace(basis, of=Subspace(basis))
    with pytest.raises(InvalidArgumentError, match="NaN or infinite"):
        Subspace(torch.full((1, 4), float("nan")))
    with pytest.raises(ShapeMismatchError, match=r"basis lives in 64 dimensions, but site L1H0 is 16-dimensional"):
        run_patches(model, base, [[Head(1, 0)]], intervention=Subspace(basis), **kw)
    with pytest.raises(InvalidArgumentError, match="site L1H0.pattern patches single entries"):
        run_patches(model, base, [[Pattern(1, 0)]], intervention=Subspace(basis), **kw)
    with pytest.raises(EdgeError, match="Subspace interventions run in node patching"):
        edge_patch(model, base, [[as_edge("L0H0->L1H0.q")]], intervention=Subspace(basis), **kw)


def test_a_neuron_is_refused(gpt2):
    from mechpatch.sites import Neuron

    base = torch.randint(1, 100, (2, 5))
    iv = Subspace(torch.randn(2, gpt2.spec.d_model), of=Zero())
    with pytest.raises(InvalidArgumentError, match="site L0N3 patches single entries of its hook's last dimension"):
        run_patches(gpt2, base, [[Neuron(0, 3)]], metric="loss", intervention=iv)
