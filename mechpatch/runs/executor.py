"""Where a run's chunks are computed: in this process (``executor: local``, the default) or on Ray actors.

A run cuts its work into content-addressed units (the config hash names the run, ``(group, index)`` the chunk);
the driver (the process that owns the run directory) hands the units it has not finished to an executor and
writes each finished one atomically into the run directory (:meth:`~mechpatch.runs.store.RunStore.save_chunk`)
the moment it comes back, so a finished unit is never computed again, whoever computed it.

``executor: {ray: {address: null | "auto" | "HOST:PORT", workers: N, cpus_per_worker: 1, gpus_per_worker: 0}}``
runs the units on ``N`` Ray actors. ``address: null`` starts a Ray runtime on this machine for the run; an address
joins an existing cluster (``"auto"``: the one this machine belongs to). Each worker loads the model once (from the
config, as the driver did), refuses weights whose SHA-256 differs from the run's manifest, prepares what the run
command prepares once (a sweep's prompts and grids; EAP's base run; ACDC's clean and corrupted runs), and then
computes units; a unit may come with a payload (an interaction chunk's masks and the engine's arguments, for a
:class:`ModelJob`; a forward's candidate rows, for ACDC). A worker sends back CPU tensors and never touches the run
directory.
A worker that dies mid-unit (killed, out of memory) is replaced and its unit given to the next free worker; a worker
that cannot load the model stops the run with an error naming the worker and the cause (finished units stay in the
run directory). Results do not depend on the executor: a unit is the same computation wherever it runs (on CPU,
bitwise, with the same number of threads: each worker uses ``cpus_per_worker`` threads, and the local executor's
threads are whatever the command line set).

>>> parse_executor("local")
ExecutorSpec(kind='local', ray=None)
>>> parse_executor({"ray": {"workers": 2}})
ExecutorSpec(kind='ray', ray=RayOptions(address=None, workers=2, cpus_per_worker=1.0, gpus_per_worker=0.0))
>>> parse_executor({"dask": {}})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
mechpatch.config.ConfigError: executor: unknown executor 'dask'; valid: 'local', {ray: {address, workers, ...}}
"""

import os
import platform
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor

from mechpatch.config import ConfigError, from_dict, resolve
from mechpatch.errors import MechpatchError

#: (group, index): one unit of work, as the run store names its chunks
Unit = tuple[str, int]
#: a unit's computation when the job does not derive it from the unit alone: ``("module:function", kwargs)``,
#: run on what the job holds, ``function(held, **kwargs)`` (:class:`ModelJob`: the model; ACDC: its edge runner)
Payload = tuple[str, dict]
#: how many times one worker slot is replaced after its process died before the run gives up
MAX_REPLACEMENTS = 3


class WorkerError(MechpatchError, RuntimeError):
    """A worker could not load the model or prepare its run, or workers kept dying; finished units are kept."""


class ExecutorUnavailableError(MechpatchError, RuntimeError):
    """The executor a config asks for cannot run here (Ray is not installed, the cluster cannot be reached)."""


