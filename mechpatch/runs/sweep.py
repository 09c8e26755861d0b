"""Config-driven, resumable patching sweeps (``mechpatch sweep CONFIG``).

A sweep config names a model (bundled or a local directory), prompts (a task from
:data:`mechpatch.tasks.TASKS`, or explicit clean/corrupted prompts with answers), one or more sweep kinds
(:data:`~mechpatch.patching.SWEEP_KINDS`), the metric, direction and intervention. Each kind's grid is cut
into chunks of ``chunk_size`` cells; each chunk runs through the engine (every prompt batch of the task)
and is written to ``chunks/<kind>/`` at once, so a run killed at any moment and started again recomputes
only the chunks it had not written. Chunk boundaries are part of the config (and its hash): the same
config and seed on the same CPU build gives bitwise-identical results whether or not the run was
interrupted. (A different ``chunk_size`` batches the engine's forwards differently, which can change
the last bits.)

Outputs in the run directory (see :mod:`mechpatch.runs.store` for the layout), per kind ``K``:
``tensors/K.safetensors`` (``values [*grid, prompt]``, ``noop [*grid]``, ``clean``/``corrupted [prompt]``,
with axes, labels and sites in its metadata), ``results/K.parquet`` (one row per cell x prompt),
``results/K_cells.parquet`` (one row per cell: mean, standard error, normalised effect, and the metric's change
from the unpatched run: ``effect``),
``figure_K.html``; and ``report.html`` with every heatmap and the headline numbers.

>>> from mechpatch.config import from_dict
>>> cfg = from_dict(SweepConfig, {"model": "induction-2l", "task": {"name": "induction"}, "kinds": ["head"]})
>>> cfg.metric, cfg.direction, cfg.intervention, cfg.chunk_size
('task', 'denoise', 'replace', 64)
>>> from_dict(SweepConfig, {"model": "induction-2l", "task": {"name": "induction"},  # doctest: +ELLIPSIS
...                        "kinds": ["haed"]})
Traceback (most recent call last):
...
mechpatch.config.ConfigError: SweepConfig: kinds 'haed' is not valid; valid: attn_out, head, ...
"""

import html
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from mechpatch.config import from_dict
from mechpatch.errors import ShapeMismatchError
from mechpatch.patching.engine import METHODS
from mechpatch.patching.interventions import DIRECTIONS, Intervention, from_name
from mechpatch.patching.metrics import METRICS
from mechpatch.patching.results import PatchResult
from mechpatch.patching.sweeps import SWEEP_KINDS
from mechpatch.runs.executor import check_executor, parse_executor, plan_row
from mechpatch.runs.common import DTYPES, check_choice, check_device, check_model, check_task_args, load_source, redraw_missing_report
from mechpatch.runs.plan import RunPlan
from mechpatch.runs.results import as_2d, has_normalized, read_result
from mechpatch.runs.store import RunError, RunStore, read_manifest, slug, verify_finished

#: the `intervention:` names a sweep config accepts (turned into objects by patching.interventions.from_name)
INTERVENTION_KINDS = ("replace", "zero", "mean", "resample", "interpolate")


@dataclass(frozen=True)
class TaskSpec:
    """A published task by name, with its builder's keyword arguments (``n``, ``seed``, ...)."""

    name: str
    args: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", check_task_args(self.name, self.args))


@dataclass(frozen=True)
class PromptSpec:
    """Explicit prompts: clean and corrupted strings of equal token length, and per prompt the correct answer
    followed by the wrong one(s) (``[" Mary", " John"]``)."""

    clean: tuple[str, ...]
    corrupted: tuple[str, ...]
    answers: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if not self.clean:
            raise ValueError("prompts.clean is empty")
        if len(self.corrupted) != len(self.clean):
            raise ValueError(f"{len(self.clean)} clean prompts but {len(self.corrupted)} corrupted; they must pair up")
        if self.answers and len(self.answers) != len(self.clean):
            raise ValueError(f"{len(self.answers)} answer lists for {len(self.clean)} prompts; give one per prompt")


