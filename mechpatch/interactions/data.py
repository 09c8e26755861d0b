"""Interactions among training data groups (data attribution): which groups, alone and together, produce a behaviour.

The components are groups of training data and the value of a mask is a retraining: train a model on the groups
the mask keeps (True = the group is dropped, as a component is ablated), measure a behaviour. The same interaction
searches then say which groups matter alone (main effects, relative to training on everything) and which only
together: ``"redundancy"`` when either of two groups teaches what the behaviour needs, ``"synergy"`` when only both
do.

The trainer is a module-level function named ``"module:function"`` (workers import it by name, and each stored
retraining records it)::

    def trainer(included: list[int], *, seed: int, **options) -> dict[str, float]

It trains on the groups ``included`` (indices, possibly none) from initialisation ``seed`` and returns named
measurements; ``metric=`` picks the one that is the value. It must be deterministic given its arguments (a second
run of a mask then reproduces the first). :func:`mechpatch.zoo.facts.train_facts` is one, trained in a fraction of a
second.

Each retraining is one stored unit: given ``chunks=`` (a :class:`~mechpatch.chunks.ChunkStore`, e.g. a run
directory's :class:`~mechpatch.runs.RunStore`) it is saved as it finishes, under group ``"retrain<seed>"`` and index
the mask's bits (``sum(2**i for each dropped group i)``), so the same retraining is found again whichever design,
budget or validation asks for it, and an interrupted search resumes where it stopped. A unit is checked when read
back (same trainer, options, groups and mask), never trusted. ``executor=`` runs the retrainings elsewhere
(:func:`mechpatch.runs.executor.function_executor`: a pool of Ray workers); the values do not depend on where a
retraining ran.

- :func:`retrain_masks`: the measurements of a batch of masks (each distinct mask and seed trained once).
- :func:`data_interactions`: a random design, a sparse fit (any backend of :data:`~mechpatch.interactions.run.BACKENDS`).
- :func:`retrained_effects`: the exact Moebius effects of chosen terms, from retraining on every subset of each
  (validation of a fit's top pairs).
- :func:`exhaustive_data_interactions`: every term of at most ``order`` groups over a subset of groups, retrained.
"""

import hashlib
import inspect
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import combinations
from typing import Any, Optional, Union

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechpatch._progress import progress_bar
from mechpatch.chunks import CheckpointError, ChunkStore
from mechpatch.config import resolve
from mechpatch.interactions.basis import InteractionError, Term
from mechpatch.interactions.results import InteractionModel
from mechpatch.interactions.run import (
    Executor,
    check_search,
    check_where,
    exhaustive_moebius,
    find_function_interactions,
)

#: the most groups a search takes (a retraining's stored index is its mask's bits, an int64)
MAX_GROUPS = 62
#: :func:`retrain_unit` by name: what an executor's worker runs for one retraining
RETRAIN_UNIT = "mechpatch.interactions.data:retrain_unit"


@dataclass(frozen=True)
class DataGame:
    """What one retraining is, less its mask: the trainer (by name), the groups' labels, the trainer's other keyword
    arguments (JSON data) and the initialisation seeds averaged per mask."""

    trainer: str
    groups: tuple[str, ...]
    options: tuple[tuple[str, Any], ...]
    seeds: tuple[int, ...]

    @property
    def key(self) -> Tensor:
        """SHA-256 (uint8 [32]) of everything but the mask and seed: what a stored retraining must match."""
        text = json.dumps([self.trainer, list(self.groups), dict(self.options)], sort_keys=True)
        return torch.frombuffer(bytearray(hashlib.sha256(text.encode()).digest()), dtype=torch.uint8)


@dataclass(frozen=True)
class RetrainValues:
    """The measurements of a batch of masks (means over the seeds), with what they cost."""

    values: dict[str, Float[Tensor, " mask"]]
    retrainings: int  # distinct (mask, seed) retrainings behind the values, loaded or computed
    computed: int  # of those, trained in this call
    seconds: float  # this call's wall time
    unit_seconds: dict[tuple[str, int], float]  # each retraining's own training time (loaded ones as recorded)

    @property
    def train_seconds(self) -> float:
        """The retrainings' training time, summed."""
        return float(sum(self.unit_seconds.values()))


