"""Data attribution by interactions: retraining as the value function, each retraining a stored, checked unit."""

import math

import pytest
import torch

from mechpatch.chunks import CheckpointError, CountingChunks, MemoryChunks
from mechpatch.errors import DamagedFileError
from mechpatch.interactions import InteractionError, compare
from mechpatch.interactions.data import (
    MAX_GROUPS,
    data_game,
    data_interactions,
    exhaustive_data_interactions,
    mask_index,
    retrain_masks,
    retrained_effects,
)
from mechpatch.interactions.synthetic import planted, planted_trainer
from mechpatch.runs.executor import function_executor
from mechpatch.runs.store import RunStore
from mechpatch.zoo import facts

PLANTED = "mechpatch.interactions.synthetic:planted_trainer"
HERE = __name__  # the name this module was imported under (trainers are found by name)
#: every call of :func:`counted` (included groups, seed); :data:`FAIL_AT` makes the call of that number raise
CALLS: list[tuple[tuple[int, ...], int]] = []
FAIL_AT = [-1]


def counted(included, *, seed):
    """Groups 1 and 2 back each other up, 3 and 4 are needed together, group 0 is worth 2; seed adds 0.1 * seed."""
    CALLS.append((tuple(included), seed))
    if len(CALLS) == FAIL_AT[0]:
        raise KeyboardInterrupt("interrupted")
    inc = set(included)
    value = 2.0 * (0 in inc) + 1.0 * bool(inc & {1, 2}) + 1.0 * ({3, 4} <= inc) + 0.1 * seed
    return {"value": value, "size": float(len(inc))}


def not_finite(included, *, seed):
    return {"value": math.nan if 2 not in included else 1.0}


def broken(included, *, seed):
    if 1 not in included:
        raise ValueError("no data to fit")
    return {"value": 1.0}


def renamed(included, *, seed):
    return {"value": 1.0} if len(included) % 2 else {"other": 1.0}


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()
    FAIL_AT[0] = -1


