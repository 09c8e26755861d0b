"""Config-driven circuit discovery on a model and task (``mechpatch discover CONFIG``).

Outputs in the run directory (layout: :mod:`mechpatch.runs.store`): ``circuit.json`` (the ComponentGraph:
scores, circuit, provenance), ``circuit_mib.json`` (MIB's submission format, where the model has one),
``circuit.dot`` (Graphviz), ``results/edges.parquet`` (one row per edge: score, in circuit),
``results/faithfulness.parquet`` (f(C) per circuit size), ``figure_graph.html``,
``figure_faithfulness.html``, ``summary.json`` and ``report.html``. For the tracr models the ground-truth
edges are compared (edge ROC AUC, precision, recall).

ACDC runs resume: the search saves its state in the run directory (``chunks/acdc/00000.safetensors``,
atomically, tagged with the config hash) after receivers, at most every second, and at its end; a run
killed at any moment and started again with the same command goes on from the last saved receiver and
writes results bitwise identical to an uninterrupted run's (see :func:`mechpatch.circuit.acdc`). The
manifest's ``resumed_at_receiver`` says where the last attempt began (0: from the start).

EAP and EAP-IG score the prompts in chunks of ``chunk_size`` prompts (default: all in one), each saved in
``chunks/eap/`` as it completes (float64 sums over its prompts, :class:`~mechpatch.attribution.edges.
PreparedAttribution`), computed by the config's ``executor``: here, or on Ray workers that each take a chunk of
prompts (:mod:`mechpatch.runs.executor`). The driver adds the chunks in prompt order, so the scores depend on
``chunk_size`` (part of the config hash) and not on where the chunks ran; a killed run resumes from its saved
chunks. ACDC's decisions are sequential; with ``chunk_size`` each of its forwards is cut into units of that many
candidate rows, which the executor's workers (each holding the prepared clean and corrupted runs) compute at once
(:func:`mechpatch.circuit.acdc`). A finished run is not recomputed (unless ``force``).

>>> from mechpatch.config import from_dict
>>> cfg = from_dict(DiscoverConfig, {"model": "tracr-reverse", "task": "tracr-reverse", "ablation": "zero"})
>>> cfg.method, cfg.metric, cfg.tau
('acdc', 'task', 0.05)
"""

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional


from mechpatch.errors import MechpatchError
from mechpatch.runs.common import (
    DTYPES, check_choice, check_device, check_model, check_task_args, one_batch_task, plan_task_run, read_json,
    run_task_command,
)
from mechpatch.runs.store import read_manifest

#: the `ablation:` names a discover config accepts (turned into objects by patching.interventions.from_name)
ABLATIONS = ("corrupted", "zero", "mean")