def _trainer_name(trainer: object) -> str:
    if isinstance(trainer, str):
        name = trainer
    elif callable(trainer) and getattr(trainer, "__module__", None) and "<" not in getattr(trainer, "__qualname__", "<"):
        name = f"{trainer.__module__}:{trainer.__qualname__}"
    else:
        raise InteractionError(f"trainer must be a module-level function or its name 'module:function' (workers import "
                               f"it, stored retrainings record it); got {trainer!r}")
    try:
        fn = resolve(name)
    except (ImportError, AttributeError, ValueError) as err:
        raise InteractionError(f"trainer {name!r} cannot be imported: {type(err).__name__}: {err}") from None
    if not callable(fn):
        raise InteractionError(f"trainer {name!r} is not a function")
    return name


def data_game(trainer: object, groups: Union[int, Sequence[str]], options: Optional[Mapping[str, Any]] = None,
              seeds: Sequence[int] = (0,)) -> DataGame:
    """Check a trainer, its groups, options and seeds (before any retraining) and bundle them.

    Raises:
        InteractionError: the trainer cannot be imported or does not take ``(included, seed=, **options)``; the
            groups are not 1..:data:`MAX_GROUPS` distinct labels (or a count); the options are not JSON data; the
            seeds are not distinct ints.
    """
    name = _trainer_name(trainer)
    labels = tuple(f"g{i}" for i in range(groups)) if isinstance(groups, int) and not isinstance(groups, bool) \
        else tuple(str(g) for g in groups) if isinstance(groups, Sequence) and not isinstance(groups, str) else None
    if labels is None or not 1 <= len(labels) <= MAX_GROUPS or len(set(labels)) != len(labels):
        raise InteractionError(f"groups must be 1..{MAX_GROUPS} distinct labels (or their count); got {groups!r}")
    if options is not None and not isinstance(options, Mapping):
        raise InteractionError(f"options must be a dict of the trainer's keyword arguments; got {options!r}")
    options = dict(options or {})
    try:
        json.dumps(options, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InteractionError(f"the trainer's options must be JSON data (numbers, strings, lists, dicts): {err}") \
            from None
    seeds = tuple(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or any(isinstance(x, bool) or not isinstance(x, int) for x in seeds):
        raise InteractionError(f"seeds must be distinct ints (one retraining per mask and seed); got {seeds!r}")
    try:
        inspect.signature(resolve(name)).bind([], seed=seeds[0], **options)
    except TypeError as err:
        raise InteractionError(f"trainer {name!r} must take (included, *, seed, **options) with options "
                               f"{sorted(options)}: {err}") from None
    return DataGame(name, labels, tuple(sorted(options.items())), seeds)


def mask_index(mask: Bool[Tensor, " component"]) -> int:
    """A retraining's stored index: the bits of the groups its mask drops (``sum(2**i)``); 0 trains on all."""
    return sum(1 << i for i in mask.nonzero().flatten().tolist())


def retrain_unit(_held: object, *, trainer: str, included: list[int], seed: int,
                 options: dict[str, Any]) -> dict[str, Tensor]:
    """One retraining, as an executor's worker runs it (``_held``: the job's model, unused): the trainer's
    measurements as float64 tensors ``value.<name>`` and its training time ``seconds``."""
    started = time.perf_counter()
    try:
        out = resolve(trainer)(list(included), seed=seed, **options)
    except Exception as err:  # the trainer's own failure, named with what it was training on
        raise InteractionError(f"trainer {trainer!r} failed, training on groups {list(included)} (seed {seed}): "
                               f"{type(err).__name__}: {err}") from err
    seconds = time.perf_counter() - started
    if not isinstance(out, Mapping) or not out:
        raise InteractionError(f"trainer {trainer!r} must return a dict of named measurements; got {type(out).__name__}")
    bad = {k: v for k, v in out.items() if not isinstance(k, str) or isinstance(v, bool)
           or not isinstance(v, (int, float)) or not math.isfinite(v)}
    if bad:
        raise InteractionError(f"trainer {trainer!r} returned measurements that are not finite numbers, training on "
                               f"groups {included} (seed {seed}): {bad}")
    return {**{f"value.{k}": torch.tensor([float(v)], dtype=torch.float64) for k, v in out.items()},
            "seconds": torch.tensor([seconds], dtype=torch.float64)}


def _check_unit(part: Mapping[str, Tensor], game: DataGame, mask: Tensor, seed: int, where: str) -> None:
    again = "; start afresh (another chunk store, or --force for a run directory)"
    missing = sorted({"mask", "inputs", "seed", "seconds"} - set(part))
    if missing or not any(k.startswith("value.") for k in part):
        raise CheckpointError(f"{where} is not a stored retraining: it lacks {', '.join(missing) or 'values'}{again}")
    if not torch.equal(part["inputs"], game.key):
        raise CheckpointError(f"{where} was trained by another trainer, options or groups{again}")
    if part["mask"].shape != mask.shape or not torch.equal(part["mask"].bool(), mask) or int(part["seed"]) != seed:
        raise CheckpointError(f"{where} holds another mask or seed than its name says (a file copied or moved){again}")


def _measured(parts: Sequence[Mapping[str, Tensor]], metric: Optional[str], trainer: str) -> list[str]:
    names = sorted(k[len("value."):] for k in parts[0] if k.startswith("value."))
    for p in parts[1:]:
        other = sorted(k[len("value."):] for k in p if k.startswith("value."))
        if other != names:
            raise InteractionError(f"trainer {trainer!r} returned {other} for one retraining and {names} for another")
    if metric is not None and metric not in names:
        raise InteractionError(f"unknown metric {metric!r}: trainer {trainer!r} measures {names}")
    return names


def _check_masks(masks: object, n: int) -> Tensor:
    if not isinstance(masks, Tensor) or masks.ndim != 2 or masks.shape[1] != n or masks.dtype != torch.bool:
        what = f"{masks.dtype} {tuple(masks.shape)}" if isinstance(masks, Tensor) else type(masks).__name__
        raise InteractionError(f"masks must be a bool tensor [mask, {n}] (one column per group, True = dropped); "
                               f"got {what}")
    if masks.shape[0] == 0:
        raise InteractionError("masks is empty: give at least one mask")
    return masks.cpu()


def retrain_masks(
    trainer: object,
    groups: Union[int, Sequence[str]],
    masks: Bool[Tensor, "mask component"],
    *,
    metric: Optional[str] = None,
    options: Optional[Mapping[str, Any]] = None,
    seeds: Sequence[int] = (0,),
    chunks: Optional[ChunkStore] = None,
    executor: Optional[Executor] = None,
    progress: Optional[bool] = None,
) -> RetrainValues:
    """Retrain on the groups each mask keeps (True = dropped) and return every measurement, averaged over ``seeds``.

    Each distinct (mask, seed) is trained once: loaded from ``chunks`` when stored there (and checked), else trained
    here or by ``executor`` and saved the moment it finishes. ``metric``, when given, must be among the trainer's
    measurements (checked on the first retraining, before it is saved).

    Raises:
        InteractionError: see :func:`data_game`; masks of the wrong shape or dtype; a trainer that fails or returns
            other than finite named numbers (naming the groups it was training on).
        CheckpointError: a stored retraining of another trainer, options, groups, mask or seed.
    """
    game = data_game(trainer, groups, options, seeds)
    masks = _check_masks(masks, len(game.groups))
    check_where(chunks, executor)
    start = time.perf_counter()
    uniq, inverse = torch.unique(masks, dim=0, return_inverse=True)
    parts: dict[tuple[str, int], Mapping[str, Tensor]] = {}
    todo: dict[tuple[str, int], tuple[int, int]] = {}
    for s in game.seeds:
        for r in range(len(uniq)):
            unit = (f"retrain{s}", mask_index(uniq[r]))
            part = chunks.load_chunk(*unit) if chunks is not None else None
            if part is None:
                todo[unit] = (r, s)
                continue
            _check_unit(part, game, uniq[r], s, f"stored retraining {unit}")
            parts[unit] = part
    if parts:
        _measured(list(parts.values()), metric, game.trainer)
    options = dict(game.options)
    bar = progress_bar(total=len(todo), desc="retrainings", unit="model",
                       enabled=progress if progress is not None else len(todo) > 20)

    def save(unit: tuple[str, int], out: dict[str, Tensor]) -> None:
        r, s = todo[unit]
        part = {**out, "mask": uniq[r].clone(), "inputs": game.key, "seed": torch.tensor([s])}
        _measured([part, *([next(iter(parts.values()))] if parts else [])], metric, game.trainer)
        if chunks is not None:
            chunks.save_chunk(*unit, part)
        parts[unit] = part
        bar.update(1)

    payloads = {unit: (RETRAIN_UNIT, dict(trainer=game.trainer, seed=s, options=options,
                                          included=[i for i in range(len(game.groups)) if not bool(uniq[r, i])]))
                for unit, (r, s) in todo.items()}
    try:
        if executor is None:
            for unit, (_, kwargs) in payloads.items():
                save(unit, retrain_unit(None, **kwargs))
        else:
            executor.run(list(payloads), save, payloads)
    finally:
        bar.close()
    names = _measured(list(parts.values()), metric, game.trainer)
    keys = [[(f"retrain{s}", mask_index(uniq[r])) for s in game.seeds] for r in range(len(uniq))]
    values = {n: torch.stack([torch.cat([parts[u][f"value.{n}"] for u in row]).mean() for row in keys])[inverse]
              for n in names}
    return RetrainValues(values, len(parts), len(todo), time.perf_counter() - start,
                         {u: float(p["seconds"]) for u, p in parts.items()})


def _indices(game: DataGame, items: Sequence[object], what: str) -> list[int]:
    """Group indices of ``items`` (indices or labels), in the order given, each once."""
    out = []
    for g in items:
        if isinstance(g, int) and not isinstance(g, bool) and 0 <= g < len(game.groups):
            out.append(g)
        elif isinstance(g, str) and g in game.groups:
            out.append(game.groups.index(g))
        else:
            raise InteractionError(f"unknown group {g!r} in {what} {tuple(items)}; valid: an index 0..{len(game.groups) - 1}"
                                   f" or a label ({', '.join(game.groups[:8])}{', ...' if len(game.groups) > 8 else ''})")
    if len(set(out)) != len(out):
        raise InteractionError(f"{what} {tuple(items)} names a group twice")
    return out


def _with_retrainings(m: InteractionModel, game: DataGame, runs: list[RetrainValues], seen: set[int],
                      seconds: float) -> InteractionModel:
    info = {**m.info, "trainer": game.trainer, "seeds": list(game.seeds), "retrainings": len(seen) * len(game.seeds),
            "computed": sum(r.computed for r in runs),
            "train_seconds": round(sum({u: t for r in runs for u, t in r.unit_seconds.items()}.values()), 3)}
    return replace(m, evaluations=len(seen) * len(game.seeds), forwards=None, seconds=round(seconds, 3), info=info)


def _values_of(game: DataGame, metric: str, chunks: object, executor: object, progress: Optional[bool],
               runs: list[RetrainValues], seen: set[int]) -> Any:
    def values(masks: Tensor) -> Tensor:
        run = retrain_masks(game.trainer, game.groups, masks, metric=metric, options=dict(game.options),
                            seeds=game.seeds, chunks=chunks, executor=executor, progress=progress)
        runs.append(run)
        seen.update(mask_index(m) for m in torch.unique(masks, dim=0))
        return run.values[metric]

    return values


def _checked(trainer: object, groups: object, options: object, seeds: Sequence[int], metric: object, chunks: object,
             executor: object) -> tuple[DataGame, str]:
    """The argument checks the searches share (before any retraining): the game, the metric's name, where units go."""
    game = data_game(trainer, groups, options, seeds)
    if not isinstance(metric, str) or not metric:
        raise InteractionError(f"metric must name one of the trainer's measurements (a string); got {metric!r}")
    check_where(chunks, executor)
    return game, metric


def data_interactions(
    trainer: object,
    groups: Union[int, Sequence[str]],
    *,
    metric: str,
    options: Optional[Mapping[str, Any]] = None,
    seeds: Sequence[int] = (0,),
    n_masks: int = 500,
    design: str = "bernoulli",
    keep: float = 0.5,
    max_order: int = 2,
    holdout: float = 0.2,
    backend: str = "mechpatch",
    seed: int = 0,
    higher_is_better: bool = True,
    chunks: Optional[ChunkStore] = None,
    executor: Optional[Executor] = None,
    progress: Optional[bool] = None,
) -> InteractionModel:
    """Which data groups, alone and together, produce a behaviour: a sparse interaction model from retrainings.

    ``n_masks`` random masks (each group kept with probability ``keep``; a ``holdout`` share of them measures R^2)
    are each one retraining per seed; the fit is :func:`~mechpatch.interactions.find_function_interactions`'s, with
    the same ``backend`` choices. Effects are relative to training on every group (``direction="noise"``: a main
    effect is what dropping that group changes).

    Args:
        trainer, groups, options, seeds: the retraining (module docstring) and the groups' labels (or their count).
        metric: the trainer's measurement that is the value.
        chunks, executor, progress: where retrainings are stored and run (:func:`retrain_masks`).

    Returns:
        :class:`~mechpatch.interactions.InteractionModel` over the groups; ``evaluations`` counts retrainings
        (distinct masks x seeds, stored ones included), ``info`` the trainer, seeds and training time.

    >>> trainer = "mechpatch.interactions.synthetic:planted_trainer"  # planted: groups 0 and 8 needed together
    >>> m = data_interactions(trainer, 12, metric="value", n_masks=200, progress=False)
    >>> m.evaluations <= 200, round(m.r2, 6)  # distinct masks: a repeated one is one retraining
    (True, 1.0)
    >>> sorted((i.label, i.kind, round(i.effect, 3)) for i in m.top(4))
    [('g0 x g8', 'synergy', 1.0), ('g2 x g10', 'redundancy', -1.0), ('g4 x g7', 'redundancy', -1.0), ('g5 x g9', 'synergy', 1.0)]
    """
    game, metric = _checked(trainer, groups, options, seeds, metric, chunks, executor)
    check_search("noise", holdout, backend, design, n_masks, len(game.groups))  # before any retraining
    start = time.perf_counter()
    runs: list[RetrainValues] = []
    seen: set[int] = set()
    m = find_function_interactions(_values_of(game, metric, chunks, executor, progress, runs, seen), len(game.groups),
                                   n_masks, design=design, keep=keep, max_order=max_order, holdout=holdout, seed=seed,
                                   higher_is_better=higher_is_better, labels=game.groups, backend=backend)
    return _with_retrainings(m, game, runs, seen, time.perf_counter() - start)


def _measure_terms(game: DataGame, terms: Sequence[Term], metric: str, method: str, order: int,
                   higher_is_better: bool, chunks: object, executor: object, progress: Optional[bool],
                   labels: Optional[tuple[str, ...]] = None, columns: Optional[Sequence[int]] = None
                   ) -> InteractionModel:
    """Retrain on every subset of every term and return their exact Moebius effects (over ``labels``: the groups of
    ``columns``, default all)."""
    columns = list(range(len(game.groups))) if columns is None else list(columns)
    subsets = sorted({s for t in terms for k in range(len(t) + 1) for s in combinations(t, k)}, key=lambda t: (len(t), t))
    small = torch.zeros(len(subsets), len(columns), dtype=torch.bool)
    for row, s in enumerate(subsets):
        small[row, list(s)] = True
    full = torch.zeros(len(subsets), len(game.groups), dtype=torch.bool)
    full[:, columns] = small
    start = time.perf_counter()
    runs: list[RetrainValues] = []
    seen: set[int] = set()
    values = _values_of(game, metric, chunks, executor, progress, runs, seen)(full)
    m = InteractionModel(labels or game.groups, exhaustive_moebius(small, values), "noise", higher_is_better, method,
                         order, info={"design": method, "masks": len(subsets)})
    return _with_retrainings(m, game, runs, seen, time.perf_counter() - start)


def retrained_effects(
    trainer: object,
    groups: Union[int, Sequence[str]],
    terms: Sequence[Sequence[object]],
    *,
    metric: str,
    options: Optional[Mapping[str, Any]] = None,
    seeds: Sequence[int] = (0,),
    higher_is_better: bool = True,
    chunks: Optional[ChunkStore] = None,
    executor: Optional[Executor] = None,
    progress: Optional[bool] = None,
) -> InteractionModel:
    """The exact Moebius effects of ``terms`` (each a tuple of group indices or labels), measured by retraining on
    every subset of each: ``2^k`` retrainings for a term of ``k`` groups, shared between terms and with every search
    that used the same ``chunks``. The validation of a fit: retrain its top pairs.

    Returns:
        :class:`~mechpatch.interactions.InteractionModel` over all groups (``method="retrained"``) holding the effect
        of every term and of each of its subsets.

    >>> trainer = "mechpatch.interactions.synthetic:planted_trainer"  # 0 and 8: an AND; 4 and 7: an OR
    >>> m = retrained_effects(trainer, 12, [(0, 8), ("g4", "g7")], metric="value")
    >>> m.evaluations, m.interaction(0, 8).kind, round(m.effect(0, 8), 9), round(m.effect(4, 7), 9)
    (7, 'synergy', 1.0, -1.0)
    """
    game, metric = _checked(trainer, groups, options, seeds, metric, chunks, executor)
    if isinstance(terms, (str, bytes)) or not isinstance(terms, Sequence) or not terms:
        raise InteractionError(f"terms must be a non-empty list of group tuples; got {terms!r}")
    checked = [tuple(sorted(_indices(game, t if isinstance(t, Sequence) and not isinstance(t, str) else (t,), "term")))
               for t in terms]
    order = max(len(t) for t in checked)
    return _measure_terms(game, checked, metric, "retrained", order, higher_is_better, chunks, executor, progress)


def exhaustive_data_interactions(
    trainer: object,
    groups: Union[int, Sequence[str]],
    *,
    metric: str,
    subset: Optional[Sequence[object]] = None,
    order: int = 2,
    options: Optional[Mapping[str, Any]] = None,
    seeds: Sequence[int] = (0,),
    higher_is_better: bool = True,
    chunks: Optional[ChunkStore] = None,
    executor: Optional[Executor] = None,
    progress: Optional[bool] = None,
) -> InteractionModel:
    """Every term of at most ``order`` groups among ``subset`` (default: all groups), by retraining: ``1 + n + n (n -
    1) / 2`` retrainings for pairs of ``n`` groups, the others always kept. The ground truth to check a fit on (after
    :meth:`~mechpatch.interactions.InteractionModel.restrict` to the same groups).

    Returns:
        :class:`~mechpatch.interactions.InteractionModel` over the subset's groups (``method="exhaustive"``).
    """
    game, metric = _checked(trainer, groups, options, seeds, metric, chunks, executor)
    columns = list(range(len(game.groups))) if subset is None else _indices(game, list(subset), "subset")
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= len(columns):
        raise InteractionError(f"order must be an int in 1..{len(columns)} (the subset's size); got {order!r}")
    terms = list(combinations(range(len(columns)), order))
    return _measure_terms(game, terms, metric, "exhaustive", order, higher_is_better, chunks, executor, progress,
                          labels=tuple(game.groups[c] for c in columns), columns=columns)


__all__ = ["DataGame", "MAX_GROUPS", "RETRAIN_UNIT", "RetrainValues", "data_game", "data_interactions",
           "exhaustive_data_interactions", "mask_index", "retrain_masks", "retrain_unit", "retrained_effects"]
