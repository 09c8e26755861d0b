"""ACDC checkpoints: a search interrupted after some receivers and resumed from its checkpoint gives the same
edges, scores (bit for bit, in the same order) and metrics as one never interrupted, without redoing the
receivers it had finished; a checkpoint of another search is refused."""

import math

import pytest
import torch

import mechpatch.circuit.discovery as discovery
from mechpatch import zoo
from mechpatch.chunks import CheckpointError, MemoryChunks
from mechpatch.circuit.discovery import CHECKPOINT_GROUP, acdc
from mechpatch.patching import Zero
from mechpatch.tasks import make_task
from tests.stores import DiesAfter, Killed


@pytest.fixture(scope="module")
def induction():
    model = zoo.load("induction-2l")
    task = make_task("induction", model, n=8, block=6, seed=0)
    (b,) = task.batches
    return model, task, b


@pytest.fixture
def count_forwards(monkeypatch):
    """Counts the edge runner's forward passes (every ACDC evaluation is one)."""
    calls = [0]
    make = discovery.make_runner

    def counting(*args, **kwargs):
        runner = make(*args, **kwargs)
        forward = runner.forward

        def counted(*a, **k):
            calls[0] += 1
            return forward(*a, **k)

        runner.forward = counted
        return runner

    monkeypatch.setattr(discovery, "make_runner", counting)
    return calls


def _bits(scores):
    return torch.tensor(list(scores.values()), dtype=torch.float64).view(torch.int64)


def _same(a, b):
    assert a.edges == b.edges
    assert list(a.scores) == list(b.scores)  # the same edges scored, in the same order
    assert torch.equal(_bits(a.scores), _bits(b.scores))  # bitwise (NaN where not scored)
    assert (a.final_metric, a.full_metric, a.forwards, a.evaluations) == (
        b.final_metric, b.full_metric, b.forwards, b.evaluations)


@pytest.mark.parametrize("search", ["batched", "sequential"])
def test_interrupted_search_resumes_to_the_same_result(induction, count_forwards, search):
    model, task, b = induction
    kw = dict(source=b.corrupted, tau=0.1, search=search, progress=False)  # tau: some nodes left dangling
    ref = acdc(model, b.clean, metric=task.metric, **kw)
    assert 0 < len(ref.edges) < ref.layout.n_edges and any(math.isnan(s) for s in ref.scores.values())
    n_receivers = len(ref.layout.receivers)

    store = DiesAfter(3)  # dies after 3 receivers' checkpoints, then again 5 saves into the second attempt
    with pytest.raises(Killed):
        acdc(model, b.clean, metric=task.metric, chunks=store, checkpoint_seconds=0.0, **kw)
    first = store.load_chunk(CHECKPOINT_GROUP, 0)
    assert 0 < int(first["next"][0]) < n_receivers
    store = DiesAfter(5, store.chunks)
    with pytest.raises(Killed):
        acdc(model, b.clean, metric=task.metric, chunks=store, checkpoint_seconds=0.0, **kw)
    state = store.load_chunk(CHECKPOINT_GROUP, 0)
    assert int(first["next"][0]) < int(state["next"][0]) < n_receivers

    count_forwards[0] = 0
    res = acdc(model, b.clean, metric=task.metric, chunks=store, checkpoint_seconds=0.0, **kw)
    _same(res, ref)
    # it went on from the checkpoint: only the forwards the saved state had not yet made
    assert count_forwards[0] == ref.forwards - int(state["counters"][0]) < ref.forwards
    final = store.load_chunk(CHECKPOINT_GROUP, 0)
    assert int(final["next"][0]) == n_receivers

    count_forwards[0] = 0  # a finished checkpoint: no forward at all (beyond the unablated run)
    _same(acdc(model, b.clean, metric=task.metric, chunks=store, **kw), ref)
    assert count_forwards[0] == 0


def test_checkpoint_is_saved_only_when_due(induction):
    model, task, b = induction
    store = DiesAfter(10 ** 6)
    acdc(model, b.clean, metric=task.metric, source=b.corrupted, tau=0.05, progress=False, chunks=store,
         checkpoint_seconds=3600.0)
    assert store.saves == 1  # only the final state
    every = DiesAfter(10 ** 6)
    acdc(model, b.clean, metric=task.metric, source=b.corrupted, tau=0.05, progress=False, chunks=every,
         checkpoint_seconds=0.0)
    assert every.saves > 10


def test_checkpoint_of_another_search_is_refused(induction, gpt2):
    model, task, b = induction
    kw = dict(source=b.corrupted, progress=False)
    store = MemoryChunks()
    acdc(model, b.clean, metric=task.metric, tau=0.05, chunks=store, **kw)
    saved = dict(store.chunks)

    def refused(match, *args, **kwargs):
        store.chunks = dict(saved)
        with pytest.raises(CheckpointError, match=match):
            acdc(*args, chunks=store, **kwargs)

    refused("tau=0.05; this one has tau=0.1", model, b.clean, metric=task.metric, tau=0.1, **kw)
    refused("search='batched'; this one has search='sequential'", model, b.clean, metric=task.metric, tau=0.05,
            search="sequential", **kw)
    refused("batch_size=64; this one has batch_size=8", model, b.clean, metric=task.metric, tau=0.05, batch_size=8,
            **kw)
    refused("rows_per_unit=0; this one has rows_per_unit=4", model, b.clean, metric=task.metric, tau=0.05,
            rows_per_unit=4, **kw)
    refused("another edge layout, metric or ablation", model, b.clean, metric="kl_div", tau=0.05, **kw)
    refused("another edge layout, metric or ablation", model, b.clean, metric=task.metric, tau=0.05, progress=False,
            intervention=Zero())
    other = make_task("induction", model, n=8, block=6, seed=1).batches[0]
    refused("other prompts or weights", model, other.clean, metric=task.metric, tau=0.05, source=other.corrupted,
            progress=False)
    base = torch.randint(1, 100, (2, 5))
    refused(r"edge layout of 9 senders x 25 receivers; this search has \d+ x \d+", gpt2, base, metric="kl_div",
            intervention=Zero(), progress=False)
    store.chunks = {(CHECKPOINT_GROUP, 0): {"values": torch.zeros(3)}}
    with pytest.raises(CheckpointError, match="not an ACDC state: it lacks"):
        acdc(model, b.clean, metric=task.metric, tau=0.05, chunks=store, **kw)


def test_checkpoint_arguments_are_checked(attn_only):
    base = torch.randint(1, 100, (2, 5))
    with pytest.raises(ValueError, match="rows_per_unit must be a positive int or None"):
        acdc(attn_only, base, metric="kl_div", intervention=Zero(), rows_per_unit=0, progress=False)
    with pytest.raises(ValueError, match="executor needs rows_per_unit"):
        acdc(attn_only, base, metric="kl_div", intervention=Zero(), executor=object(), progress=False)
    with pytest.raises(ValueError, match="checkpoint_seconds"):
        acdc(attn_only, base, metric="kl_div", intervention=Zero(), chunks=MemoryChunks(), checkpoint_seconds=-1.0,
             progress=False)