@dataclass(frozen=True)
class RayOptions:
    """``executor: {ray: ...}``: where and how many workers."""

    address: Optional[str] = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"ray.workers must be a positive integer; got {self.workers!r}")
        if not self.cpus_per_worker > 0:
            raise ValueError(f"ray.cpus_per_worker must be positive; got {self.cpus_per_worker!r}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"ray.gpus_per_worker must be 0 or more; got {self.gpus_per_worker!r}")
        if self.address is not None and (not isinstance(self.address, str) or not self.address):
            raise ValueError(f"ray.address must be null (start Ray here), 'auto' or 'HOST:PORT'; got {self.address!r}")

    @property
    def threads(self) -> int:
        """torch threads per worker: one per CPU it reserves."""
        return max(1, int(self.cpus_per_worker))


@dataclass(frozen=True)
class ExecutorSpec:
    """A config's ``executor``: ``local`` or Ray with its options (see the module docstring)."""

    kind: str = "local"
    ray: Optional[RayOptions] = None


_VALID = "'local', {ray: {" + ", ".join(f.name for f in fields(RayOptions)) + "}}"


def parse_executor(value: Any) -> ExecutorSpec:
    """An :class:`ExecutorSpec` from a config value: ``"local"``, ``{"ray": {...}}``, or a spec (or its dict form)."""
    if isinstance(value, ExecutorSpec):
        return value
    if value is None or value == "local":
        return ExecutorSpec()
    if value == "ray":
        return ExecutorSpec("ray", RayOptions())
    if isinstance(value, dict) and set(value) <= {"kind", "ray"} and "kind" in value:  # normalized form
        if value["kind"] == "local":
            return ExecutorSpec()
        value = {"ray": value.get("ray") or {}}
    if isinstance(value, dict) and len(value) == 1 and "ray" in value:
        return ExecutorSpec("ray", from_dict(RayOptions, value["ray"] or {}, where="executor.ray"))
    name = next(iter(value)) if isinstance(value, dict) and value else value
    raise ConfigError(f"executor: unknown executor {name!r}; valid: {_VALID}")


def plan_row(spec: ExecutorSpec, units: Optional[int] = None) -> Optional[tuple[str, str]]:
    """The ``executor`` row of a run's plan (None for the local executor); with ``units``, a warning when there are
    fewer units of work than workers.

    >>> plan_row(parse_executor({"ray": {"workers": 4}}), units=2)
    ('executor', 'Ray: 4 workers x 1 CPU, 0 GPU (a local runtime); only 2 units of work to share: use smaller chunks')
    """
    if spec.kind == "local":
        return None
    r = spec.ray
    text = (f"Ray: {r.workers} workers x {r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU "
            f"({'a local runtime' if r.address is None else r.address})")
    if units is not None and units < r.workers:
        text += f"; only {units} unit{'s' * (units != 1)} of work to share: use smaller chunks"
    return ("executor", text)


def describe(spec: ExecutorSpec) -> dict[str, Any]:
    """What the manifest records about the executor of an attempt."""
    if spec.kind == "local":
        return {"kind": "local", "threads": torch.get_num_threads()}
    r = spec.ray
    return {"kind": "ray", "address": r.address, "workers": r.workers, "cpus_per_worker": r.cpus_per_worker,
            "gpus_per_worker": r.gpus_per_worker}


# ----------------------------------------------------------------------------- jobs: what a worker computes


@runtime_checkable
class Job(Protocol):
    """A prepared run (model loaded, prompts and grids built) that computes any of its units."""

    model: Any  # the loaded model (its weights are checked against the manifest)

    def run_unit(self, unit: Unit, payload: Optional[Payload] = None) -> dict[str, Tensor]:
        """The tensors of one unit (as saved in the run directory), on the CPU."""


@dataclass(frozen=True, eq=False)
class ModelJob:
    """A job that holds only the model: each unit's payload names the computation, ``function(model, **kwargs)``
    (the driver decides everything else, so a worker cannot compute anything but what the driver would have)."""

    model: Any

    def run_unit(self, unit: Unit, payload: Optional[Payload] = None) -> dict[str, Tensor]:
        if payload is None:
            raise WorkerError(f"unit {unit} came without its payload: a ModelJob computes only named functions")
        function, kwargs = payload
        out = resolve(function)(self.model, **kwargs)
        return {k: v.cpu() for k, v in out.items()}


def model_job(config: dict[str, Any]) -> ModelJob:
    """A worker's :class:`ModelJob`: the config's model, loaded as a run command loads it (torch seeded with the
    config's ``seed`` first)."""
    from mechpatch.runs.common import load_source

    torch.manual_seed(config.get("seed", 0))
    return ModelJob(load_source(config["model"], config.get("device", "cpu"), config.get("dtype", "float32")))


def function_job(config: dict[str, Any]) -> ModelJob:
    """A worker's job that holds no model: each unit's payload is a whole computation, ``function(None, **kwargs)``
    (retrainings: :func:`mechpatch.interactions.data.retrain_unit`)."""
    return ModelJob(None)


@dataclass(frozen=True)
class JobSpec:
    """How a worker builds the driver's job: the run command, its normalized config, the weights' SHA-256 recorded
    in the manifest (a worker whose weights differ refuses to run; None: a job without a model) and the builder,
    ``"module:function"`` taking the config and returning the job (named, not imported here: run commands import
    this module)."""

    command: str
    config: dict[str, Any]
    weights_sha256: Optional[str]
    builder: str


#: the builder of :class:`ModelJob` (workers that hold only the model)
MODEL_JOB = "mechpatch.runs.executor:model_job"
#: the builder of workers that hold nothing (:func:`function_job`)
FUNCTION_JOB = "mechpatch.runs.executor:function_job"


def build_job(spec: JobSpec) -> Job:
    """Load the model and prepare the run as the driver did (same seed, same config), then check its weights."""
    from mechpatch.runs.store import RunError, weights_hash

    job = resolve(spec.builder)(spec.config)
    if spec.weights_sha256 is None:
        return job
    sha = weights_hash(job.model)
    if sha != spec.weights_sha256:
        raise RunError(f"the model {spec.config.get('model')!r} loaded here has weights sha256 {sha[:12]}, but the "
                       f"run's manifest records {spec.weights_sha256[:12]}: this machine has other weights under "
                       "that name")
    return job


class _Worker:
    """A Ray actor: builds the job once, then computes units. Errors while building are kept and reported by
    :meth:`ready`, so that the driver can name the worker and the cause."""

    def __init__(self, spec: JobSpec, threads: int) -> None:
        torch.set_num_threads(threads)
        self.info = {"host": platform.node(), "pid": os.getpid(), "threads": threads,
                     "device": str(spec.config.get("device", "cpu"))}
        if torch.cuda.is_available() and self.info["device"].startswith("cuda"):
            self.info["gpu"] = torch.cuda.get_device_name()
        started = time.perf_counter()
        try:
            self.job: Optional[Job] = build_job(spec)
            self.error: Optional[str] = None
        except Exception as exc:  # noqa: BLE001  (reported to the driver by ready())
            self.job, self.error = None, f"{type(exc).__name__}: {exc}"
        self.info["load_seconds"] = round(time.perf_counter() - started, 3)
        self.compute_seconds = 0.0  # spent inside units (the rest of a unit's round trip is the executor's overhead)

    def ready(self) -> dict[str, Any]:
        return {**self.info, "error": self.error}

    def run(self, unit: Unit, payload: Optional[Payload] = None) -> dict[str, Tensor]:
        started = time.perf_counter()
        out = self.job.run_unit(unit, payload)
        self.compute_seconds += time.perf_counter() - started
        return out

    def seconds(self) -> float:
        return self.compute_seconds


# ----------------------------------------------------------------------------- executors


Save = Callable[[Unit, dict[str, Tensor]], None]


class LocalExecutor:
    """Runs units one after another in this process, on the driver's own job (None: a run that computes its units
    itself and only records this executor, as ACDC's search does locally)."""

    def __init__(self, job: Optional[Job]) -> None:
        self.job = job
        self.workers: list[dict[str, Any]] = [{"host": platform.node(), "pid": os.getpid(),
                                               "threads": torch.get_num_threads()}]

    def run(self, units: Sequence[Unit], save: Save, payloads: Optional[dict[Unit, Payload]] = None) -> None:
        for unit in units:
            save(unit, self.job.run_unit(unit, None if payloads is None else payloads[unit]))


class RayExecutor:
    """Runs units on a pool of Ray actors (see the module docstring); ``save`` is called in the driver."""

    def __init__(self, spec: ExecutorSpec, job_spec: JobSpec) -> None:
        self.ray = _import_ray()
        self.opts, self.job_spec = spec.ray, job_spec
        self.started_ray = False
        if not self.ray.is_initialized():
            self._init()
        self.actor_cls = self.ray.remote(num_cpus=self.opts.cpus_per_worker,
                                         num_gpus=self.opts.gpus_per_worker)(_Worker)
        self.slots = [self._start() for _ in range(self.opts.workers)]
        self.workers = [self._ready(i, a) for i, a in enumerate(self.slots)]
        self.replaced = 0

    def _init(self) -> None:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if self.opts.address is None:
            kwargs["num_cpus"] = max(1, int(self.opts.workers * self.opts.cpus_per_worker + 0.999))
            if self.opts.gpus_per_worker:
                kwargs["num_gpus"] = int(self.opts.workers * self.opts.gpus_per_worker + 0.999)
        else:
            kwargs["address"] = self.opts.address
        try:
            self.ray.init(**kwargs)
        except Exception as exc:  # noqa: BLE001  (ConnectionError and Ray's own errors alike)
            where = "start a local Ray runtime" if self.opts.address is None else f"join {self.opts.address!r}"
            raise ExecutorUnavailableError(f"could not {where}: {type(exc).__name__}: {exc}") from exc
        self.started_ray = True

    def _start(self) -> Any:
        return self.actor_cls.remote(self.job_spec, self.opts.threads)

    def _ready(self, slot: int, actor: Any) -> dict[str, Any]:
        try:
            info = self.ray.get(actor.ready.remote())
        except self.ray.exceptions.RayActorError as exc:
            raise WorkerError(f"Ray worker {slot} died while loading the model: {exc}") from None
        if info["error"] is not None:
            raise WorkerError(f"Ray worker {slot} (host {info['host']}, pid {info['pid']}) could not load the model "
                              f"or prepare the run: {info['error']}")
        return info

    def run(self, units: Sequence[Unit], save: Save, payloads: Optional[dict[Unit, Payload]] = None) -> None:
        """Compute ``units`` on the pool (each with its payload, if any), ``save`` each as it arrives; a dead worker's
        unit goes back in the queue."""
        queue: deque[Unit] = deque(units)
        running: dict[Any, tuple[int, Unit]] = {}
        idle = deque(range(len(self.slots)))
        while queue or running:
            while queue and idle:
                slot = idle.popleft()
                unit = queue.popleft()
                payload = None if payloads is None else payloads[unit]
                running[self.slots[slot].run.remote(unit, payload)] = (slot, unit)
            done, _ = self.ray.wait(list(running), num_returns=1)
            slot, unit = running.pop(done[0])
            try:
                tensors = self.ray.get(done[0])
            except self.ray.exceptions.RayActorError:
                queue.appendleft(unit)  # computed again, by whichever worker is free next
                self._replace(slot)
                idle.append(slot)
                continue
            except self.ray.exceptions.RayTaskError as exc:
                raise WorkerError(f"Ray worker {slot} ({self.workers[slot]['host']}) failed on {unit}: "
                                  f"{exc.cause if getattr(exc, 'cause', None) is not None else exc}") from None
            save(unit, tensors)
            idle.append(slot)

    def _replace(self, slot: int) -> None:
        self.replaced += 1
        if self.replaced > MAX_REPLACEMENTS * len(self.slots):
            raise WorkerError(f"Ray workers died {self.replaced} times; giving up (finished units are kept: run the "
                              "same command again to resume)")
        self.slots[slot] = self._start()
        self.workers[slot] = self._ready(slot, self.slots[slot])

    def compute_seconds(self) -> list[float]:
        """Per worker, the seconds it has spent computing units (for overhead measurements)."""
        return [self.ray.get(a.seconds.remote()) for a in self.slots]

    def close(self) -> None:
        for actor in self.slots:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001  (already gone)
                pass
        if self.started_ray:
            self.ray.shutdown()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorUnavailableError(
            "executor: ray needs Ray, which is not installed: pip install 'mechpatch[ray]' (or use executor: local)"
        ) from None
    return ray


def check_executor(spec: ExecutorSpec) -> None:
    """Refuse, before any work, an executor that cannot run here (Ray asked for but not installed)."""
    if spec.kind == "ray":
        _import_ray()


@contextmanager
def open_executor(spec: ExecutorSpec, job: Callable[[], Optional[Job]],
                  job_spec: Callable[[], JobSpec]) -> Iterator[Any]:
    """The executor ``spec`` names, for the duration of a run: local (on ``job()``, the driver's own) or a Ray pool
    (workers built from ``job_spec()``), shut down at the end."""
    if spec.kind == "local":
        yield LocalExecutor(job())
        return
    ex = RayExecutor(spec, job_spec())
    try:
        yield ex
    finally:
        ex.close()


@contextmanager
def function_executor(spec: Any = "local") -> Iterator[Any]:
    """An executor for units that need no model (retrainings of :mod:`mechpatch.interactions.data`): ``spec`` as a
    config's ``executor:`` (``"local"``, ``{"ray": {"workers": 4}}``, or an :class:`ExecutorSpec`), open for the
    ``with`` block.

    >>> from mechpatch.interactions.data import retrain_masks
    >>> with function_executor("local") as ex:
    ...     run = retrain_masks("mechpatch.zoo.facts:train_facts", 36, torch.zeros(1, 36, dtype=torch.bool),
    ...                         executor=ex)
    >>> round(run.values["accuracy"].item() * 42)
    36
    """
    spec = spec if isinstance(spec, ExecutorSpec) else parse_executor(spec)
    check_executor(spec)
    with open_executor(spec, lambda: function_job({}), lambda: JobSpec("functions", {}, None, FUNCTION_JOB)) as ex:
        yield ex


@contextmanager
def run_executor(store: Any, spec: ExecutorSpec, job: Callable[[], Optional[Job]], builder: str) -> Iterator[Any]:
    """The executor of a run (:func:`open_executor`), its attempt recorded in the run's manifest (executor and
    workers): Ray workers build their job with ``builder`` (``"module:function"``) from the run's config, and check
    the weights' SHA-256 its manifest records (``store``: the run's :class:`~mechpatch.runs.store.RunStore`)."""
    def job_spec() -> JobSpec:
        return JobSpec(store.command, store.config, store.manifest["model"]["weights_sha256"], builder)

    with open_executor(spec, job, job_spec) as ex:
        store.note_attempt(executor=describe(spec), workers=ex.workers)
        yield ex


__all__ = ["ExecutorSpec", "ExecutorUnavailableError", "FUNCTION_JOB", "JobSpec", "MODEL_JOB", "ModelJob", "RayOptions",
           "WorkerError", "build_job", "check_executor", "describe", "function_executor", "function_job", "model_job",
           "open_executor", "parse_executor", "plan_row", "resolve", "run_executor"]