@dataclass(frozen=True)
class DiscoverConfig:
    """One discovery run.

    Attributes:
        model: a bundled model (``mechpatch models``) or a directory holding a saved model.
        task, task_args: a task of :data:`mechpatch.tasks.TASKS` and its builder's arguments (one prompt length).
        method: a discovery algorithm of :data:`mechpatch.circuit.DISCOVERY`.
        metric: ``task`` (the task's own metric) or ``kl_div``.
        ablation: what a removed edge carries: ``corrupted`` (the corrupted prompts), ``zero`` or ``mean``.
        tau: the threshold (ACDC: largest damage an edge may do and still be removed).
        per_position: resolve edges by token position (``L0H2@3->L1H0.k@3``; attribution methods only): the
            circuit keeps an edge at the positions where it matters, and its faithfulness is measured so.
        device, dtype, seed: where and how it runs; ``seed`` seeds torch and the task unless its args set one.
        out_dir: the run directory.
        chunk_size: the unit of work an executor shares out (part of the config hash: it sets how the forwards are
            cut): EAP and EAP-IG, prompts per chunk of the attribution pass (each saved as it completes); ACDC,
            candidate rows per forward (null: all prompts, or whole forwards, in one).
        executor: ``local`` (this process) or ``{ray: {address, workers, cpus_per_worker, gpus_per_worker}}``
            (:mod:`mechpatch.runs.executor`, needs ``chunk_size``): where the units run; not part of the config
            hash: results do not depend on it.
    """

    model: str = "induction-2l"
    task: str = "induction"
    task_args: dict = field(default_factory=dict)
    method: str = "acdc"
    metric: str = "task"
    ablation: str = "corrupted"
    tau: float = 0.05
    per_position: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    out_dir: str = "out/discover"
    chunk_size: Optional[int] = None
    executor: Any = "local"

    def __post_init__(self) -> None:
        from mechpatch.circuit import DISCOVERY
        from mechpatch.runs.executor import parse_executor
        from mechpatch.tasks import TASKS

        object.__setattr__(self, "executor", parse_executor(self.executor))
        check_model(self.model)
        for key, valid in (("task", TASKS), ("method", DISCOVERY), ("metric", ("task", "kl_div")),
                           ("ablation", ABLATIONS), ("dtype", DTYPES)):
            check_choice(key, getattr(self, key), valid)
        check_device(self.device)
        if not isinstance(self.per_position, bool):
            raise ValueError(f"per_position must be true or false; got {self.per_position!r}")
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not math.isfinite(self.tau) \
                or self.tau < 0:
            raise ValueError(f"tau must be a finite number >= 0; got {self.tau!r}")
        if self.per_position and self.method == "acdc":
            raise ValueError("per_position needs an attribution method ('eap' or 'eap-ig'): ACDC prunes whole "
                             "edges")
        if self.chunk_size is not None and (isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int)
                                            or self.chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer (prompts per chunk) or null; got "
                             f"{self.chunk_size!r}")
        if self.executor.kind != "local" and self.chunk_size is None:
            raise ValueError("executor: ray shares out units of chunk_size (prompts for EAP and EAP-IG, candidate "
                             "rows of a forward for ACDC); set chunk_size (e.g. 8)")
        object.__setattr__(self, "task_args", check_task_args(self.task, self.task_args))


def run_discover(cfg: DiscoverConfig, *, force: bool = False, quiet: bool = False,
                 repair: bool = False) -> dict[str, Any]:
    """Run (or skip, when finished) the discovery ``cfg`` describes; returns its summary (``summary.json``).

    Everything is checked against the model (:func:`plan_discover`) before the run directory is locked and its
    manifest written; ``repair`` recomputes damaged files instead of refusing them.

    Raises:
        RunConflictError: ``cfg.out_dir`` holds another config's run (and not ``force``).
        ShapeMismatchError: the task has prompts of several lengths (discovery needs one).
        DamagedFileError: a file of the run changed since it was written (and not ``repair``/``force``).
    """
    from mechpatch.runs.executor import check_executor

    check_executor(cfg.executor)
    return run_task_command(cfg, "discover", "discovery needs", _plan, _run, force=force, quiet=quiet,
                            repair=repair)


