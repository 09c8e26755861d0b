"""Reproducing a published circuit: its reference numbers and head classes, effects measured over a
task's batches, the comparison of the heads found with the published ones, and the results file.

The experiments beside this module (``experiments/published/*.py``) are thin scripts over it. A *unit* is a head
``(layer, head)`` or an MLP layer ``layer``; a *class* is a named set of units (name movers, ...).

>>> c = compare_units("name_mover", found=[(9, 9), (10, 0), (11, 3)], published=[(9, 9), (10, 0), (9, 6)])
>>> c.overlap, c.missed, c.extra
(((9, 9), (10, 0)), ((9, 6),), ((11, 3),))
>>> round(c.precision, 3), round(c.recall, 3)
(0.667, 0.667)
>>> print(comparison_table([c]))
class       found               published          overlap  precision  recall
name_mover  L9H9, L10H0, L11H3  L9H6, L9H9, L10H0  2        0.67       0.67
"""

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor

from mechpatch.config import ConfigError, from_dict
from mechpatch.errors import MechpatchError, ModelLoadError, choices
from mechpatch.model import HookedModel, load_model
from mechpatch.patching.engine import run_patches
from mechpatch.patching.paths import path_patch
from mechpatch.report import write_json
from mechpatch.sites import Site
from mechpatch.tasks.base import TaskBatch, TaskData, TaskError

Unit = Union[int, tuple[int, int]]


# ----------------------------------------------------------------------------- reference data


@dataclass(frozen=True)
class Reference:
    """What a paper reports for one task: headline numbers, head (and MLP) classes, and its sources."""

    model: str
    metrics: dict[str, float]
    head_classes: dict[str, list[list[int]]]
    sources: list[str]
    mlp_classes: dict[str, list[int]] = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        for name, value in self.metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"metric {name!r} must be a number; got {value!r}")
        for name, heads in self.head_classes.items():
            if not isinstance(heads, list) or not all(
                isinstance(h, list) and len(h) == 2 and all(isinstance(x, int) and x >= 0 for x in h) for h in heads
            ):
                raise ConfigError(f"head class {name!r} must be a list of [layer, head] pairs; got {heads!r}")
        for name, mlps in self.mlp_classes.items():
            if not isinstance(mlps, list) or not all(isinstance(x, int) and x >= 0 for x in mlps):
                raise ConfigError(f"MLP class {name!r} must be a list of layer indices; got {mlps!r}")
        if not self.sources:
            raise ConfigError("a reference must name its sources")

    def heads(self, name: str) -> tuple[tuple[int, int], ...]:
        """The published heads of class ``name`` as ``(layer, head)`` tuples."""
        if name not in self.head_classes:
            raise ConfigError(f"no head class {name!r} in this reference; valid: {choices(self.head_classes)}")
        return tuple((h[0], h[1]) for h in self.head_classes[name])

    def metric(self, name: str) -> float:
        if name not in self.metrics:
            raise ConfigError(f"no published value {name!r} in this reference; valid: {choices(self.metrics)}")
        return float(self.metrics[name])


