"""Chunked, resumable mask evaluation: an interrupted evaluate_masks / find_interactions / exhaustive_interactions
resumed from its chunk store gives bitwise the values, costs and fits of an uninterrupted one, computing only the
chunks it lacked; chunks of other masks are refused."""

import numpy as np
import pytest
import torch

import mechpatch.interactions.run as run_module
from mechpatch.chunks import CheckpointError, MemoryChunks
from mechpatch.interactions import evaluate_masks, exhaustive_interactions, find_interactions, make_design
from mechpatch.patching import Mean
from mechpatch.sites import heads
from tests.conftest import native_model
from tests.stores import DiesAfter, Killed


@pytest.fixture
def engine_calls(monkeypatch):
    """Counts the engine calls evaluate_masks makes (one per computed chunk)."""
    calls = [0]
    real = run_module.run_patches

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "run_patches", counting)
    return calls


@pytest.fixture(scope="module")
def setup(attn_only):
    g = torch.Generator().manual_seed(0)
    base = torch.randint(1, attn_only.spec.d_vocab, (4, 8), generator=g)
    return attn_only, base, heads(attn_only.spec)


def _same_values(a, b):
    assert torch.equal(a.per_prompt, b.per_prompt) and torch.equal(a.values, b.values)
    assert (a.evaluations, a.forwards) == (b.evaluations, b.forwards)


def _same_model(a, b):
    assert list(a.moebius.items()) == list(b.moebius.items())  # every term, bit for bit, in the same order
    assert (a.r2, a.evaluations, a.forwards) == (b.r2, b.evaluations, b.forwards)