def run_discoveries(cfgs: Sequence[DiscoverConfig], *, executor: Any = "local", force: bool = False,
                    quiet: bool = False, repair: bool = False) -> list[dict[str, Any]]:
    """Several discoveries of one model (other tasks, seeds, thresholds, methods), each in its own run directory,
    their searches computed at once: each config's whole search (ACDC's, or EAP's attribution pass) is one unit of
    ``executor``'s workers, and the driver finishes each run (circuit, faithfulness, report) as its unit arrives.

    A config's run is the one :func:`run_discover` would write, bit for bit (its search's state is handed to it as a
    saved chunk is). Every config is checked (:func:`plan_discover`) before any work; finished runs are skipped.
    Returns the summaries in the configs' order.

    Raises:
        RunError: the configs name other models, devices or dtypes, share a run directory, or set an executor of
            their own (in a batch, each search is one unit of ``executor``).
    """
    from mechpatch.runs.common import load_source
    from mechpatch.runs.executor import JobSpec, check_executor, describe, open_executor, parse_executor
    from mechpatch.runs.store import RunError, RunStore, normalize_config, weights_hash

    executor = parse_executor(executor)
    cfgs = list(cfgs)
    if not cfgs:
        raise RunError("run_discoveries needs at least one config")
    for what in ("model", "device", "dtype"):
        values = sorted({str(getattr(c, what)) for c in cfgs})
        if len(values) > 1:
            raise RunError(f"a batch of discoveries runs one model: the configs name {what}s {', '.join(values)}; "
                           "run them as separate batches")
    dirs = [os.path.normpath(c.out_dir) for c in cfgs]
    if len(set(dirs)) < len(dirs):
        raise RunError(f"two configs of the batch write the same run directory "
                       f"{next(d for d in dirs if dirs.count(d) > 1)!r}: give each its own out_dir")
    own = [c.out_dir for c in cfgs if c.executor.kind != "local"]
    if own:
        raise RunError(f"in a batch each search is one unit of the batch's executor; {own[0]!r}'s config sets an "
                       "executor of its own: drop it (on the command line, --executor applies to the batch)")
    check_executor(executor)
    pending = [i for i, c in enumerate(cfgs) if not RunStore(c.out_dir, "discover", c, repair=repair).check(force)]
    if not pending:
        return [read_json(os.path.join(c.out_dir, "summary.json")) for c in cfgs]
    import torch

    torch.manual_seed(cfgs[0].seed)
    model = load_source(cfgs[0].model, cfgs[0].device, cfgs[0].dtype)
    for i in pending:
        plan_discover(cfgs[i], model)  # every config checked against the model before any work
    summaries: dict[int, dict[str, Any]] = {}

    def save(unit: tuple[str, int], tensors: dict[str, Any]) -> None:
        given: dict[tuple[str, int], dict[str, Any]] = {}
        for key, t in tensors.items():
            group, k, name = key.split("/")
            given.setdefault((group, int(k)), {})[name] = t
        cfg = cfgs[unit[1]]
        summaries[unit[1]] = run_task_command(cfg, "discover", "discovery needs", _plan,
                                              lambda *a: _run(*a, given=given, batch=describe(executor)),
                                              force=force, quiet=quiet, repair=repair, model=model)

    spec = lambda: JobSpec("discover-batch", {"configs": [normalize_config(cfgs[i]) for i in pending]},  # noqa: E731
                           weights_hash(model), "mechpatch.runs.discover:batch_job")
    job = BatchJob(model, [cfgs[i] for i in pending])
    with open_executor(executor, lambda: job, spec) as ex:
        ex.run([("search", j) for j in range(len(pending))],
               lambda unit, tensors: save(("search", pending[unit[1]]), tensors))
    return [summaries[i] if i in summaries else read_json(os.path.join(c.out_dir, "summary.json"))
            for i, c in enumerate(cfgs)]


@dataclass(frozen=True, eq=False)
class BatchJob:
    """The searches of a batch of discoveries on one model (:func:`run_discoveries`): unit ``("search", i)`` runs
    config ``i``'s whole search and returns its chunks as tensors named ``group/index/name``."""

    model: Any
    cfgs: list

    def run_unit(self, unit: tuple[str, int], payload: None = None) -> dict[str, Any]:
        from mechpatch.chunks import MemoryChunks

        cfg = self.cfgs[unit[1]]
        task, b = one_batch_task(cfg, self.model, "discovery needs")
        chunks = MemoryChunks()
        if cfg.method == "acdc":
            _acdc(cfg, self.model, task, b, chunks, None, False)
        else:
            job = DiscoverJob.prepare(cfg, self.model, task, b)
            for k in range(len(job.ranges)):
                chunks.save_chunk("eap", k, job.run_unit(("eap", k)))
        return {f"{group}/{k}/{name}": t.cpu() for (group, k), tensors in chunks.chunks.items()
                for name, t in tensors.items()}


