"""The exact patching engine: interventions, batched execution, metrics, labelled results."""

from mechpatch.patching.engine import METHODS, PatchRun, run_patches
from mechpatch.patching.interventions import DIRECTIONS, Interpolate, Mean, Replace, Resample, Zero
from mechpatch.patching.metrics import Custom, KLDivergence, LogitDiff, Loss, Metric, MetricError, ProbDiff
from mechpatch.patching.results import PatchResult
from mechpatch.patching.sweeps import SWEEP_KINDS, Grid, make_grid, sweep

__all__ = [
    "DIRECTIONS", "METHODS", "SWEEP_KINDS", "Custom", "Grid", "Interpolate", "KLDivergence", "LogitDiff", "Loss", "Mean",
    "Metric", "MetricError", "PatchResult", "PatchRun", "ProbDiff", "Replace", "Resample", "Zero", "make_grid",
    "run_patches", "sweep",
]