def load_reference(path: Union[str, os.PathLike], task: str) -> Reference:
    """The ``task`` section of a reference YAML file (safe-loaded), checked."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"reference file not found: {os.fspath(path)!r}") from None
    if not isinstance(data, dict) or task not in data:
        raise ConfigError(f"{os.fspath(path)!r} has no section {task!r}; valid: "
                          f"{choices(data) if isinstance(data, dict) else 'none'}")
    return from_dict(Reference, data[task], where=f"{os.path.basename(os.fspath(path))}:{task}")


# ----------------------------------------------------------------------------- comparison


def unit_label(unit: Unit) -> str:
    """``(9, 6)`` -> ``"L9H6"``; ``9`` -> ``"MLP9"``."""
    return f"MLP{unit}" if isinstance(unit, int) else f"L{unit[0]}H{unit[1]}"


@dataclass(frozen=True)
class ClassComparison:
    """Units found for one class against the published ones. Precision is None when nothing was found,
    recall None when the paper lists nothing."""

    name: str
    found: tuple[Unit, ...]
    published: tuple[Unit, ...]

    @property
    def overlap(self) -> tuple[Unit, ...]:
        return tuple(u for u in self.found if u in set(self.published))

    @property
    def missed(self) -> tuple[Unit, ...]:
        return tuple(u for u in self.published if u not in set(self.found))

    @property
    def extra(self) -> tuple[Unit, ...]:
        return tuple(u for u in self.found if u not in set(self.published))

    @property
    def precision(self) -> Optional[float]:
        return len(self.overlap) / len(self.found) if self.found else None

    @property
    def recall(self) -> Optional[float]:
        return len(self.overlap) / len(self.published) if self.published else None

    def as_dict(self) -> dict[str, Any]:
        lab = lambda units: [unit_label(u) for u in units]  # noqa: E731
        return {"class": self.name, "found": lab(self.found), "published": lab(self.published),
                "overlap": lab(self.overlap), "missed": lab(self.missed), "extra": lab(self.extra),
                "precision": self.precision, "recall": self.recall}


def compare_units(name: str, found: Sequence[Unit], published: Sequence[Unit]) -> ClassComparison:
    """Compare the units found for class ``name`` with the published ones (order kept, duplicates dropped)."""
    norm = lambda us: tuple(dict.fromkeys(u if isinstance(u, int) else (int(u[0]), int(u[1])) for u in us))  # noqa: E731
    return ClassComparison(name, norm(found), norm(published))


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def comparison_table(comparisons: Sequence[ClassComparison]) -> str:
    """A plain-text table: class, units found, published, overlap count, precision, recall."""
    key = lambda u: (u, -1) if isinstance(u, int) else u  # noqa: E731
    rows = [(c.name, ", ".join(unit_label(u) for u in sorted(c.found, key=key)) or "-",
             ", ".join(unit_label(u) for u in sorted(c.published, key=key)), str(len(c.overlap)),
             _fmt(c.precision), _fmt(c.recall)) for c in comparisons]
    return _table(("class", "found", "published", "overlap", "precision", "recall"), rows)


def metric_table(rows: Sequence[tuple[str, float, Optional[float]]]) -> str:
    """Measured against published numbers: (name, measured, published or None) per row."""
    out = [(name, f"{m:.4g}", "-" if p is None else f"{p:.4g}",
            "-" if p in (None, 0) else f"{m / p:.2f}") for name, m, p in rows]
    return _table(("metric", "measured", "published", "ratio"), out)


def top_units(effect: Mapping[Unit, float], k: int, sign: int = -1) -> list[Unit]:
    """The ``k`` units with the largest effect in direction ``sign`` (-1: most negative first); only
    units whose effect has that sign count, so fewer than ``k`` may come back."""
    if sign not in (-1, 1):
        raise ValueError(f"sign must be -1 or 1; got {sign!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int; got {k!r}")
    ranked = sorted((u for u, v in effect.items() if v * sign > 0), key=lambda u: -sign * effect[u])
    return ranked[:k]


# ----------------------------------------------------------------------------- effects over a task


def by_position(batch: TaskBatch, role: str) -> list[TaskBatch]:
    """Split a batch into sub-batches in which position ``role`` is the same for every prompt."""
    if role not in batch.positions:
        raise TaskError(f"this task has no position {role!r}; valid: {choices(batch.positions)}")
    out = []
    for value in torch.unique(batch.positions[role]).tolist():
        idx = torch.nonzero(batch.positions[role] == value).flatten()
        pick = lambda xs, idx=idx: tuple(xs[i] for i in idx.tolist()) if xs else xs  # noqa: E731
        out.append(TaskBatch(batch.clean[idx], batch.corrupted[idx], batch.answers[idx],
                             {k: v[idx] for k, v in batch.positions.items()}, pick(batch.prompts),
                             pick(batch.corrupted_prompts), pick(batch.labels)))
    return out


def _batches(task: TaskData, split_by: Optional[str]) -> list[TaskBatch]:
    return [s for b in task for s in (by_position(b, split_by) if split_by else [b])]


def path_effects(
    model: HookedModel,
    task: TaskData,
    senders: Sequence[Any],
    receivers: Callable[[TaskBatch], Union[str, Sequence[Site]]],
    *,
    split_by: Optional[str] = None,
    batch_size: int = 16,
) -> Float[Tensor, " sender"]:
    """Mean over every prompt of each sender's path-patching effect (clean base, corrupted source),
    run batch by batch; ``receivers(batch)`` names the receivers for a batch (after splitting batches
    so that position ``split_by`` is the same within each). Senders that precede no receiver get 0."""
    total, n = torch.zeros(len(senders)), 0
    for b in _batches(task, split_by):
        b = b.to(model.device)
        run = path_patch(model, b.clean, senders, receivers=receivers(b), metric=task.metric, source=b.corrupted,
                         answers=b.answers, batch_size=batch_size)
        # a sender set before no receiver cannot change anything: exactly 0, not the float noise of a rerun
        total += torch.where(run.noop[:, None], 0.0, run.effect).sum(1)
        n += b.n_prompts
    return total / n


def patch_effects(
    model: HookedModel,
    task: TaskData,
    cells: Callable[[TaskBatch], Sequence[Site]],
    *,
    batch_size: Optional[int] = None,
) -> Float[Tensor, " cell"]:
    """Mean over every prompt of each cell's activation-patching effect, noising: the clean run with
    the cell's activations taken from the corrupted run. ``cells(batch)`` names the sites for a batch."""
    sums, n = [], 0
    for b in task:
        b = b.to(model.device)
        run = run_patches(model, b.clean, cells(b), metric=task.metric, source=b.corrupted, answers=b.answers,
                          clean="base", batch_size=batch_size)
        sums.append((run.values - run.base_values[None, :]).sum(1).cpu())
        n += b.n_prompts
    return torch.stack(sums).sum(0) / n