@dataclass(frozen=True)
class SweepConfig:
    """One sweep run: model, prompts, sweep kinds, metric, direction, intervention, chunking and output.

    Attributes:
        model: a bundled model (``mechpatch models``) or a directory holding a saved model.
        task: a published task (``{name, args}``); or else ``prompts`` (exactly one of the two).
        kinds: sweep kinds, each one grid (``resid_pre``, ``head``, ``q``, ``pattern``, ``neuron``, ...).
        metric: ``task`` (the task's own metric) or a metric name (``logit_diff``, ``prob_diff``, ``kl_div``, ...).
        direction: ``denoise`` (clean into corrupted) or ``noise`` (the reverse, or ablation of the clean run).
        intervention: ``replace``, ``zero``, ``mean``, ``resample`` (donors drawn with ``seed``), ``interpolate``.
        alpha: how far ``interpolate`` moves towards the other run (only with ``interpolate``).
        by_position, layers, positions: shape the grids (see :func:`mechpatch.patching.make_grid`).
        method, batch_size: the engine's execution method and variants per forward (None: from its memory budget).
        device, dtype: where and in what precision the model runs (bitwise reproducibility is promised on CPU).
        seed: seeds torch, the task (unless its args set ``seed``) and ``resample``'s donors.
        chunk_size: grid cells per chunk, the unit of resumption (and of distribution).
        prompt_chunk: also cut the prompts into chunks of this many (null: every chunk of cells runs over all
            prompts): a unit is then a chunk of cells over a chunk of prompts, and the driver joins each cell's
            prompts in order. For large prompt sets; not with ``mean`` or ``resample``, which draw on all of a
            batch's prompts. Part of the config hash, as ``chunk_size`` is.
        out_dir: the run directory.
        executor: ``local`` (this process) or ``{ray: {address, workers, cpus_per_worker, gpus_per_worker}}``
            (:mod:`mechpatch.runs.executor`); not part of the config hash: results do not depend on it.
    """

    model: str
    task: Optional[TaskSpec] = None
    prompts: Optional[PromptSpec] = None
    kinds: tuple[str, ...] = ("resid_pre", "head")
    metric: str = "task"
    direction: str = "denoise"
    intervention: str = "replace"
    alpha: Optional[float] = None
    by_position: Optional[bool] = None
    layers: Optional[tuple[int, ...]] = None
    positions: Optional[tuple[int, ...]] = None
    method: str = "auto"
    batch_size: Optional[int] = None
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    chunk_size: int = 64
    out_dir: str = "out/sweep"
    executor: Any = "local"
    prompt_chunk: Optional[int] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "executor", parse_executor(self.executor))
        check_model(self.model)
        if (self.task is None) == (self.prompts is None):
            raise ValueError("give exactly one of task: {name, args} or prompts: {clean, corrupted, answers}")
        if not self.kinds:
            raise ValueError("kinds is empty; give at least one sweep kind")
        for kind in self.kinds:
            check_choice("kinds", kind, SWEEP_KINDS)
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds lists a kind twice: {list(self.kinds)}")
        check_choice("metric", self.metric, ("task", *METRICS))
        if self.metric == "task" and self.task is None:
            raise ValueError(f"metric 'task' needs a task; with explicit prompts name a metric: {', '.join(METRICS)}")
        check_choice("direction", self.direction, DIRECTIONS)
        check_choice("intervention", self.intervention, INTERVENTION_KINDS)
        if self.alpha is not None and self.intervention != "interpolate":
            raise ValueError(f"alpha is only used by intervention 'interpolate', not {self.intervention!r}")
        if self.alpha is not None and not (math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"alpha must be a finite number in [0, 1] (how far to move towards the other run); "
                             f"got {self.alpha!r}")
        check_choice("method", self.method, METHODS)
        check_device(self.device)
        check_choice("dtype", self.dtype, DTYPES)
        for key in ("chunk_size", "batch_size", "prompt_chunk"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be a positive integer; got {value}")
        if self.prompt_chunk is not None and self.intervention in ("mean", "resample"):
            raise ValueError(f"prompt_chunk cuts the prompts into chunks, but intervention {self.intervention!r} draws "
                             "on all of a batch's prompts (their mean, or donors among them): drop prompt_chunk, or "
                             "use replace, zero or interpolate")

    def make_intervention(self) -> Intervention:
        """The intervention object this config names (:func:`~mechpatch.patching.interventions.from_name`)."""
        return from_name(self.intervention, alpha=self.alpha, seed=self.seed)


# ----------------------------------------------------------------------------- the run


@dataclass(frozen=True, eq=False)
class SweepRun:
    """A finished sweep run read back from its directory: the manifest and one :class:`PatchResult` per kind.

    Renders in Jupyter as a compact table and each kind's heatmap.
    """

    run_dir: str
    manifest: dict[str, Any]
    results: dict[str, PatchResult]

    def __repr__(self) -> str:
        kinds = ", ".join(f"{k}: {' x '.join(map(str, r.grid_shape))}" for k, r in self.results.items())
        return f"SweepRun({self.run_dir!r}, {self.manifest['model']['name']}, {kinds}; prompts={self.n_prompts})"

    @property
    def n_prompts(self) -> int:
        return next(iter(self.results.values())).n_prompts

    def to_dataframe(self) -> Any:
        """Every kind's tidy table (one row per cell x prompt) stacked, with a ``kind`` column."""
        import pandas as pd

        return pd.concat([_tidy(k, r) for k, r in self.results.items()], ignore_index=True)

    def _html_table(self) -> str:
        def grid(r: PatchResult) -> str:
            return " x ".join(f"{a}={n}" for a, n in zip(r.axes, r.grid_shape))

        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(grid(r))}"
            f"</td><td>{float(r.clean.mean()):.4g}</td><td>{float(r.corrupted.mean()):.4g}</td>"
            f"<td>{html.escape(_top_cells(r, 3))}</td></tr>"
            for k, r in self.results.items()
        )
        return (f"<p>{html.escape(repr(self))}</p><table><tr><th>kind</th><th>grid</th><th>clean</th>"
                f"<th>corrupted</th><th>largest effects (metric change)</th></tr>{rows}</table>")

    def _repr_html_(self) -> str:
        """Table and each kind's heatmap, plotly.js inline: draws with no network (see :mod:`mechpatch.display`)."""
        from mechpatch.display import html_fragment

        return html_fragment(self._html_table(), _figures(self).values())

    def _ipython_display_(self) -> None:
        """In Jupyter: the table, then each kind's heatmap through plotly's renderer."""
        from mechpatch.display import ipython_display

        ipython_display(repr(self), self._html_table(), lambda: _figures(self).values())


