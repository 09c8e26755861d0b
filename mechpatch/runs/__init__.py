"""Runs: config-driven experiments that write a run directory (manifest, Parquet results, safetensors tensors,
figures, report) and resume after being killed. The command line (:mod:`mechpatch.cli`) is a thin layer over
this package.

- :mod:`mechpatch.runs.store`: the run directory, atomic writes, chunk files, hashes and provenance;
- :mod:`mechpatch.runs.sweep`: patching sweeps (:class:`SweepConfig`, :func:`run_sweep`, :func:`load_sweep`);
- :mod:`mechpatch.runs.discover`: circuit discovery (:class:`DiscoverConfig`, :func:`run_discover`);
- :mod:`mechpatch.runs.interactions`: component interactions (:class:`InteractionsConfig`, :func:`run_interactions`);
- :mod:`mechpatch.runs.plan`: what a run will do, checked against the model before any write (``--dry-run``);
- :mod:`mechpatch.runs.results`: result files read back into result objects (no model);
- :mod:`mechpatch.runs.report`: reports drawn from a run's files (``mechpatch report RUN_DIR``).
"""

import os

from mechpatch.runs.discover import DiscoverConfig, plan_discover, run_discover
from mechpatch.runs.interactions import InteractionsConfig, plan_interactions, run_interactions
from mechpatch.runs.store import (
    RunConflictError,
    RunError,
    RunStore,
    config_hash,
    read_manifest,
    verify_finished,
    weights_hash,
)
from mechpatch.runs.sweep import PromptSpec, SweepConfig, SweepRun, TaskSpec, load_sweep, plan_sweep, run_sweep


def rebuild_report(run_dir: str) -> str:
    """Rewrite ``report.html`` (and the figure files) of a finished run from its files; returns the report's path.

    Nothing is recomputed and the model is not loaded: ``report.json`` names the headline numbers and the
    result file each figure is drawn from (:mod:`mechpatch.runs.report`).

    Raises:
        RunError: ``run_dir`` is not a run directory, or its run has not finished.
        DamagedFileError: a file the report is drawn from changed since the run finished (named in the message).
        RunLockedError: a run is writing in ``run_dir``.
    """
    from mechpatch.runs.report import build_report

    store = RunStore(run_dir, read_manifest(run_dir)["command"], {})
    with store.locked():  # not while a run writes here
        verify_finished(run_dir)
        build_report(run_dir)
    return os.path.join(run_dir, "report.html")


__all__ = [
    "DiscoverConfig", "InteractionsConfig", "PromptSpec", "RunConflictError", "RunError", "RunStore", "SweepConfig",
    "SweepRun", "TaskSpec", "config_hash", "load_sweep", "plan_discover", "plan_interactions", "plan_sweep",
    "read_manifest", "rebuild_report", "run_discover", "run_interactions", "run_sweep", "verify_finished",
    "weights_hash",
]