def test_interrupted_evaluation_resumes_to_the_same_values(setup, engine_calls):
    model, base, comps = setup
    d = make_design("bernoulli", len(comps), 120, keep=0.7, seed=0)
    masks = torch.cat([d.masks, d.masks[:5], torch.zeros(2, len(comps), dtype=torch.bool)])  # repeats, empties
    kw = dict(intervention=Mean(), chunk_size=16, progress=False)
    ref = evaluate_masks(model, base, comps, masks=masks, metric="loss", **kw)
    whole = evaluate_masks(model, base, comps, masks=masks, metric="loss", intervention=Mean())  # one chunk, no store
    assert torch.allclose(ref.per_prompt, whole.per_prompt, atol=1e-6) and ref.evaluations == whole.evaluations
    n_chunks = -(-ref.evaluations // 16)
    assert n_chunks >= 5

    store = DiesAfter(3)
    with pytest.raises(Killed):
        evaluate_masks(model, base, comps, masks=masks, metric="loss", chunks=store, **kw)
    assert sorted(store.chunks) == [("masks", i) for i in range(3)]
    engine_calls[0] = 0
    resumed = evaluate_masks(model, base, comps, masks=masks, metric="loss", chunks=DiesAfter(0, store.chunks), **kw)
    _same_values(resumed, ref)
    assert engine_calls[0] == n_chunks - 3  # only the chunks it lacked
    assert len(store.chunks) == n_chunks

    engine_calls[0] = 0  # every chunk saved: nothing computed
    _same_values(evaluate_masks(model, base, comps, masks=masks, metric="loss", chunks=store, **kw), ref)
    assert engine_calls[0] == 0


def test_chunks_of_other_masks_are_refused(setup):
    model, base, comps = setup
    store = MemoryChunks()
    masks = make_design("bernoulli", len(comps), 60, keep=0.7, seed=0).masks
    evaluate_masks(model, base, comps, masks=masks, metric="loss", chunk_size=16, chunks=store)
    other = make_design("bernoulli", len(comps), 60, keep=0.7, seed=1).masks
    with pytest.raises(CheckpointError, match="chunk 0 of 'masks' holds other masks"):
        evaluate_masks(model, base, comps, masks=other, metric="loss", chunk_size=16, chunks=store)
    with pytest.raises(CheckpointError, match="other masks"):  # another chunk size: other chunk boundaries
        evaluate_masks(model, base, comps, masks=masks, metric="loss", chunk_size=10, chunks=store)
    with pytest.raises(CheckpointError, match="other prompts, components or intervention"):
        evaluate_masks(model, base.flip(0), comps, masks=masks, metric="loss", chunk_size=16, chunks=store)
    with pytest.raises(CheckpointError, match="other prompts, components or intervention"):
        evaluate_masks(model, base, comps, masks=masks, metric="loss", chunk_size=16, chunks=store, intervention=Mean())
    # the same masks and prompts on other weights: the chunk computed now disagrees with the saved ones
    other_weights = native_model(2, "tiny-attn-only", attn_only=True)
    store.chunks = {key: value for key, value in store.chunks.items() if key[1] != 1}
    with pytest.raises(CheckpointError, match="chunk 1 of 'masks' has other unpatched base values than chunk 0"):
        evaluate_masks(other_weights, base, comps, masks=masks, metric="loss", chunk_size=16, chunks=store)
    evaluate_masks(model, base, comps, masks=other, metric="loss", chunk_size=16, chunks=store,
                   chunk_group="other")  # own group
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        evaluate_masks(model, base, comps, masks=masks, metric="loss", chunk_size=0)


def test_interrupted_fit_and_exhaustive_resume_to_the_same_models(setup, engine_calls):
    model, base, comps = setup
    kw = dict(intervention=Mean(), chunk_size=20, progress=False)
    ref = find_interactions(model, base, comps, metric="loss", n_masks=150, **kw)
    store = DiesAfter(2)
    with pytest.raises(Killed):
        find_interactions(model, base, comps, metric="loss", n_masks=150, chunks=store, **kw)
    engine_calls[0] = 0
    _same_model(find_interactions(model, base, comps, metric="loss", n_masks=150, chunks=store, **kw), ref)
    assert 0 < engine_calls[0] < -(-ref.evaluations // 20)
    assert {g for g, _ in store.chunks} == {"sparse"}

    ex_ref = exhaustive_interactions(model, base, comps, metric="loss", **kw)
    store = DiesAfter(1, store.chunks)  # the same store: its own group
    with pytest.raises(Killed):
        exhaustive_interactions(model, base, comps, metric="loss", chunks=store, **kw)
    _same_model(exhaustive_interactions(model, base, comps, metric="loss", chunks=store, **kw), ex_ref)
    assert {g for g, _ in store.chunks} == {"sparse", "exhaustive"}


def _fake_spex(game, n, budget, max_order, seed=0):
    """Stands in for shapiq's SPEX (minutes of decoding here): queries the game three times, as SPEX does, on
    seeded masks, and returns terms computed from every value it got."""
    rng = np.random.default_rng(seed)
    got = [game(rng.random((budget // 3, n)) < 0.5) for _ in range(3)]
    values = np.concatenate(got)
    moebius = {(): float(values.mean()), **{(i,): float(v) for i, v in enumerate(values[:n])},
               (0, 1): float(values.std())}
    return moebius, {"budget_used": len(values)}


def test_interrupted_spex_resumes_with_its_calls_numbered(setup, engine_calls, monkeypatch):
    monkeypatch.setattr(run_module, "spex_moebius", _fake_spex)
    model, base, comps = setup
    kw = dict(intervention=Mean(), chunk_size=16, backend="spex", progress=False)
    ref = find_interactions(model, base, comps, metric="loss", n_masks=300, **kw)
    full = MemoryChunks()
    _same_model(find_interactions(model, base, comps, metric="loss", n_masks=300, chunks=full, **kw), ref)
    # SPEX's three queries, then the held-out masks: one group per call
    assert sorted({g for g, _ in full.chunks}) == ["sparse-0", "sparse-1", "sparse-2", "sparse-3"]
    n_saved = len(full.chunks)

    for dies_after in (3, n_saved - 2):  # in SPEX's first query; in the held-out masks
        store = DiesAfter(dies_after)
        with pytest.raises(Killed):
            find_interactions(model, base, comps, metric="loss", n_masks=300, chunks=store, **kw)
        engine_calls[0] = 0
        _same_model(find_interactions(model, base, comps, metric="loss", n_masks=300, chunks=store, **kw), ref)
        assert engine_calls[0] == n_saved - dies_after
        assert set(store.chunks) == set(full.chunks)
