"""Clean/corrupted prompt pairs: aligned token ids with the answer tokens a metric reads.

:func:`make_pair` tokenizes and checks a pair (same prompt count, aligned positions) and attaches answer
tokens; :class:`PromptPair` is what the engine, the tasks and the attribution methods take.
"""

import dataclasses
import operator
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from jaxtyping import Int
from torch import Tensor

from mechpatch.cache import Prompts, as_tokens
from mechpatch.errors import EmptyInputError, ShapeMismatchError
from mechpatch.model import HookedModel


@dataclass(frozen=True)
class PromptPair:
    """Aligned clean and corrupted prompts, with optional answer tokens for metrics.

    ``answers[:, 0]`` is the correct answer of each prompt and ``answers[:, 1:]`` the wrong ones
    (as a logit-difference metric reads them).
    """

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    answers: Optional[Int[Tensor, "batch answer"]] = None

    @property
    def n_prompts(self) -> int:
        return self.clean.shape[0]

    @property
    def seq_len(self) -> int:
        return self.clean.shape[1]

    @property
    def differing_positions(self) -> list[int]:
        """Positions where clean and corrupted differ in at least one prompt."""
        return torch.nonzero((self.clean != self.corrupted).any(0)).flatten().tolist()


def as_answers(model: HookedModel, answers: object, n: int, what: str = "answers") -> Int[Tensor, "batch answer"]:
    """Answer token ids [n, n_answers] from a tensor or per-prompt lists (see :func:`make_pair`), checked: one row
    per prompt, integer ids inside the vocabulary (never wrapped around).

    Raises:
        ShapeMismatchError: a count or shape that does not fit the prompts, non-integer ids, or ids outside the
            vocabulary. EmptyInputError: no answers.
    """
    form = (f"{what} must hold one entry per prompt ({n} here): the answer (a string or token id) or a list "
            "of answers, e.g. [' Mary'] for one prompt or [[' Mary', ' John'], ...] with wrong answers")
    if isinstance(answers, str):
        raise ShapeMismatchError(
            f"{what} is the string {answers!r}, which would be read character by character; {form}"
        )
    if isinstance(answers, Tensor):
        if answers.dtype.is_floating_point or answers.dtype.is_complex or answers.dtype == torch.bool:
            raise ShapeMismatchError(f"{what} must be integer token ids; got a {answers.dtype} tensor")
        t = answers.long()
    else:
        if not isinstance(answers, Iterable):
            raise ShapeMismatchError(f"{what} is a {type(answers).__name__} ({answers!r}); {form}")
        rows = []
        for row in answers:
            if isinstance(row, Tensor):
                row = row.tolist()
            row = [row] if isinstance(row, (str, int)) else row
            if not isinstance(row, Iterable):
                raise ShapeMismatchError(f"{what} entry {row!r} is neither an answer nor a list of answers; {form}")
            ids = []
            for a in row:
                if isinstance(a, str):
                    ids.append(model.token_id(a))
                else:
                    try:
                        if isinstance(a, bool):
                            raise TypeError
                        ids.append(operator.index(a))  # ints, numpy and 0-d tensor integers
                    except TypeError:
                        raise ShapeMismatchError(
                            f"{what}: {a!r} is not an answer; an answer is a string or a token id"
                        ) from None
            rows.append(ids)
        if not rows:
            raise EmptyInputError(f"{what} is empty; {form}")
        if len(rows) != n:
            raise ShapeMismatchError(f"{len(rows)} {what} entries for {n} prompts; {form}")
        widths = {len(r) for r in rows}
        if len(widths) != 1:
            raise ShapeMismatchError(f"every prompt needs the same number of answers; got counts {sorted(widths)}")
        if 0 in widths:
            raise EmptyInputError(f"{what} has empty answer lists; {form}")
        t = torch.tensor(rows, dtype=torch.long)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] != n:
        raise ShapeMismatchError(f"{what} must be [n_prompts={n}, n_answers]; got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise EmptyInputError(f"{what} is empty; {form}")
    if int(t.min()) < 0 or int(t.max()) >= model.spec.d_vocab:
        raise ShapeMismatchError(
            f"{what} ids must be in 0..{model.spec.d_vocab - 1} (the vocabulary); got {int(t.min())}..{int(t.max())}"
        )
    return t.to(model.device)


def bind_prompts(model: HookedModel, metric: Any, answers: object, tokens: Tensor) -> Any:
    """``metric`` bound to the prompts' ``answers`` and ``tokens``, with its answers (given here or when the metric
    was made, e.g. ``LogitDiff(answers=...)``) checked against the prompts and the vocabulary first
    (:func:`as_answers`). Every entry point binds its metric through this."""
    n = tokens.shape[0]
    if answers is not None:
        answers = as_answers(model, answers, n)
    metric = metric.bind(answers=answers, tokens=tokens)
    own = getattr(metric, "answers", None)
    if own is not None and own is not answers:
        checked = as_answers(model, own, n, f"metric {getattr(metric, 'name', 'metric')!r} answers")
        if dataclasses.is_dataclass(metric):
            metric = dataclasses.replace(metric, answers=checked)
    return metric


def make_pair(
    model: HookedModel,
    clean: Prompts,
    corrupted: Prompts,
    answers: object = None,
    wrong_answers: object = None,
) -> PromptPair:
    """Tokenize and check a clean/corrupted pair, and attach answer tokens.

    Args:
        clean, corrupted: strings or token ids; the same number of prompts, each pair of equal length.
        answers: per prompt, the correct answer (string or id), or a list [correct, wrong, ...].
        wrong_answers: per prompt, the wrong answer(s), appended after ``answers``.

    Raises:
        ShapeMismatchError: different prompt counts or lengths, or malformed answers (a bare string, a
            count of entries other than the prompts').
        TokenizerError: strings without a tokenizer, or an answer that is not one token.
    """
    if isinstance(clean, str):
        clean = [clean]
    if isinstance(corrupted, str):
        corrupted = [corrupted]
    if not isinstance(clean, Tensor) and not isinstance(corrupted, Tensor) and len(clean) != len(corrupted):
        raise ShapeMismatchError(f"{len(clean)} clean prompts but {len(corrupted)} corrupted; they must pair up")
    c, k = as_tokens(model, clean), as_tokens(model, corrupted)
    if c.shape != k.shape:
        detail = ""
        if c.shape[0] == k.shape[0] and not isinstance(clean, Tensor):
            detail = (
                f" (e.g. clean {model.to_str_tokens(c[0])} vs corrupted {model.to_str_tokens(k[0])})"
            )
        raise ShapeMismatchError(
            f"clean tokens {tuple(c.shape)} and corrupted tokens {tuple(k.shape)} differ in shape{detail}; "
            "patching needs the same prompt count and aligned positions"
        )
    ans = None
    if answers is not None:
        ans = as_answers(model, answers, c.shape[0])
        if wrong_answers is not None:
            ans = torch.cat([ans, as_answers(model, wrong_answers, c.shape[0], "wrong_answers")], dim=1)
    elif wrong_answers is not None:
        raise ShapeMismatchError("wrong_answers given without answers")
    pair = PromptPair(c, k, ans)
    if not pair.differing_positions:
        warnings.warn("clean and corrupted prompts are identical: every patch will be a no-op", stacklevel=2)
    return pair


def random_pair(model: HookedModel, n: int = 3, seq: int = 7, *, seed: int = 0,
                corrupt: Sequence[int] = (2, 4)) -> PromptPair:
    """Random token prompts (ids >= 1), corrupted at the positions ``corrupt``, with two random answer tokens per
    prompt: the inputs of the tests, the benchmarks and the GPU check on random-weight models.

    Draws, from one generator seeded with ``seed``: the clean tokens, then each corrupted position's tokens in turn,
    then the answers.
    """
    g = torch.Generator().manual_seed(seed)
    vocab = model.spec.d_vocab
    clean = torch.randint(1, vocab, (n, seq), generator=g)
    corrupted = clean.clone()
    for p in corrupt:
        corrupted[:, p] = torch.randint(1, vocab, (n,), generator=g)
    answers = torch.randint(1, vocab, (n, 2), generator=g)
    return make_pair(model, clean, corrupted, answers=answers)


__all__ = ["PromptPair", "as_answers", "bind_prompts", "make_pair", "random_pair"]