def run_sweep(cfg: SweepConfig, *, force: bool = False, quiet: bool = False, repair: bool = False) -> SweepRun:
    """Run (or resume, or skip when finished) the sweep ``cfg`` describes, in ``cfg.out_dir``.

    Everything is checked against the model (:func:`plan_sweep`) before the run directory is locked and its
    manifest written: a config that cannot run leaves no file behind.

    Args:
        cfg: the validated config.
        force: recompute even when the directory holds a finished run, or a run of another config.
        quiet: no progress bars or messages (also ``TQDM_DISABLE=1``).
        repair: recompute only the chunks (and result files) found damaged, instead of refusing them.

    Returns:
        The finished run, read back from its files (:func:`load_sweep`).

    Raises:
        RunConflictError: the directory holds another config's run (and not ``force``).
        DamagedFileError: a chunk or result file changed since it was written (and not ``repair``/``force``).
        RunLockedError: another process is running in the directory.
    """
    store = RunStore(cfg.out_dir, "sweep", cfg, repair=repair)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    if store.check(force):
        say(f"{cfg.out_dir}: already finished (config {store.config_hash[:12]}); nothing to do (--force recomputes)")
        redraw_missing_report(cfg.out_dir, say)
        return _read(cfg.out_dir)  # check() has just verified every recorded file
    check_executor(cfg.executor)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = load_source(cfg.model, cfg.device, cfg.dtype)
    plan, prep = _plan(cfg, model, store)
    with store.locked(say):
        store.begin(model, cfg.model, cfg.seed, force=force)
        say(f"{model!r} -> {cfg.out_dir}")
        store.update(prompts=prep.about, plan=plan.to_dict(),
                     engine={"method": prep.method, "fallback_reason": prep.fallback})
        results, computed = _run_chunks(store, cfg, SweepJob(cfg, model, prep), quiet)
        for kind in cfg.kinds:
            write_result(store, kind, results[kind])
        store.update(compute_seconds=round(time.perf_counter() - start, 2), chunks_computed_last_attempt=computed)
        outputs = write_sweep_report(cfg.out_dir)
        store.finish(**outputs)
    say(f"wrote {os.path.join(cfg.out_dir, 'report.html')}")
    return _read(cfg.out_dir)  # written and hashed just now: not hashed again