def _masks(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_values_are_the_trainers_on_the_kept_groups():
    masks = _masks([[False] * 5, [True, False, False, False, False], [False, True, True, False, False],
                    [False, True, True, False, False], [True] * 5])
    run = retrain_masks(f"{HERE}:counted", 5, masks, seeds=(0, 1))
    # by hand: full data 4 (+ seed / 10: mean over seeds 0.05); drop 0: 2; drop 1 and 2: 3; drop all: 0
    torch.testing.assert_close(run.values["value"], torch.tensor([4.05, 2.05, 3.05, 3.05, 0.05], dtype=torch.float64))
    torch.testing.assert_close(run.values["size"], torch.tensor([5.0, 4.0, 3.0, 3.0, 0.0], dtype=torch.float64))
    assert run.retrainings == run.computed == 8  # 4 distinct masks x 2 seeds; the repeated mask is trained once
    assert sorted(CALLS)[:2] == [((), 0), ((), 1)]


def test_retrained_effects_are_the_hand_computed_moebius():
    m = retrained_effects(f"{HERE}:counted", list("abcde"), [("b", "c"), (3, 4), ("a",)], metric="value")
    assert m.effect("a") == pytest.approx(-2.0)  # dropping a costs its 2
    assert m.effect("b", "c") == pytest.approx(-1.0) and m.interaction("b", "c").kind == "redundancy"  # either suffices
    assert m.effect("d", "e") == pytest.approx(1.0) and m.interaction("d", "e").kind == "synergy"  # only both
    assert m.effect("b") == pytest.approx(0.0) and m.effect("d") == pytest.approx(-1.0)  # dropping d alone breaks the d-and-e term
    assert m.evaluations == 1 + 5 + 2


def test_exhaustive_on_a_subset_keeps_the_other_groups():
    m = exhaustive_data_interactions(f"{HERE}:counted", list("abcde"), metric="value", subset=["e", "a", "d"])
    assert m.components == ("e", "a", "d") and m.evaluations == 1 + 3 + 3
    assert [m.effect("a"), m.effect("d"), m.effect("d", "e")] == pytest.approx([-2.0, -1.0, 1.0])
    assert m.effect("a", "e") == pytest.approx(0.0) and all(len(t) <= 2 for t in m.moebius)
    with pytest.raises(InteractionError, match=r"order must be an int in 1..3"):
        exhaustive_data_interactions(f"{HERE}:counted", list("abcde"), metric="value", subset=["e", "a", "d"], order=4)


@pytest.mark.parametrize("backend", ["mechpatch", "proxy"])
def test_search_recovers_the_planted_pairs(backend):
    m = data_interactions(PLANTED, 12, metric="value", n_masks=300, backend=backend, progress=False)
    p = planted(0, n=12, n_and=2, n_or=2, n_three=0)
    top = {i.term: i for i in m.top(4)}
    assert set(top) == set(p.ands) | set(p.ors)
    assert all(top[t].kind == "synergy" for t in p.ands) and all(top[t].kind == "redundancy" for t in p.ors)
    truth = exhaustive_data_interactions(PLANTED, 12, metric="value")
    c = compare(m, truth, k=4)
    assert c["topk_overlap"] == 1.0 and c["topk_sign"] == 1.0 and m.r2 > 0.99
    assert m.info["trainer"] == PLANTED and m.evaluations == m.info["retrainings"] <= 300


def test_seeds_average_the_noise():
    masks = torch.zeros(1, 12, dtype=torch.bool)
    one = retrain_masks(PLANTED, 12, masks, options={"noise": 0.5}, seeds=(0,)).values["value"]
    many = retrain_masks(PLANTED, 12, masks, options={"noise": 0.5}, seeds=tuple(range(64))).values["value"]
    exact = planted_trainer(list(range(12)), seed=0)["value"]
    assert abs(float(many) - exact) < 0.25 and float(one) != float(many)


def test_units_are_named_by_mask_and_reused_by_any_search():
    store = CountingChunks(MemoryChunks())
    masks = _masks([[False, True, False, True, False], [False] * 5])
    retrain_masks(f"{HERE}:counted", 5, masks, chunks=store, seeds=(0, 3))
    assert sorted(store.store.chunks) == [("retrain0", 0), ("retrain0", 0b01010), ("retrain3", 0), ("retrain3", 0b01010)]
    assert mask_index(masks[0]) == 10
    CALLS.clear()
    again = retrained_effects(f"{HERE}:counted", 5, [(1, 3)], metric="value", chunks=store, seeds=(0, 3))
    assert sorted(CALLS) == [((0, 1, 2, 4), 0), ((0, 1, 2, 4), 3), ((0, 2, 3, 4), 0), ((0, 2, 3, 4), 3)]
    assert again.evaluations == 8 and again.info["computed"] == 4


def test_an_interrupted_search_resumes_without_retraining_twice():
    clean = data_interactions(f"{HERE}:counted", 5, metric="value", n_masks=40, progress=False)
    n_distinct = len(CALLS)
    CALLS.clear()
    store = MemoryChunks()
    FAIL_AT[0] = 7
    with pytest.raises(KeyboardInterrupt):
        data_interactions(f"{HERE}:counted", 5, metric="value", n_masks=40, chunks=store, progress=False)
    assert len(store.chunks) == 6  # the six finished retrainings were saved as they finished
    FAIL_AT[0] = -1
    CALLS.clear()
    resumed = data_interactions(f"{HERE}:counted", 5, metric="value", n_masks=40, chunks=store, progress=False)
    assert len(CALLS) == n_distinct - 6
    assert resumed.moebius == clean.moebius and resumed.r2 == clean.r2
    assert resumed.evaluations == clean.evaluations and resumed.info["computed"] == n_distinct - 6


def test_a_stored_unit_of_another_game_is_refused():
    store = MemoryChunks()
    masks = _masks([[False] * 12, [True] + [False] * 11])
    retrain_masks(PLANTED, 12, masks, chunks=store)
    with pytest.raises(CheckpointError, match="another trainer, options or groups"):
        retrain_masks(PLANTED, 12, masks, options={"plant": 1}, chunks=store)
    with pytest.raises(CheckpointError, match="another trainer, options or groups"):
        retrain_masks(PLANTED, [f"x{i}" for i in range(12)], masks, chunks=store)
    moved = dict(store.chunks[("retrain0", 1)], mask=masks[0])  # a unit copied under another mask's name
    store.chunks[("retrain0", 1)] = moved
    with pytest.raises(CheckpointError, match="another mask or seed"):
        retrain_masks(PLANTED, 12, masks, chunks=store)
    store.chunks[("retrain0", 1)] = {"value.value": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="not a stored retraining"):
        retrain_masks(PLANTED, 12, masks, chunks=store)


def test_a_damaged_unit_on_disk_is_named_and_never_used(tmp_path):
    store = RunStore(str(tmp_path / "run"), "data-interactions", {"trainer": PLANTED})
    store.begin()
    masks = _masks([[False] * 12, [True] + [False] * 11])
    first = retrain_masks(PLANTED, 12, masks, chunks=store)
    path = store.chunk_path("retrain0", 1)
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(DamagedFileError, match="retrain0"):
        retrain_masks(PLANTED, 12, masks, chunks=store)
    store.release()
    repairing = RunStore(str(tmp_path / "run"), "data-interactions", {"trainer": PLANTED}, repair=True)
    repairing.begin()
    again = retrain_masks(PLANTED, 12, masks, chunks=repairing)
    assert torch.equal(again.values["value"], first.values["value"]) and again.computed == 1


def test_bad_input_is_refused_before_any_retraining(unchecked):
    cases = [
        (dict(trainer="nowhere:train"), "cannot be imported"),
        (dict(trainer=lambda included, seed: {}), "module-level function"),
        (dict(trainer=f"{HERE}:counted", options={"lr": 0.1}), r"must take \(included, \*, seed, \*\*options\)"),
        (dict(groups=["a", "a"]), "distinct labels"),
        (dict(groups=MAX_GROUPS + 1), f"1..{MAX_GROUPS} distinct labels"),
        (dict(options={"x": object()}), "JSON data"),
        (dict(seeds=(0, 0)), "distinct ints"),
        (dict(seeds=()), "distinct ints"),
        (dict(metric=3), "metric must name"),
        (dict(n_masks=5), r"raise n_masks to \d+"),
        (dict(backend="lasso"), "valid: 'mechpatch', 'proxy', 'spex'"),
        (dict(chunks=object()), "load_chunk"),
    ]
    for change, message in cases:
        args = dict(trainer=f"{HERE}:counted", groups=5, metric="value", n_masks=40)
        args.update(change)
        trainer, groups = args.pop("trainer"), args.pop("groups")
        with pytest.raises(InteractionError, match=message), unchecked():
            data_interactions(trainer, groups, progress=False, **args)
    with pytest.raises(InteractionError, match="distinct labels"), unchecked():
        retrain_masks(f"{HERE}:counted", "abcde", torch.zeros(1, 5, dtype=torch.bool))
    with pytest.raises(InteractionError, match="bool tensor"):
        retrain_masks(f"{HERE}:counted", 5, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(InteractionError, match="unknown group 'z'"):
        retrained_effects(f"{HERE}:counted", list("abcde"), [("a", "z")], metric="value")
    assert CALLS == []


def test_unknown_metric_and_bad_measurements_are_caught_at_the_first_retraining():
    store = MemoryChunks()
    with pytest.raises(InteractionError, match=r"unknown metric 'loss': trainer .* measures \['size', 'value'\]"):
        retrain_masks(f"{HERE}:counted", 5, torch.zeros(3, 5, dtype=torch.bool), metric="loss", chunks=store)
    assert store.chunks == {} and len(CALLS) == 1
    with pytest.raises(InteractionError, match=r"not finite numbers, training on groups \[0, 1\]"):
        retrain_masks(f"{HERE}:not_finite", 3, _masks([[False, False, True]]))
    with pytest.raises(InteractionError, match=r"failed, training on groups \[0, 2\] \(seed 0\): ValueError: no data"):
        retrain_masks(f"{HERE}:broken", 3, _masks([[False, False, False], [False, True, False]]))
    with pytest.raises(InteractionError, match=r"returned \['other'\] for one retraining and \['value'\]"):
        retrain_masks(f"{HERE}:renamed", 3, _masks([[False, False, True], [False, True, True]]))


def test_data_game_normalises_the_trainer():
    g = data_game(planted_trainer, 3, {"n": 3})
    assert g.trainer == PLANTED and g.groups == ("g0", "g1", "g2") and g.options == (("n", 3),)
    assert torch.equal(g.key, data_game(PLANTED, 3, {"n": 3}).key)
    assert not torch.equal(g.key, data_game(PLANTED, 3, {"n": 4}).key)


@pytest.mark.slow
def test_facts_toy_has_its_planted_structure():
    """The toy's groups do what their kinds say, by retraining (a flip of one chance guess on another CPU is
    allowed for: one probe fact is 1/42)."""
    labels = facts.group_labels()
    n = len(facts.PROBE_KEYS)
    pairs = [("dup0a", "dup0b"), ("half0a", "half0b"), ("half0a", "wrong0"), ("single0", "mislabel0"),
             ("unique3", "filler0")]
    m = retrained_effects("mechpatch.zoo.facts:train_facts", labels, pairs, metric="accuracy")
    assert m.effect("dup0a", "dup0b") * n <= -3 and abs(m.effect("dup0a")) * n <= 1  # redundancy: either teaches 4 facts
    assert m.effect("half0a", "half0b") * n >= 3 and m.effect("half0a") * n <= -3  # synergy: only both outvote
    assert m.effect("half0a", "wrong0") * n >= 3 and abs(m.effect("wrong0")) * n <= 1
    assert m.effect("mislabel0") * n >= 2 and m.effect("single0", "mislabel0") * n <= -2  # mislabel hurts
    assert m.effect("unique3") * n <= -3 and abs(m.effect("filler0")) * n <= 1
    assert abs(m.effect("unique3", "filler0")) * n <= 1
    assert m.interaction("dup0a", "dup0b").kind == "redundancy" and m.interaction("half0a", "half0b").kind == "synergy"


@pytest.mark.slow
def test_ray_workers_retrain_bit_for_bit_as_here():
    """Retraining is the same computation wherever it runs: two Ray workers (one thread each) give the local values
    exactly, and a search on the workers equals the local search."""
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'mechpatch[ray]')")
    labels = facts.group_labels()
    masks = torch.rand(6, len(labels), generator=torch.Generator().manual_seed(0)) < 0.3
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = retrain_masks("mechpatch.zoo.facts:train_facts", labels, masks)
        near = data_interactions(PLANTED, 12, metric="value", n_masks=120, progress=False)
        with function_executor({"ray": {"workers": 2}}) as ex:
            assert len(ex.workers) == 2
            remote = retrain_masks("mechpatch.zoo.facts:train_facts", labels, masks, executor=ex)
            far = data_interactions(PLANTED, 12, metric="value", n_masks=120, executor=ex, progress=False)
    finally:
        torch.set_num_threads(threads)
    for name in local.values:
        assert torch.equal(local.values[name], remote.values[name])
    assert far.moebius == near.moebius and far.r2 == near.r2


@pytest.mark.parametrize("fn, positional", [(data_interactions, ("trainer", "groups")),
                                            (exhaustive_data_interactions, ("trainer", "groups")),
                                            (retrained_effects, ("trainer", "groups", "terms")),
                                            (retrain_masks, ("trainer", "groups", "masks"))])
def test_one_convention(fn, positional):
    """The trainer and the groups (and what is measured of them) positional, everything else keyword-only; ``metric``
    required where a value is fitted (``retrain_masks`` returns every measurement)."""
    import inspect

    params = inspect.signature(fn).parameters
    assert tuple(n for n, p in params.items() if p.kind == p.POSITIONAL_OR_KEYWORD) == positional
    assert params["metric"].kind == inspect.Parameter.KEYWORD_ONLY
    assert (params["metric"].default is inspect.Parameter.empty) == (fn is not retrain_masks)
    for name in ("options", "seeds", "chunks", "executor", "progress"):
        assert params[name].kind == inspect.Parameter.KEYWORD_ONLY
