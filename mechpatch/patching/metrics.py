"""Metrics: a patched run's logits -> one number per row.

A metric sees logits only at the positions it declares (``positions``; None = every position), so the
engine can skip unembedding the rest. ``prompt`` maps each row to its prompt, so per-prompt data
(answers, clean logits, tokens) can be looked up.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from mechpatch.errors import MechpatchError, ShapeMismatchError
from mechpatch.sites import resolve_positions


class MetricError(MechpatchError, ValueError):
    """A metric returned the wrong shape, a non-finite value, or lacks data it needs."""


def value_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype metric values are kept in for logits (or a model) of ``dtype``.

    float64 stays float64; float32 and the low-precision dtypes (float16, bfloat16) give float32, so
    reductions over a vocabulary or over prompts do not lose what a half-precision sum would.

    >>> value_dtype(torch.float64), value_dtype(torch.bfloat16)
    (torch.float64, torch.float32)
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def _up(x: Tensor) -> Tensor:
    """``x`` in :func:`value_dtype` of its dtype (low precision -> float32; float32/float64 unchanged)."""
    return x.to(value_dtype(x.dtype))


@dataclass(frozen=True, eq=False)
class Metric:
    """Base class. Subclasses implement :meth:`compute`; :meth:`__call__` validates the result."""

    positions: Optional[tuple[int, ...]] = (-1,)
    name: str = "metric"

    def bind(self, **data: Optional[Tensor]) -> "Metric":
        """A copy with per-prompt data attached (answers, clean logits, tokens)."""
        return self

    def columns(self) -> Optional[Tensor]:
        """The vocabulary entries this metric reads (sorted ids), or None for the whole vocabulary.

        The engine then unembeds only these columns and calls :meth:`restrict`'s metric on them.
        """
        return None

    def restrict(self, columns: Tensor) -> "Metric":
        """The same metric reading logits that hold only ``columns`` of the vocabulary."""
        return self

    def compute(self, logits: Float[Tensor, "row pos d_vocab"], prompt: Int[Tensor, " row"]) -> Tensor:
        raise NotImplementedError  # pragma: no cover

    def __call__(self, logits: Float[Tensor, "row pos d_vocab"], prompt: Int[Tensor, " row"]) -> Float[Tensor, " row"]:
        out = self.compute(logits, prompt)
        if not isinstance(out, Tensor) or out.shape != (logits.shape[0],):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise MetricError(
                f"metric {self.name!r} must return one value per row, shape ({logits.shape[0]},); got {shape}"
            )
        if not torch.isfinite(out).all():
            bad = torch.nonzero(~torch.isfinite(out)).flatten()[:5].tolist()
            raise MetricError(f"metric {self.name!r} returned NaN or inf for rows {bad}")
        return out.to(value_dtype(logits.dtype))


@dataclass(frozen=True)
class Readout:
    """Which logits a metric reads: positions (None: all) and vocabulary columns (None: all)."""

    positions: Optional[list[int]]
    columns: Optional[Tensor]

    def select(self, logits: Tensor) -> Tensor:
        """Cut full logits [row, pos, d_vocab] down to this readout."""
        if self.positions is not None:
            logits = logits[:, self.positions]
        if self.columns is not None:
            logits = logits[..., self.columns.to(logits.device)]
        return logits


def _one_position(metric: "Metric") -> None:
    """Refuse a metric that reads one position (the answer's) being given several or none."""
    if metric.positions is not None and len(tuple(metric.positions)) != 1:
        raise MetricError(f"{metric.name} reads the answer at one position; got positions={metric.positions!r} "
                          "(give one, e.g. positions=(-1,), or use a metric per position)")


def _need(what: Optional[Tensor], metric: str, key: str) -> Tensor:
    if what is None:
        raise MetricError(f"metric {metric!r} needs {key}; pass it (e.g. make_pair(..., answers=...))")
    return what


@dataclass(frozen=True, eq=False)
class LogitDiff(Metric):
    """logit(correct) - mean (or max) logit of the wrong answers, at the last token.

    ``wrong="max"`` compares with the strongest wrong answer, as docstring's metric does.
    """

    answers: Optional[Int[Tensor, "batch answer"]] = None
    name: str = "logit_diff"
    wrong: str = "mean"

    def __post_init__(self) -> None:
        if self.wrong not in ("mean", "max"):
            raise MetricError(f"LogitDiff wrong={self.wrong!r}; valid: 'mean', 'max'")
        _one_position(self)

    def bind(self, **data: Optional[Tensor]) -> "LogitDiff":
        if self.answers is not None or data.get("answers") is None:
            return self
        return LogitDiff(positions=self.positions, answers=data["answers"], name=self.name, wrong=self.wrong)

    def columns(self) -> Optional[Tensor]:
        return None if self.answers is None else torch.unique(self.answers)

    def restrict(self, columns: Tensor) -> "LogitDiff":
        ans = _need(self.answers, self.name, "answer tokens")
        cols = columns.to(ans.device)
        return LogitDiff(
            positions=self.positions, answers=torch.searchsorted(cols, ans), name=self.name, wrong=self.wrong
        )

    def compute(self, logits: Tensor, prompt: Tensor) -> Tensor:
        ans = _need(self.answers, self.name, "answer tokens")
        if ans.shape[1] < 2:
            raise MetricError("logit_diff needs a correct and at least one wrong answer per prompt")
        ans = ans.to(logits.device)[prompt]
        lg = logits[:, -1]
        picked = lg.gather(1, ans)
        wrong = picked[:, 1:].amax(1) if self.wrong == "max" else picked[:, 1:].mean(1)
        return picked[:, 0] - wrong


@dataclass(frozen=True, eq=False)
class ProbDiff(Metric):
    """p(correct) - p(wrong answers summed), at the last token, as in greater-than's probability difference.

    ``answers[:, 0]`` is the correct answer; the remaining columns are summed as wrong.
    """

    answers: Optional[Int[Tensor, "batch answer"]] = None
    name: str = "prob_diff"

    def __post_init__(self) -> None:
        _one_position(self)

    def bind(self, **data: Optional[Tensor]) -> "ProbDiff":
        if self.answers is not None or data.get("answers") is None:
            return self
        return ProbDiff(positions=self.positions, answers=data["answers"], name=self.name)

    def compute(self, logits: Tensor, prompt: Tensor) -> Tensor:
        ans = _need(self.answers, self.name, "answer tokens").to(logits.device)[prompt]
        probs = _up(logits[:, -1]).softmax(-1).gather(1, ans)
        return probs[:, 0] - probs[:, 1:].sum(1)


@dataclass(frozen=True, eq=False)
class KLDivergence(Metric):
    """KL(clean || patched) of the next-token distribution at ``positions``, summed over them."""

    clean_logits: Optional[Float[Tensor, "batch pos d_vocab"]] = None
    name: str = "kl_div"

    def bind(self, **data: Optional[Tensor]) -> "KLDivergence":
        if self.clean_logits is not None or data.get("clean_logits") is None:
            return self
        return KLDivergence(positions=self.positions, clean_logits=data["clean_logits"], name=self.name)

    def compute(self, logits: Tensor, prompt: Tensor) -> Tensor:
        ref = _need(self.clean_logits, self.name, "clean logits").to(logits.device)[prompt]
        if ref.shape[1] != logits.shape[1]:
            raise ShapeMismatchError(f"clean logits have {ref.shape[1]} positions, patched {logits.shape[1]}")
        logp = F.log_softmax(_up(logits), -1)
        logq = F.log_softmax(_up(ref).to(logp.dtype), -1)
        return (logq.exp() * (logq - logp)).sum(-1).sum(-1)


@dataclass(frozen=True, eq=False)
class Loss(Metric):
    """Mean next-token cross-entropy over every position (the patched prompt's own tokens as targets)."""

    positions: Optional[tuple[int, ...]] = None
    tokens: Optional[Int[Tensor, "batch pos"]] = None
    name: str = "loss"

    def bind(self, **data: Optional[Tensor]) -> "Loss":
        # tokens belong to the run being scored, so a new binding always replaces them
        if data.get("tokens") is None:
            return self
        return Loss(positions=None, tokens=data["tokens"], name=self.name)

    def compute(self, logits: Tensor, prompt: Tensor) -> Tensor:
        toks = _need(self.tokens, self.name, "tokens").to(logits.device)[prompt]
        logp = F.log_softmax(_up(logits[:, :-1]), -1)
        return -logp.gather(2, toks[:, 1:, None])[..., 0].mean(1)


@dataclass(frozen=True, eq=False)
class TokenLogProb(Metric):
    """Mean log-probability of the next token at ``positions`` (the run's own tokens are the targets).

    Position ``p`` is scored on predicting ``tokens[:, p + 1]``; the induction task reads the second
    repeat of a block this way.
    """

    positions: Optional[tuple[int, ...]] = (-2,)
    tokens: Optional[Int[Tensor, "batch pos"]] = None
    name: str = "token_logprob"

    def bind(self, **data: Optional[Tensor]) -> "TokenLogProb":
        if data.get("tokens") is None:
            return self
        return TokenLogProb(positions=self.positions, tokens=data["tokens"], name=self.name)

    def compute(self, logits: Tensor, prompt: Tensor) -> Tensor:
        toks = _need(self.tokens, self.name, "tokens").to(logits.device)[prompt]
        if self.positions is None:
            pos = list(range(toks.shape[1] - 1))
            logits = logits[:, :-1]
        else:
            pos = list(resolve_positions(self.positions, toks.shape[1], f"metric {self.name!r} position", False))
        if max(pos) + 1 >= toks.shape[1]:
            raise MetricError(f"{self.name}: position {max(pos)} has no next token (prompts have {toks.shape[1]})")
        targets = toks[:, [p + 1 for p in pos]]
        logp = F.log_softmax(_up(logits), -1)
        return logp.gather(2, targets[..., None])[..., 0].mean(1)


@dataclass(frozen=True, eq=False)
class Custom(Metric):
    """Any callable ``fn(logits[row, pos, vocab], prompt[row]) -> [row]``."""

    fn: Optional[Callable[[Tensor, Tensor], Tensor]] = None
    name: str = "custom"

    def compute(self, logits: Tensor, prompt: Tensor) -> Tensor:
        if self.fn is None:
            raise MetricError("Custom metric needs fn")
        return self.fn(logits, prompt)


METRICS: dict[str, type[Metric]] = {
    "logit_diff": LogitDiff, "prob_diff": ProbDiff, "kl_div": KLDivergence, "loss": Loss, "token_logprob": TokenLogProb,
}


def readout_positions(metric: Metric, seq_len: int) -> Optional[list[int]]:
    """The token positions ``metric`` reads in prompts of ``seq_len`` tokens, resolved to 0..seq_len-1
    (None: every position). Out-of-range positions are refused, not wrapped around.

    >>> readout_positions(LogitDiff(), 7)
    [6]

    Raises:
        SiteOutOfRangeError: a metric position outside the prompt.
    """
    if metric.positions is None:
        return None
    return list(resolve_positions(metric.positions, seq_len, f"metric {metric.name!r} position", unique=False))


def as_metric(metric: object) -> Metric:
    """A Metric from a Metric, a metric name, or a callable ``fn(logits, prompt) -> [row]`` (all positions)."""
    from mechpatch.errors import choices

    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric not in METRICS:
            raise MetricError(f"unknown metric {metric!r}; valid: {choices(METRICS)} or a callable")
        return METRICS[metric]()
    if callable(metric):
        return Custom(positions=None, fn=metric, name=getattr(metric, "__name__", "custom"))
    raise MetricError(f"a metric must be a Metric, a name ({choices(METRICS)}) or a callable; got {metric!r}")


__all__ = [
    "Custom", "KLDivergence", "LogitDiff", "Loss", "Metric", "MetricError", "ProbDiff", "Readout", "TokenLogProb",
    "as_metric", "readout_positions", "value_dtype",
]