def plan_sweep(cfg: SweepConfig, model: Any = None) -> RunPlan:
    """What :func:`run_sweep` would compute for ``cfg`` (cells, chunks, forwards, memory), checked against the
    model; writes nothing (``mechpatch sweep CONFIG --dry-run``). Loads the model unless it is given.

    Raises:
        MechpatchError: whatever would stop the run (a site the model lacks, a task its tokenizer cannot
            express, a metric the prompts cannot feed, more memory than the machine has, ...).
    """
    store = RunStore(cfg.out_dir, "sweep", cfg)
    store.preflight()
    if model is None:
        torch.manual_seed(cfg.seed)
        model = load_source(cfg.model, cfg.device, cfg.dtype)
    return _plan(cfg, model, store)[0]


@dataclass(frozen=True)
class _Prepared:
    """What the plan built, for the run to use: prompt batches, metric, engine method, one grid per kind."""

    batches: list[Any]
    metric: Any
    about: dict[str, Any]
    method: str
    grids: dict[str, Any]
    fallback: Optional[str] = None  # why "auto" did not take the fast path


def _prepare(cfg: SweepConfig, model: Any) -> _Prepared:
    """Prompt batches, metric, engine method and grids: what the driver and every worker build alike."""
    batches, metric, about = _prompts(cfg, model)
    method, fallback = _resolve_method(model, cfg.method)
    grids = {kind: _grid(cfg, model, kind, batches) for kind in cfg.kinds}
    return _Prepared(batches, metric, about, method, grids, fallback)