def batch_job(config: dict[str, Any]) -> BatchJob:
    """A Ray worker's job for :func:`run_discoveries`: the batch's model (loaded as the driver loaded it) and its
    configs."""
    import torch

    from mechpatch.config import from_dict
    from mechpatch.runs.common import load_source

    cfgs = [from_dict(DiscoverConfig, c) for c in config["configs"]]
    torch.manual_seed(cfgs[0].seed)
    return BatchJob(load_source(cfgs[0].model, cfgs[0].device, cfgs[0].dtype), cfgs)


def plan_discover(cfg: DiscoverConfig, model: Any = None) -> Any:
    """What :func:`run_discover` would compute (prompts, edges, forwards, memory), checked against the model;
    writes nothing (``mechpatch discover CONFIG --dry-run``). Loads the model unless it is given."""
    store, model, b = plan_task_run(cfg, "discover", "discovery needs", model)
    return _plan(cfg, model, b, store)


def _plan(cfg: DiscoverConfig, model: Any, b: Any, store: Any) -> Any:
    from mechpatch.circuit.components import graph_layout
    from mechpatch.runs.plan import RunPlan, check_memory, prompt_bytes, store_status

    n_edges = graph_layout(model.spec).n_edges
    n_pos = b.seq_len if cfg.per_position else 1
    memory = 3 * b.n_prompts * prompt_bytes(model, b.seq_len)  # EAP keeps gradients beside the activations
    check_memory(memory, f"discovery on {b.n_prompts} prompts of {b.seq_len} tokens")
    # ACDC evaluates each edge at most once (batched several to a forward); EAP is one pass per IG step; both
    # then measure the circuit and its faithfulness curve (a forward per size)
    forwards = n_edges + 2 if cfg.method == "acdc" else 16
    rows = (("prompts", f"{b.n_prompts} of {b.seq_len} tokens ({cfg.task})"),
            ("method", f"{cfg.method}, tau {cfg.tau}, metric {cfg.metric}, ablation {cfg.ablation}"),
            ("edges", f"{n_edges * n_pos}" + (f" ({n_edges} edges x {n_pos} positions)" if cfg.per_position else "")))
    if cfg.method != "acdc":
        from mechpatch.runs.executor import plan_row

        n_chunks = len(prompt_ranges(b.n_prompts, cfg.chunk_size))
        rows += (("chunks", f"{n_chunks} of at most {cfg.chunk_size or b.n_prompts} prompts"),)
        rows += tuple(r for r in (plan_row(cfg.executor, n_chunks),) if r is not None)
    return RunPlan("discover", cfg.out_dir, cfg.model, rows, forwards + 32, memory, store_status(store))


def prompt_ranges(n: int, size: Optional[int]) -> list[tuple[int, int]]:
    """The chunks ``[lo, hi)`` of ``n`` prompts, ``size`` each (None: one chunk).

    >>> prompt_ranges(5, 2), prompt_ranges(5, None)
    ([(0, 2), (2, 4), (4, 5)], [(0, 5)])
    """
    size = size or n
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


def _arguments(cfg: DiscoverConfig, task: Any, b: Any) -> tuple[Any, Any, Any]:
    """The metric, intervention and source the config names, for the task's batch ``b``."""
    from mechpatch.patching.interventions import from_name, needs_source

    metric = task.metric if cfg.metric == "task" else "kl_div"
    intervention = from_name(cfg.ablation)  # the config's name ("corrupted", "zero", "mean") -> the object
    return metric, intervention, (b.corrupted if needs_source(intervention) else None)


