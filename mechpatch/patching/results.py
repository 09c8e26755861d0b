"""Labelled patching results: values over a grid of patches x prompts, with baselines and no-op flags."""

import html
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechpatch.errors import InvalidArgumentError, InvalidTypeError, SiteOutOfRangeError
from mechpatch.sites import Site


class UndefinedEffectError(InvalidArgumentError, ZeroDivisionError):
    """A normalised effect was asked for where clean and corrupted runs give the same metric value (also a
    ``ZeroDivisionError``, which callers caught before it was typed)."""


@dataclass(frozen=True)
class PatchResult:
    """Metric values of a sweep: ``values[*grid, prompt]``, with the grid's axes labelled.

    ``clean`` and ``corrupted`` are the unpatched runs' per-prompt metric values; ``noop[*grid]``
    marks patches whose source equals the activation they replace at every patched entry (they
    cannot change anything, which is not the same as "no effect").

    Attributes:
        values: per-prompt metric values, shape ``grid_shape + (n_prompts,)``.
        axes: names of the grid axes, e.g. ``("layer", "head")`` or ``("layer", "pos")``.
        labels: for each grid axis, one label per index (e.g. ``["L0", "L1"]``, or the tokens).
        sites: the patched site set of each grid cell, flattened in row-major order.
    """

    values: Float[Tensor, "..."]
    axes: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    sites: tuple[tuple[Site, ...], ...]
    clean: Float[Tensor, " prompt"]
    corrupted: Float[Tensor, " prompt"]
    noop: Bool[Tensor, "..."]
    metric: str = "metric"
    direction: str = "denoise"
    intervention: str = "Replace"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[:-1])

    @property
    def n_prompts(self) -> int:
        return self.values.shape[-1]

    def mean(self) -> Tensor:
        """Mean over prompts, shape ``grid_shape``."""
        return self.values.mean(-1)

    def sem(self) -> Tensor:
        """Standard error of the mean over prompts (0 for a single prompt)."""
        n = self.n_prompts
        if n < 2:
            return torch.zeros(self.grid_shape)
        return self.values.std(-1, unbiased=True) / math.sqrt(n)

    def normalized(self) -> Tensor:
        """(patched - corrupted) / (clean - corrupted), per prompt-averaged metric, shape ``grid_shape``.

        1 means the patch restores the clean behaviour, 0 the corrupted one (either direction).

        Raises:
            UndefinedEffectError: clean and corrupted runs give the same prompt-mean metric value (a
                ``ValueError`` and a ``ZeroDivisionError``).
        """
        denom = float(self.clean.mean() - self.corrupted.mean())
        if denom == 0:
            raise UndefinedEffectError(
                f"clean and corrupted runs give the same metric value ({float(self.clean.mean()):.6g}), so the "
                "normalised effect is undefined; use mean() for the raw values"
            )
        return (self.mean() - float(self.corrupted.mean())) / denom

    def to_dataframe(self) -> Any:
        """A tidy pandas DataFrame: one row per grid cell x prompt, with labels, sites and no-op flags."""
        import pandas as pd

        grid = self.grid_shape
        rows = []
        flat_vals = self.values.reshape(-1, self.n_prompts)
        flat_noop = self.noop.reshape(-1)
        for cell in range(flat_vals.shape[0]):
            coords = []
            rem = cell
            for size in reversed(grid):
                coords.append(rem % size)
                rem //= size
            coords = coords[::-1]
            base = {axis: self.labels[i][c] for i, (axis, c) in enumerate(zip(self.axes, coords))}
            base.update({f"{axis}_index": c for axis, c in zip(self.axes, coords)})
            base["sites"] = " + ".join(s.label for s in self.sites[cell])
            base["noop"] = bool(flat_noop[cell])
            for p in range(self.n_prompts):
                rows.append({**base, "prompt": p, "value": float(flat_vals[cell, p])})
        df = pd.DataFrame(rows)
        df.attrs.update(metric=self.metric, direction=self.direction, intervention=self.intervention)
        return df

    def __repr__(self) -> str:
        shape = " x ".join(f"{a}={n}" for a, n in zip(self.axes, self.grid_shape))
        return (
            f"PatchResult({self.metric}, {self.direction}, {self.intervention}: {shape} x prompts={self.n_prompts}; "
            f"clean={float(self.clean.mean()):.4g}, corrupted={float(self.corrupted.mean()):.4g}, "
            f"no-op cells={int(self.noop.sum())})"
        )

    def _html_table(self) -> str:
        """The repr and the ten largest prompt-mean effects, as HTML."""
        mean = self.mean().reshape(-1)
        order = torch.argsort(mean.abs(), descending=True)[:10]
        rows = "".join(
            f"<tr><td>{html.escape(' + '.join(s.label for s in self.sites[int(i)]))}</td>"
            f"<td>{float(mean[i]):.4g}</td><td>{'no-op' if bool(self.noop.reshape(-1)[i]) else ''}</td></tr>"
            for i in order
        )
        return f"<p>{html.escape(repr(self))}</p><table><tr><th>patch</th><th>mean {html.escape(self.metric)}</th><th></th></tr>{rows}</table>"

    def value_at(self, *index: int) -> Optional[float]:
        """Prompt-mean value of one grid cell: one index per grid axis, each in ``0..size - 1`` (no negative
        indices: a position never wraps around).

        Raises:
            InvalidArgumentError: not one index per grid axis.
            InvalidTypeError: an index is not an int.
            SiteOutOfRangeError: an index is outside its axis (the message names the axis and its range).
        """
        grid = self.grid_shape
        if len(index) != len(grid):
            raise InvalidArgumentError(
                f"value_at takes one index per grid axis ({', '.join(self.axes)}: {len(grid)} indices); got "
                f"{len(index)}: {index!r}"
            )
        for axis, size, i in zip(self.axes, grid, index):
            if isinstance(i, bool) or not isinstance(i, int):
                raise InvalidTypeError(f"value_at: the {axis} index must be an int; got {type(i).__name__} {i!r}")
            if not 0 <= i < size:
                raise SiteOutOfRangeError(f"value_at: {axis} index {i} is out of range; valid: 0..{size - 1}")
        return float(self.mean()[index])