def _plan(cfg: SweepConfig, model: Any, store: RunStore) -> tuple[RunPlan, _Prepared]:
    from mechpatch.cache import DEFAULT_MEMORY_BUDGET
    from mechpatch.patching.engine import _row_bytes
    from mechpatch.runs.plan import check_memory, prompt_bytes, store_status

    prep = _prepare(cfg, model)
    batches, metric, about, method, fallback, grids = (prep.batches, prep.metric, prep.about, prep.method,
                                                       prep.fallback, prep.grids)
    lens = sorted({b.seq_len for b in batches})
    for grid in grids.values():  # every site of every grid, at every prompt length
        for cell in grid.cells:
            for site in cell:
                for seq_len in lens:
                    model.hook_point(site, seq_len)
    _probe(cfg, model, grids[cfg.kinds[0]].cells[0], batches[0], metric, method)
    forwards, transient, rows = 0, 0, []
    for kind, grid in grids.items():
        n_cells = len(grid.cells)
        n_chunks = -(-n_cells // cfg.chunk_size)
        rows.append((f"{kind}", f"{' x '.join(map(str, grid.shape))} = {n_cells} cells ({', '.join(grid.axes)}), "
                                f"{n_chunks} chunk{'s' * (n_chunks != 1)} of at most {cfg.chunk_size}"))
        for b in batches:
            row = _row_bytes(model, b.seq_len, b.seq_len) * b.pair.n_prompts
            size = cfg.batch_size or max(1, DEFAULT_MEMORY_BUDGET // row)
            for i in range(n_chunks):
                cells = min(cfg.chunk_size, n_cells - i * cfg.chunk_size)
                forwards += 3 + (cells if method == "reference" else -(-cells // size))
                transient = max(transient, min(cells, size) * row)
    n_prompts = sum(b.pair.n_prompts for b in batches)
    total_cells = sum(len(g.cells) for g in grids.values())
    memory = (sum(b.pair.n_prompts * prompt_bytes(model, b.seq_len) for b in batches) + transient
              + 4 * 8 * total_cells * n_prompts)
    check_memory(memory, f"this sweep ({total_cells} cells x {n_prompts} prompts)")
    engine = method if fallback is None else f"{method} (the fast path cannot run this model: {fallback})"
    rows = [("prompts", f"{n_prompts} in {len(batches)} batch{'es' * (len(batches) != 1)} of {lens} tokens"),
            ("metric", f"{about['metric']} ({cfg.direction}, {cfg.intervention})"), ("engine", engine), *rows,
            ("cells", f"{total_cells}")]
    n_shards = len(SweepJob(cfg, model, prep).shards)
    if cfg.prompt_chunk is not None:
        rows.append(("prompt chunks", f"{n_shards} of at most {cfg.prompt_chunk} prompts: each chunk of cells runs "
                                      f"{n_shards} units"))
    n_units = n_shards * sum(-(-len(g.cells) // cfg.chunk_size) for g in prep.grids.values())
    rows += [r for r in (plan_row(cfg.executor, n_units),) if r is not None]
    plan = RunPlan("sweep", cfg.out_dir, cfg.model, tuple(rows), forwards, memory, store_status(store))
    return plan, prep


def _probe(cfg: SweepConfig, model: Any, cell: tuple, batch: Any, metric: Any, method: str) -> None:
    """Run one cell on (at most) two prompts through the engine, as the sweep will: the metric, the
    intervention and the engine method are checked on real outputs before anything is written."""
    from mechpatch.patching.sweeps import Grid, sweep

    small = _some_prompts(batch.pair, 0, min(2, batch.pair.n_prompts))
    sweep(model, small, Grid.of([cell]), metric=metric, direction=cfg.direction, intervention=cfg.make_intervention(),
          method=method, batch_size=cfg.batch_size, progress=False)


def _some_prompts(pair: Any, lo: int, hi: int) -> Any:
    """Prompts ``lo:hi`` of a :class:`~mechpatch.prompts.PromptPair` (clean, corrupted, answers)."""
    from mechpatch.prompts import PromptPair

    return PromptPair(pair.clean[lo:hi], pair.corrupted[lo:hi], None if pair.answers is None else pair.answers[lo:hi])


def _resolve_method(model: Any, method: str) -> tuple[str, Optional[str]]:
    """The engine method a run uses, and why "auto" fell back to hooks (None where it did not)."""
    if method != "auto":
        return method, None
    from mechpatch.patching import fast

    reason, _ = fast.resolve(model)
    return ("fast", None) if reason is None else ("hooks", reason)


def _prompts(cfg: SweepConfig, model: Any) -> tuple[list[Any], Any, dict[str, Any]]:
    """The prompt batches (TaskBatch-like: ``.pair``, ``.seq_len``), the metric, and a description."""
    from mechpatch.prompts import make_pair

    if cfg.task is not None:
        from mechpatch.runs.plan import build_task

        from mechpatch.runs.plan import seeded_args

        task = build_task(model, cfg.task.name, cfg.task.args, cfg.seed)
        metric = task.metric if cfg.metric == "task" else cfg.metric
        args = seeded_args(cfg.task.name, cfg.task.args, cfg.seed)
        about = {"task": cfg.task.name, "args": args, "description": task.description, "n_prompts": task.n_prompts,
                 "seq_lens": [b.seq_len for b in task.batches], "metric": task.metric.name if cfg.metric == "task"
                 else cfg.metric}
        batches = [b.to(model.device) for b in task.batches]
        return batches, metric, about
    p = cfg.prompts
    pair = make_pair(model, list(p.clean), list(p.corrupted), answers=[list(a) for a in p.answers] or None)
    about = {"prompts": "explicit", "n_prompts": pair.n_prompts, "seq_lens": [pair.seq_len], "metric": cfg.metric,
             "example": [p.clean[0], p.corrupted[0]]}
    return [_PairBatch(pair)], cfg.metric, about


@dataclass(frozen=True)
class _PairBatch:
    pair: Any

    @property
    def seq_len(self) -> int:
        return self.pair.seq_len

    @property
    def clean(self) -> Tensor:
        return self.pair.clean


def _grid(cfg: SweepConfig, model: Any, kind: str, batches: list[Any]) -> Any:
    from mechpatch.patching.sweeps import make_grid

    lens = sorted({b.seq_len for b in batches})
    labels = model.to_str_tokens(batches[0].clean[0]) if model.tokenizer is not None else None
    grid = make_grid(model, kind, lens[0], cfg.by_position, cfg.layers, cfg.positions, labels)
    if len(lens) > 1 and "pos" in grid.axes:
        raise ShapeMismatchError(
            f"sweep kind {kind!r} is resolved by position, but the prompts have different lengths {lens}: restrict "
            "the task to one length (e.g. IOI templates: [0]) or set by_position: false"
        )
    return grid


def _run_chunk(cfg: SweepConfig, model: Any, cells: tuple, batches: list[Any], metric: Any,
               method: str) -> dict[str, Tensor]:
    """One chunk of cells over every prompt batch: values [cell, prompt], no-op flags, the unpatched baselines."""
    from mechpatch.patching.sweeps import Grid, sweep

    parts = [
        sweep(model, b.pair, Grid.of(cells), metric=metric, direction=cfg.direction,
              intervention=cfg.make_intervention(), method=method, batch_size=cfg.batch_size, progress=False)
        for b in batches
    ]
    # the engine's dtype is kept (float64 models give float64 values; low precision is measured in float32)
    return {
        "values": torch.cat([r.values for r in parts], -1),
        "noop": torch.stack([r.noop for r in parts]).all(0),
        "clean": torch.cat([r.clean for r in parts]),
        "corrupted": torch.cat([r.corrupted for r in parts]),
    }


@dataclass(frozen=True, eq=False)
class SweepJob:
    """A prepared sweep (model loaded, prompts and grids built): computes any chunk ``(kind, index)`` of it, in the
    driver or in a worker (:mod:`mechpatch.runs.executor`)."""

    cfg: SweepConfig
    model: Any
    prep: _Prepared

    @classmethod
    def load(cls, cfg: SweepConfig) -> "SweepJob":
        """Load the model and prepare the run exactly as :func:`run_sweep` does (same seed)."""
        torch.manual_seed(cfg.seed)
        model = load_source(cfg.model, cfg.device, cfg.dtype)
        return cls(cfg, model, _prepare(cfg, model))

    @property
    def shards(self) -> list[Optional[tuple[int, int, int]]]:
        """The chunks of prompts, ``(batch, lo, hi)`` each (``[None]``: every prompt of every batch, one chunk)."""
        size = self.cfg.prompt_chunk
        if size is None:
            return [None]
        return [(i, lo, min(b.pair.n_prompts, lo + size)) for i, b in enumerate(self.prep.batches)
                for lo in range(0, b.pair.n_prompts, size)]

    def n_units(self, kind: str) -> int:
        """Units of one kind: chunks of cells x chunks of prompts (unit ``i`` is cell chunk ``i // S``, prompt
        chunk ``i % S``)."""
        return -(-len(self.prep.grids[kind].cells) // self.cfg.chunk_size) * len(self.shards)

    def cells(self, unit: tuple[str, int]) -> tuple:
        kind, i = unit
        size, c = self.cfg.chunk_size, i // len(self.shards)
        return self.prep.grids[kind].cells[c * size:(c + 1) * size]

    def run_unit(self, unit: tuple[str, int], payload: None = None) -> dict[str, Tensor]:
        """One chunk of cells over one chunk of prompts (a sweep's units carry no payload: both follow from it)."""
        p, shard = self.prep, self.shards[unit[1] % len(self.shards)]
        batches = p.batches
        if shard is not None:
            b, lo, hi = shard
            batches = [_PairBatch(_some_prompts(p.batches[b].pair, lo, hi))]
        out = _run_chunk(self.cfg, self.model, self.cells(unit), batches, p.metric, p.method)
        return {k: v.cpu() for k, v in out.items()}


def worker_job(config: dict[str, Any]) -> SweepJob:
    """A Ray worker's job: the sweep of a normalized config, loaded and prepared (:mod:`mechpatch.runs.executor`)."""
    return SweepJob.load(from_dict(SweepConfig, config))


def _run_chunks(store: RunStore, cfg: SweepConfig, job: SweepJob, quiet: bool) -> tuple[dict[str, PatchResult], int]:
    """Every kind's chunks: those the store holds, the rest computed by the config's executor and saved as each
    arrives (one progress bar over all of them). Returns each kind's result and how many chunks were computed."""
    from mechpatch._progress import progress_bar
    from mechpatch.runs.executor import run_executor

    grids, n_shards = job.prep.grids, len(job.shards)
    chunks = {kind: [store.load_chunk(kind, i) for i in range(job.n_units(kind))] for kind in grids}
    todo = [(kind, i) for kind, cs in chunks.items() for i, c in enumerate(cs) if c is None]
    total = sum(len(g.cells) for g in grids.values()) * n_shards
    done_cells = total - sum(len(job.cells(u)) for u in todo)
    bar = progress_bar(total=total, initial=done_cells, desc="sweep", unit="cell" if n_shards == 1 else "cell-chunk",
                       enabled=not quiet)

    def save(unit: tuple[str, int], tensors: dict[str, Tensor]) -> None:
        store.save_chunk(unit[0], unit[1], tensors)
        chunks[unit[0]][unit[1]] = tensors
        bar.update(len(job.cells(unit)))

    with run_executor(store, cfg.executor, lambda: job, "mechpatch.runs.sweep:worker_job") as ex:
        ex.run(todo, save)
    bar.close()
    return {kind: _assemble(cfg, job, kind, cs) for kind, cs in chunks.items()}, len(todo)


def _assemble(cfg: SweepConfig, job: SweepJob, kind: str, chunks: list[dict[str, Tensor]]) -> PatchResult:
    """One kind's result from its chunks (their unpatched baselines must agree): each chunk of cells's chunks of
    prompts joined in order first."""
    grid, metric, n = job.prep.grids[kind], job.prep.metric, len(job.shards)
    if n > 1:
        chunks = [_join_prompts(chunks[c:c + n]) for c in range(0, len(chunks), n)]
    first = chunks[0]
    for i, c in enumerate(chunks):
        if not (torch.equal(c["clean"], first["clean"]) and torch.equal(c["corrupted"], first["corrupted"])):
            raise RunError(f"chunk {i} of {kind!r} has other unpatched baselines than chunk 0: the chunks were not "
                           "computed alike (another device or library version?); rerun with --force")
    return PatchResult(
        values=torch.cat([c["values"] for c in chunks]).reshape(*grid.shape, -1),
        axes=grid.axes, labels=grid.labels, sites=grid.cells,
        clean=first["clean"], corrupted=first["corrupted"],
        noop=torch.cat([c["noop"] for c in chunks]).reshape(grid.shape),
        metric=metric if isinstance(metric, str) else metric.name, direction=cfg.direction,
        intervention=type(cfg.make_intervention()).__name__,
        meta={"method": job.prep.method, "kind": kind,
              **({} if job.prep.fallback is None else {"fallback_reason": job.prep.fallback})},
    )


def _join_prompts(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """One chunk of cells from its chunks of prompts, in prompt order (a cell is a no-op where it is in all)."""
    return {"values": torch.cat([p["values"] for p in parts], -1),
            "noop": torch.stack([p["noop"] for p in parts]).all(0),
            "clean": torch.cat([p["clean"] for p in parts]), "corrupted": torch.cat([p["corrupted"] for p in parts])}


# ----------------------------------------------------------------------------- files <-> results


def write_result(store: RunStore, kind: str, r: PatchResult) -> None:
    """Write one sweep result into a run: ``tensors/<kind>.safetensors`` (values, no-op flags, baselines; axes,
    labels and sites in the metadata), ``results/<kind>.parquet`` (cell x prompt) and ``<kind>_cells.parquet``."""
    meta = {
        "kind": kind, "axes": json.dumps(r.axes), "labels": json.dumps(r.labels),
        "sites": json.dumps([[s.label for s in cell] for cell in r.sites]), "metric": r.metric,
        "direction": r.direction, "intervention": r.intervention, "method": str(r.meta.get("method", "")),
    }
    if r.meta.get("fallback_reason"):  # why "auto" ran the hooks path
        meta["fallback_reason"] = str(r.meta["fallback_reason"])
    name = slug(kind)
    store.write_tensors(name, {"values": r.values, "noop": r.noop, "clean": r.clean, "corrupted": r.corrupted}, meta)
    store.write_table(name, _tidy(kind, r))
    store.write_table(f"{name}_cells", _cells(kind, r))


def load_sweep(run_dir: str) -> SweepRun:
    """Read a finished sweep run back, its files checked against the hashes its manifest recorded.

    Raises:
        RunError: the directory holds no sweep, or the sweep has not finished.
        DamagedFileError: a result file changed since the run finished (named in the message).
    """
    manifest = read_manifest(run_dir)
    if manifest.get("command") == "sweep" and manifest.get("status") != "finished":
        raise RunError(f"the sweep in {run_dir!r} has not finished; run the same command again to resume it")
    verify_finished(run_dir, manifest)
    return _read(run_dir)


def _read(run_dir: str) -> SweepRun:
    manifest = read_manifest(run_dir)
    if manifest["command"] != "sweep":
        raise RunError(f"{run_dir!r} holds a {manifest['command']!r} run, not a sweep")
    results = {}
    for kind in manifest["config"]["kinds"]:
        path = os.path.join(run_dir, "tensors", f"{slug(kind)}.safetensors")
        if not os.path.exists(path):
            raise RunError(f"{run_dir!r} has no results for {kind!r} yet: the run has not finished; run the same "
                           "command again to resume it")
        results[kind] = read_result(path)
    return SweepRun(os.fspath(run_dir), manifest, results)


def _normalized(r: PatchResult) -> Optional[Tensor]:
    try:
        return r.normalized()
    except ZeroDivisionError:
        return None


def _tidy(kind: str, r: PatchResult) -> Any:
    frame = r.to_dataframe()
    frame.insert(0, "kind", kind)
    for key in ("metric", "direction", "intervention"):
        frame[key] = getattr(r, key)
    frame.attrs.clear()
    return frame


def _cells(kind: str, r: PatchResult) -> Any:
    """One row per grid cell: labels, sites, no-op flag, prompt mean, standard error, normalised effect."""
    frame = _tidy(kind, r)
    out = frame[frame["prompt"] == 0].drop(columns=["prompt", "value"]).reset_index(drop=True)
    out["n_prompts"] = r.n_prompts
    out["mean"] = r.mean().reshape(-1).double().numpy()
    out["sem"] = r.sem().reshape(-1).double().numpy()
    norm = _normalized(r)
    out["normalized"] = float("nan") if norm is None else norm.reshape(-1).double().numpy()
    out["effect"] = effect(r).reshape(-1).double().numpy()
    return out


def effect(r: PatchResult) -> Tensor:
    """Each cell's prompt-mean change of the metric from the unpatched run it patched (the corrupted run when
    denoising, the clean run when noising), shape ``grid_shape``: what a patch did, in metric units."""
    base = r.corrupted if r.direction == "denoise" else r.clean
    return r.mean() - base.mean()


def _top_cells(r: PatchResult, k: int) -> str:
    values = effect(r).reshape(-1)
    order = torch.argsort(values.abs(), descending=True, stable=True)[:k]
    return "; ".join(f"{' + '.join(s.label for s in r.sites[int(i)])}: {float(values[i]):+.4g}" for i in order)


def _figures(run: SweepRun) -> dict[str, Any]:
    from mechpatch.plotting import patch_heatmap

    figs = {}
    for kind, r in run.results.items():
        view = as_2d(r)
        figs[kind] = patch_heatmap(view, normalized=has_normalized(r),
                                   title=f"{kind}: {r.direction} ({r.intervention}), {r.metric}")
    return figs


def write_sweep_report(run_dir: str) -> dict[str, Any]:
    """Write a sweep run's ``report.json`` (headline numbers, one heatmap section per kind) and draw the report.

    Reads only the run directory (no model, no recomputation). Returns the files written (see
    :func:`mechpatch.runs.report.build_report`).
    """
    from mechpatch.runs.report import build_report, section, write_report_spec

    run = _read(run_dir)
    sections = [section("patch", slug(k), f"tensors/{slug(k)}.safetensors", f"{k} ({' x '.join(r.axes)})")
                for k, r in run.results.items()]
    write_report_spec(run_dir, _title(run.manifest), _headline(run), sections)
    written = build_report(run_dir)
    return {**written, "tensors": [f"tensors/{slug(k)}.safetensors" for k in run.results],
            "results": [f"results/{slug(k)}{s}.parquet" for k in run.results for s in ("", "_cells")]}


def _title(manifest: dict[str, Any]) -> str:
    cfg = manifest["config"]
    what = cfg["task"]["name"] if cfg.get("task") else "explicit prompts"
    return f"patching sweep: {cfg['model']} / {what}"


def _headline(run: SweepRun) -> dict[str, Any]:
    m, cfg = run.manifest, run.manifest["config"]
    first = next(iter(run.results.values()))
    n = first.n_prompts
    sem = float(first.clean.std() / n ** 0.5) if n > 1 else float("nan")
    prompts = m.get("prompts", {})
    head: dict[str, Any] = {
        "model": m["model"]["repr"],
        "weights sha256": m["model"]["weights_sha256"],
        "prompts": f"{n} ({prompts.get('description') or prompts.get('example', '')})",
        "metric": f"{first.metric} ({cfg['direction']}, {first.intervention})",
        f"clean {first.metric}": f"{float(first.clean.mean()):.4f} ± {sem:.4f}",
        f"corrupted {first.metric}": f"{float(first.corrupted.mean()):.4f}",
    }
    for kind, r in run.results.items():
        cells = r.noop.numel()
        head[f"{kind}: largest effects ({r.metric} change)"] = _top_cells(r, 5)
        head[f"{kind}: cells"] = f"{cells} ({int(r.noop.sum())} no-op), engine {r.meta.get('method')}"
    head["config hash"] = m["config_hash"]
    head["seed"] = m["seed"]
    head["compute seconds (last attempt)"] = m.get("compute_seconds")
    head["versions"] = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    return head


__all__ = [
    "INTERVENTION_KINDS", "PromptSpec", "SweepConfig", "SweepRun", "TaskSpec", "as_2d", "effect", "has_normalized",
    "load_sweep", "plan_sweep", "read_result", "run_sweep", "write_result", "write_sweep_report",
]