@dataclass(frozen=True, eq=False)
class DiscoverJob:
    """A discovery run's search, prepared (model loaded; EAP's base run done, or ACDC's clean and corrupted runs):
    computes any chunk ``("eap", k)`` of prompts, or a unit of ACDC's candidate rows (its payload), in the driver or
    in a worker (:mod:`mechpatch.runs.executor`)."""

    cfg: DiscoverConfig
    model: Any
    prepared: Any  # PreparedAttribution

    @classmethod
    def prepare(cls, cfg: DiscoverConfig, model: Any, task: Any, b: Any) -> "DiscoverJob":
        """EAP's :class:`~mechpatch.attribution.edges.PreparedAttribution`, or ACDC's edge runner (the clean and
        corrupted runs), built as :func:`~mechpatch.circuit.acdc` builds it."""
        metric, intervention, source = _arguments(cfg, task, b)
        if cfg.method == "acdc":
            from mechpatch.circuit.edges import make_runner
            from mechpatch.patching.metrics import as_metric

            return cls(cfg, model, make_runner(model, b.clean, metric=as_metric(metric), source=source,
                                               intervention=intervention, answers=b.answers))
        from mechpatch.attribution.edges import PreparedAttribution
        from mechpatch.circuit.eap import ATTRIBUTION

        return cls(cfg, model, PreparedAttribution(model, b.clean, metric=metric, source=source,
                                                   intervention=intervention, answers=b.answers,
                                                   per_position=cfg.per_position, **ATTRIBUTION[cfg.method]))

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return prompt_ranges(self.prepared.n_prompts, self.cfg.chunk_size)

    def run_unit(self, unit: tuple[str, int], payload: Any = None) -> dict[str, Any]:
        """EAP: chunk ``unit[1]``'s float64 score sums, its passes and its prompt range. ACDC: the payload's
        candidate rows (:func:`~mechpatch.circuit.discovery.acdc_rows`)."""
        import torch

        if payload is not None:
            from mechpatch.runs.executor import resolve

            function, kwargs = payload
            return resolve(function)(self.prepared, **kwargs)
        lo, hi = self.ranges[unit[1]]
        return {**self.prepared.prompt_sums(lo, hi), "prompts": torch.tensor([lo, hi])}


def worker_job(config: dict[str, Any]) -> DiscoverJob:
    """A Ray worker's job: the discovery of a normalized config, its model loaded and task built as the driver did
    (:func:`~mechpatch.runs.common.prepare_task_run`: torch seeded, then the model, then the task)."""
    import torch

    from mechpatch.config import from_dict
    from mechpatch.runs.common import load_source, one_batch_task

    cfg = from_dict(DiscoverConfig, config)
    torch.manual_seed(cfg.seed)
    model = load_source(cfg.model, cfg.device, cfg.dtype)
    task, b = one_batch_task(cfg, model, "discovery needs")
    return DiscoverJob.prepare(cfg, model, task, b)


def _acdc(cfg: DiscoverConfig, model: Any, task: Any, b: Any, chunks: Any, executor: Any, progress: bool) -> Any:
    """The config's ACDC search (its state kept in ``chunks``; ``executor`` computes its units of rows)."""
    from mechpatch.circuit import discover

    metric, intervention, source = _arguments(cfg, task, b)
    return discover("acdc", model, b.clean, metric=metric, source=source, intervention=intervention, tau=cfg.tau,
                    answers=b.answers, chunks=chunks, rows_per_unit=cfg.chunk_size, executor=executor,
                    progress=progress)


#: the builder of :class:`DiscoverJob` in a Ray worker
WORKER_JOB = "mechpatch.runs.discover:worker_job"


def _attribution(cfg: DiscoverConfig, store: Any, job: DiscoverJob, quiet: bool) -> Any:
    """The run's edge attribution from its chunks of prompts: those the store holds (checked), the rest computed by
    the config's executor and saved as each arrives."""
    import torch

    from mechpatch._progress import progress_bar
    from mechpatch.chunks import CheckpointError
    from mechpatch.runs.executor import run_executor

    start = time.time()
    ranges = job.ranges
    parts = [store.load_chunk("eap", k) for k in range(len(ranges))]
    for k, part in enumerate(parts):
        if part is not None and (set(part) != {"scores", "passes", "prompts"}
                                 or part["prompts"].tolist() != list(ranges[k])):
            raise CheckpointError(f"chunk {k} of 'eap' in {cfg.out_dir!r} is not the chunk of prompts "
                                  f"{ranges[k][0]}:{ranges[k][1]} of this run; start afresh (--force)")
    todo = [("eap", k) for k, part in enumerate(parts) if part is None]
    bar = progress_bar(total=job.prepared.n_prompts, initial=job.prepared.n_prompts - sum(
        ranges[k][1] - ranges[k][0] for _, k in todo), desc="attribution", unit="prompt", enabled=not quiet)

    def save(unit: tuple[str, int], tensors: dict[str, torch.Tensor]) -> None:
        store.save_chunk(unit[0], unit[1], tensors)
        parts[unit[1]] = tensors
        bar.update(ranges[unit[1]][1] - ranges[unit[1]][0])

    with run_executor(store, cfg.executor, lambda: job, WORKER_JOB) as ex:
        ex.run(todo, save)
    bar.close()
    store.update(chunks_loaded_last_attempt=len(ranges) - len(todo), chunks_computed_last_attempt=len(todo))
    return job.prepared.result(parts, time.time() - start)