# ----------------------------------------------------------------------------- loading and writing


def load_original(source: str, *, device: str = "auto", dtype: str = "float32") -> HookedModel:
    """The model an experiment runs on: a bundled zoo name, a local directory, or a hub name.

    Raises:
        ModelLoadError: it cannot be loaded, with what to do about it (offline machines cannot reach the hub).
    """
    from mechpatch import zoo

    if source in zoo.MODELS:
        return zoo.load(source, device=device, dtype=dtype)
    try:
        return load_model(source, device=device, dtype=dtype)
    except MechpatchError as err:
        raise ModelLoadError(
            f"cannot load the model {source!r}: {err}\nThe published result is about this model, fetched from the "
            "model hub by name. Without network access, copy a populated Hugging Face cache here (HF_HOME), or set "
            "`model:` in the experiment's config to a local directory holding a saved copy (config.json, the "
            f"weights and the tokenizer files) or to a bundled model ({choices(zoo.MODELS)})."
        ) from err


def write_results(path: Union[str, os.PathLike], data: Any) -> None:
    """Write ``data`` as JSON atomically (:func:`mechpatch.report.write_json`), creating its folder."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_json(path, data)


def finish(
    experiment: str,
    cfg: Any,
    model: HookedModel,
    ref: Reference,
    task: TaskData,
    task_summary: Mapping[str, Any],
    measured: Mapping[str, float],
    effects: Mapping[str, Mapping[Unit, float]],
    comparisons: Sequence[ClassComparison],
    seconds: float,
) -> dict[str, Any]:
    """Print the metric and head-class comparisons, write the results file (``cfg.out``), return the results."""
    from dataclasses import asdict

    metric_rows = [(k, v, ref.metrics.get(k)) for k, v in measured.items()]
    print(f"{model!r}\n{task!r}\n")
    print(metric_table(metric_rows), "\n")
    print(comparison_table(comparisons))
    results = {
        "experiment": experiment,
        "model": repr(model),
        "config": asdict(cfg),
        "reference": {"model": ref.model, "sources": ref.sources},
        "task": {"n_prompts": task.n_prompts, "batches": len(task.batches), **task_summary},
        "metrics": {k: {"measured": v, "published": p} for k, v, p in metric_rows},
        "effects": {name: {unit_label(u): v for u, v in e.items()} for name, e in effects.items()},
        "classes": [c.as_dict() for c in comparisons],
        "seconds": round(seconds, 1),
    }
    write_results(cfg.out, results)
    print(f"\nwrote {cfg.out}")
    return results


def cli(doc: str, config_cls: type, run: Any, example: str, argv: Optional[Sequence[str]] = None) -> int:
    """The command line of a published-circuit experiment: load its config and run it; a mechpatch error
    (a model that cannot load, a tokenizer that cannot express the task) prints what to do and returns 2."""
    import argparse
    import sys

    from mechpatch.config import load_config
    from mechpatch.errors import MechpatchError

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("config", help=f"YAML config, e.g. {example}")
    cfg = load_config(config_cls, parser.parse_args(argv).config)
    try:
        run(cfg)
    except MechpatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "ClassComparison", "Reference", "by_position", "cli", "compare_units", "comparison_table", "finish",
    "load_original", "load_reference", "metric_table", "path_effects", "patch_effects", "top_units", "unit_label",
    "write_results",
]
