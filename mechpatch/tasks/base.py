"""What every task hands to the engine: aligned clean/corrupted token batches, answers, named positions, a metric.

Prompts of one task can differ in length (IOI's 15 templates do), and patching needs aligned positions, so a
task is a tuple of :class:`TaskBatch` es, each of one token length. Analyses run per batch and concatenate
per-prompt values; :meth:`TaskData.evaluate` does this for the unpatched model.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechpatch.errors import EmptyInputError, MechpatchError, ShapeMismatchError, choices
from mechpatch.model import HookedModel
from mechpatch.patching.metrics import Metric, Readout
from mechpatch.prompts import PromptPair, bind_prompts


class TaskError(MechpatchError, ValueError):
    """A task cannot be built as asked (bad size or seed, a tokenizer that cannot express it, ...)."""


@dataclass(frozen=True, eq=False)
class TaskBatch:
    """Prompts of one token length: clean and corrupted tokens, answers, and named positions per prompt.

    ``answers[:, 0]`` is the correct answer and ``answers[:, 1:]`` the wrong ones, as the metrics read
    them (a task whose metric needs other per-prompt data documents what its answer columns hold).
    ``positions`` maps a role ("END", "S2", ...) to each prompt's index of that token.
    """

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    answers: Int[Tensor, "batch answer"]
    positions: Mapping[str, Int[Tensor, " batch"]] = field(default_factory=dict)
    prompts: tuple[str, ...] = ()
    corrupted_prompts: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # per prompt: template / variant it came from

    def __post_init__(self) -> None:
        if self.clean.shape != self.corrupted.shape:
            raise ShapeMismatchError(
                f"clean tokens {tuple(self.clean.shape)} and corrupted {tuple(self.corrupted.shape)} must align"
            )
        n = self.clean.shape[0]
        if self.answers.shape[0] != n:
            raise ShapeMismatchError(f"{self.answers.shape[0]} answer rows for {n} prompts")
        for role, pos in self.positions.items():
            if pos.shape != (n,):
                raise ShapeMismatchError(f"position {role!r} must hold one index per prompt ({n}); got {tuple(pos.shape)}")

    @property
    def n_prompts(self) -> int:
        return int(self.clean.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.clean.shape[1])

    @property
    def pair(self) -> PromptPair:
        """The batch as the engine's clean/corrupted pair."""
        return PromptPair(self.clean, self.corrupted, self.answers)

    def position(self, role: str) -> int:
        """The index of ``role`` when every prompt of the batch has it at the same place (else an error)."""
        if role not in self.positions:
            raise TaskError(f"this task has no position {role!r}; valid: {choices(self.positions)}")
        values = torch.unique(self.positions[role])
        if values.numel() != 1:
            raise TaskError(f"position {role!r} differs between prompts of this batch: {values.tolist()}")
        return int(values[0])

    def to(self, device: Any) -> "TaskBatch":
        return TaskBatch(
            self.clean.to(device), self.corrupted.to(device), self.answers.to(device),
            {k: v.to(device) for k, v in self.positions.items()}, self.prompts, self.corrupted_prompts, self.labels,
        )


@dataclass(frozen=True)
class TaskScores:
    """The unpatched model's metric on every prompt of a task, clean and corrupted."""

    clean: Float[Tensor, " prompt"]
    corrupted: Float[Tensor, " prompt"]
    metric: str
    correct_above: Optional[float] = 0.0

    @property
    def accuracy(self) -> Optional[float]:
        """Fraction of clean prompts whose metric exceeds ``correct_above`` (None where that means nothing)."""
        if self.correct_above is None:
            return None
        return float((self.clean > self.correct_above).float().mean())

    def summary(self) -> dict[str, Any]:
        n = self.clean.numel()
        sem = float(self.clean.std() / n**0.5) if n > 1 else float("nan")
        out: dict[str, Any] = {
            "n_prompts": n,
            f"clean_{self.metric}": float(self.clean.mean()),
            f"clean_{self.metric}_sem": sem,
            f"corrupted_{self.metric}": float(self.corrupted.mean()),
        }
        if self.accuracy is not None:
            out["clean_accuracy"] = self.accuracy
        return out


@dataclass(frozen=True, eq=False)
class TaskData:
    """A published task built for one model's tokenizer: batches, metric, and what it is."""

    name: str
    batches: tuple[TaskBatch, ...]
    metric: Metric
    description: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    correct_above: Optional[float] = 0.0  # a prompt counts as solved when its clean metric exceeds this

    def __post_init__(self) -> None:
        if not self.batches:
            raise EmptyInputError(f"task {self.name!r} has no prompts")

    @property
    def n_prompts(self) -> int:
        return sum(b.n_prompts for b in self.batches)

    def __iter__(self):
        return iter(self.batches)

    def score(self, model: HookedModel, tokens: Tensor, batch: TaskBatch,
              clean_logits: Optional[Tensor] = None) -> Float[Tensor, " batch"]:
        """The task metric of the unpatched model on ``tokens`` (one of ``batch``'s token tensors)."""
        metric = bind_prompts(model, self.metric, batch.answers, tokens)
        readout = Readout(None if metric.positions is None else list(metric.positions), None)
        logits = model(tokens)
        if clean_logits is not None:
            metric = metric.bind(clean_logits=readout.select(clean_logits))
        return metric(readout.select(logits), torch.arange(tokens.shape[0], device=logits.device)).cpu()

    def evaluate(self, model: HookedModel) -> TaskScores:
        """Metric on every clean and corrupted prompt, batches concatenated in order."""
        clean, corrupted = [], []
        for b in self.batches:
            b = b.to(model.device)
            clean_logits = model(b.clean)
            clean.append(self.score(model, b.clean, b, clean_logits))
            corrupted.append(self.score(model, b.corrupted, b, clean_logits))
        return TaskScores(torch.cat(clean), torch.cat(corrupted), self.metric.name, self.correct_above)

    def __repr__(self) -> str:
        lens = sorted({b.seq_len for b in self.batches})
        return (f"TaskData({self.name!r}, prompts={self.n_prompts}, batches={len(self.batches)}, "
                f"seq_len={lens[0] if len(lens) == 1 else lens}, metric={self.metric.name!r})")


def group_by_length(
    clean: list[list[int]],
    corrupted: list[list[int]],
    answers: list[list[int]],
    positions: list[dict[str, int]],
    prompts: list[str],
    corrupted_prompts: list[str],
    labels: list[str],
) -> tuple[TaskBatch, ...]:
    """Per-prompt lists -> batches of equal token length (ordered by length, prompts in their order)."""
    by_len: dict[int, list[int]] = {}
    for i, toks in enumerate(clean):
        if len(toks) != len(corrupted[i]):
            raise ShapeMismatchError(
                f"prompt {i}: clean has {len(toks)} tokens, corrupted {len(corrupted[i])}: {prompts[i]!r} / "
                f"{corrupted_prompts[i]!r}"
            )
        by_len.setdefault(len(toks), []).append(i)
    out = []
    for _, idx in sorted(by_len.items()):
        roles = positions[idx[0]].keys()
        out.append(TaskBatch(
            torch.tensor([clean[i] for i in idx]), torch.tensor([corrupted[i] for i in idx]),
            torch.tensor([answers[i] for i in idx]),
            {r: torch.tensor([positions[i][r] for i in idx]) for r in roles},
            tuple(prompts[i] for i in idx), tuple(corrupted_prompts[i] for i in idx), tuple(labels[i] for i in idx),
        ))
    return tuple(out)


def check_size(n: int, what: str = "n") -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise TaskError(f"{what} must be a positive integer; got {n!r}")