def _run(cfg: DiscoverConfig, store: Any, say: Any, model: Any, task: Any, b: Any, plan: Any, start: float,
         quiet: bool, given: Optional[dict[tuple[str, int], Any]] = None,
         batch: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The run; ``given``: chunks a worker of a batch computed (:func:`run_discoveries`, whose executor ``batch``
    describes), saved first and then used as any saved chunk is (checked, not recomputed)."""
    from mechpatch.circuit import discover, faithfulness_curve
    from mechpatch.report import write_json, write_text

    for (group, k), tensors in (given or {}).items():
        store.save_chunk(group, k, tensors)
    if batch is not None:
        store.note_attempt(search_computed_by=batch)

    metric, intervention, source = _arguments(cfg, task, b)
    if cfg.method == "acdc":  # the search checkpoints itself; the executor computes its forwards' units of rows
        from mechpatch.circuit.discovery import CHECKPOINT_GROUP
        from mechpatch.runs.executor import run_executor

        state = store.load_chunk(CHECKPOINT_GROUP, 0)
        store.update(resumed_at_receiver=0 if state is None else int(state["next"][0]))
        # the local executor computes the units in the search itself (it never needs a job of its own)
        with run_executor(store, cfg.executor, lambda: None, WORKER_JOB) as ex:
            res = _acdc(cfg, model, task, b, store, None if cfg.executor.kind == "local" else ex, not quiet)
    else:  # EAP, EAP-IG: the attribution by chunks of prompts, on the executor
        res = discover(cfg.method, model, b.clean, metric=metric, source=source, intervention=intervention,
                       tau=cfg.tau, answers=b.answers, per_position=cfg.per_position,
                       attribution=_attribution(cfg, store, DiscoverJob.prepare(cfg, model, task, b), quiet))
    say(res)
    out = cfg.out_dir
    graph = res.to_graph().with_meta(task=task.description, prompts=b.n_prompts, config=asdict(cfg))
    graph.to_json(os.path.join(out, "circuit.json"))
    write_text(os.path.join(out, "circuit.dot"), graph.to_dot())
    outputs = ["circuit.json", "circuit.dot"]
    try:
        graph.to_mib(os.path.join(out, "circuit_mib.json"), nan_score=0.0)
        outputs.append("circuit_mib.json")
    except MechpatchError as exc:  # attention-only models have no MIB form
        say(f"no MIB export: {exc}")
    curve = faithfulness_curve(model, b.clean, res.scores, metric=metric, source=source, intervention=intervention,
                               answers=b.answers)
    summary: dict[str, Any] = {
        "model": repr(model), "task": repr(task), "method": res.method, "metric": res.metric, "ablation": cfg.ablation,
        "tau": cfg.tau, "per_position": cfg.per_position, "edges_total": len(res.scores), "edges_kept": len(res.edges),
        "circuit": [e.label for e in res.edges], "full_metric": res.full_metric,
        "circuit_metric": res.final_metric, "forwards": res.forwards, "evaluations": res.evaluations,
        "discovery_seconds": round(res.seconds, 2),
        "faithfulness": dict(zip(map(str, curve.sizes), curve.faithfulness)),
        "CPR": curve.cpr, "CMD": curve.cmd, "outputs": outputs,
    }
    if cfg.model.startswith("tracr-"):
        from mechpatch.circuit.components import as_edge
        from mechpatch.zoo.tracr import ground_truth_edges

        truth = {as_edge(e) for e in ground_truth_edges(cfg.model)}
        kept = set(res.edges)
        summary["ground_truth"] = {"edges": len(truth), "roc_auc": graph.roc_auc(truth),
                                   "precision": len(kept & truth) / max(1, len(kept)),
                                   "recall": len(kept & truth) / len(truth)}
    results = [store.write_table("edges", edge_table(graph)), store.write_table("faithfulness", curve_table(curve))]
    summary["seconds"] = round(time.time() - start, 1)
    write_json(os.path.join(out, "summary.json"), summary)
    written = write_discover_report(out)
    store.finish(results=results, outputs=outputs + ["summary.json"], **written)
    say(json.dumps({k: summary[k] for k in ("edges_total", "edges_kept", "CPR", "CMD", "seconds")}))
    return summary


def edge_table(graph: Any) -> Any:
    """One row per edge of the graph: label, sender, receiver (and its q/k/v input), score (NaN: not scored),
    whether it is in the circuit."""
    import pandas as pd

    scores = graph.edge_scores(scored_only=False)
    circuit = {e.label for e in graph.in_circuit_edges()}
    rows = [{"edge": e.label, "sender": e.sender.label, "receiver": e.receiver.label, "input": e.input or "",
             "score": scores[e.label], "in_circuit": e.label in circuit} for e in graph.edges]
    return pd.DataFrame(rows)


def curve_table(curve: Any) -> Any:
    """A faithfulness curve as a table: one row per circuit size (fraction, edges, f(C), the circuit's metric)."""
    import pandas as pd

    return pd.DataFrame({"size": list(curve.sizes), "n_edges": list(curve.n_edges),
                         "faithfulness": list(curve.faithfulness), "metric_circuit": list(curve.metric_circuits),
                         "metric_full": curve.metric_full, "metric_empty": curve.metric_empty})


def write_discover_report(run_dir: str) -> dict[str, Any]:
    """Write a discovery run's ``report.json`` (headline from ``summary.json``; the circuit and faithfulness
    sections) and draw the report from the run's files (no model, no recomputation)."""
    from mechpatch.runs.report import build_report, write_report_spec

    manifest = read_manifest(run_dir)
    cfg = manifest["config"]
    summary = read_json(os.path.join(run_dir, "summary.json"))
    headline = {k: summary[k] for k in ("model", "task", "method", "metric", "ablation", "tau", "edges_total",
                                         "edges_kept", "full_metric", "circuit_metric", "CPR", "CMD", "forwards")}
    if "ground_truth" in summary:
        headline["ground truth"] = summary["ground_truth"]
    circuit = summary["circuit"]
    headline["circuit"] = ", ".join(circuit[:40]) + (" ..." if len(circuit) > 40 else "")
    headline["weights sha256"] = (manifest.get("model") or {}).get("weights_sha256")
    headline["config hash"] = manifest["config_hash"]
    write_report_spec(run_dir, f"circuit discovery: {cfg['model']} / {cfg['task']}", headline, discovery_sections())
    return build_report(run_dir)


def discovery_sections(prefix: str = "") -> list[dict[str, str]]:
    """The report sections of a discovery written under ``prefix`` (``circuit.json``, the faithfulness table)."""
    from mechpatch.runs.report import section

    return [section("circuit", "graph", f"{prefix}circuit.json", "discovered circuit"),
            section("faithfulness", "faithfulness", f"{prefix}results/faithfulness.parquet",
                    "faithfulness over circuit size (MIB)")]


__all__ = [
    "ABLATIONS", "BatchJob", "DiscoverConfig", "DiscoverJob", "batch_job", "curve_table", "discovery_sections",
    "edge_table", "plan_discover", "prompt_ranges", "run_discover", "run_discoveries", "worker_job",
    "write_discover_report",
]
