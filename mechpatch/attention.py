"""Attention patterns and the built-in head scores, computed in batches from cached patterns.

Attention weights are not explanations: a head can attend to a token and not use it, or use it through a small
weight. The scores here describe where heads look; put them beside a causal test (a patching sweep, path
patching) before reading more into them.

- :func:`attention_patterns`: every head's pattern, ``[prompt, layer, head, query, key]``, cached in chunks of
  prompts (:func:`~mechpatch.cache.cache_activations` of the pattern hooks).
- :func:`head_scores`: one score per head from patterns and their tokens, averaged over prompts and queries:

  - ``previous-token``: the weight on the key just before the query (queries 1 and up);
  - ``duplicate-token``: the weight on earlier keys holding the query's token (queries that have one);
  - ``induction``: the weight on keys right after an earlier occurrence of the query's token (the token that
    followed it last time: queries that have one);
- :func:`attention_to`: the weight from a named query position to a named key position per prompt (e.g. END to
  the indirect object in IOI), per head.

>>> p = torch.zeros(1, 1, 1, 4, 4)
>>> p[0, 0, 0, torch.arange(4), torch.tensor([0, 0, 1, 2])] = 1.0  # every query on the token before it
>>> head_scores(p, torch.tensor([[5, 6, 5, 6]]), "previous-token")
tensor([[1.]], dtype=torch.float64)
"""

from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechpatch.errors import InvalidArgumentError, ShapeMismatchError, choices

#: the built-in head scores of :func:`head_scores`
HEAD_SCORES = ("previous-token", "duplicate-token", "induction")


def attention_patterns(
    model: Any,
    prompts: Any,
    *,
    layers: Optional[Sequence[int]] = None,
    batch_size: int = 32,
    memory_budget: Union[int, str, None] = None,
) -> Float[Tensor, "prompt layer head query key"]:
    """Every head's attention pattern on ``prompts`` (token ids [prompt, pos] or strings of one length), for
    ``layers`` (default: all), in chunks of ``batch_size`` prompts, on the CPU."""
    from mechpatch.cache import as_tokens, cache_activations
    from mechpatch.sites import Pattern

    spec = model.spec
    layers = list(range(spec.n_layers)) if layers is None else list(layers)
    bad = [l for l in layers if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < spec.n_layers]
    if bad or not layers:
        raise InvalidArgumentError(f"layers must be a non-empty list of layer indices 0..{spec.n_layers - 1}; got "
                                   f"{layers!r}")
    tokens = as_tokens(model, prompts)
    sites = [Pattern(l, h) for l in layers for h in range(spec.n_heads)]
    cache = cache_activations(model, tokens, sites, device="cpu", batch_size=batch_size, memory_budget=memory_budget,
                              progress=False)
    return torch.stack([torch.stack([cache[Pattern(l, h)] for h in range(spec.n_heads)], 1) for l in layers], 1)


def _check(patterns: Tensor, tokens: Tensor) -> None:
    if patterns.ndim != 5 or patterns.shape[-1] != patterns.shape[-2]:
        raise ShapeMismatchError(f"patterns must be [prompt, layer, head, query, key] with as many keys as queries; "
                                 f"got {tuple(patterns.shape)}")
    if tokens.shape != (patterns.shape[0], patterns.shape[-1]):
        raise ShapeMismatchError(f"tokens {tuple(tokens.shape)} do not match patterns of {patterns.shape[0]} prompts "
                                 f"x {patterns.shape[-1]} positions")


def _targets(tokens: Tensor, kind: str) -> Tensor:
    """[prompt, query, key]: the keys each query's score counts."""
    n, s = tokens.shape
    q = torch.arange(s)[:, None]
    k = torch.arange(s)[None, :]
    if kind == "previous-token":
        return (k == q - 1).expand(n, s, s)
    same = tokens[:, :, None] == tokens[:, None, :]  # [prompt, query, key]: the key holds the query's token
    if kind == "duplicate-token":
        return same & (k < q)
    # induction: key k follows an earlier occurrence (k - 1 < q) of the query's token
    after = torch.zeros_like(same)
    after[:, :, 1:] = same[:, :, :-1]
    return after & (k <= q) & (k >= 1)


def head_scores(patterns: Float[Tensor, "prompt layer head query key"], tokens: Int[Tensor, "prompt pos"],
                kind: str) -> Float[Tensor, "layer head"]:
    """A built-in score (:data:`HEAD_SCORES`) per head: the attention weight on the score's target keys, summed over
    the targets of a query and averaged over the (prompt, query) pairs that have a target (float64).

    Raises:
        InvalidArgumentError: an unknown score, or tokens where no query has a target (no repeated token for
            ``duplicate-token`` or ``induction``).
    """
    if kind not in HEAD_SCORES:
        raise InvalidArgumentError(f"unknown head score {kind!r}; valid: {choices(HEAD_SCORES)}")
    _check(patterns, tokens)
    targets = _targets(tokens.cpu(), kind)
    counted = targets.any(-1)  # [prompt, query]
    if not counted.any():
        raise InvalidArgumentError(f"no query of these prompts has a {kind} target (no token repeats): use prompts "
                                   "with repeated tokens, e.g. a random sequence repeated twice")
    mass = (patterns.double().cpu() * targets[:, None, None].double()).sum(-1)  # [prompt, layer, head, query]
    return (mass * counted[:, None, None].double()).sum((0, 3)) / counted.sum()


def attention_to(patterns: Float[Tensor, "prompt layer head query key"],
                 query: Union[int, Int[Tensor, " prompt"]], key: Union[int, Int[Tensor, " prompt"]]
                 ) -> Float[Tensor, "layer head"]:
    """Per head, the mean weight from position ``query`` to position ``key`` (each an int, or one position per
    prompt, e.g. a task's ``positions["END"]`` and ``positions["IO"]``)."""
    n, s = patterns.shape[0], patterns.shape[-1]
    idx = []
    for name, pos in (("query", query), ("key", key)):
        pos = torch.full((n,), pos) if isinstance(pos, int) else pos
        if not isinstance(pos, Tensor) or pos.shape != (n,) or pos.dtype.is_floating_point:
            raise ShapeMismatchError(f"{name} must be an int or an integer tensor [prompt] ({n} here)")
        if ((pos < -s) | (pos >= s)).any():
            raise InvalidArgumentError(f"{name} positions must be in {-s}..{s - 1}; got {sorted(set(pos.tolist()))}")
        idx.append(pos.cpu() % s)
    rows = torch.arange(n)
    return patterns.double().cpu()[rows, :, :, idx[0], idx[1]].mean(0)


__all__ = ["HEAD_SCORES", "attention_patterns", "attention_to", "head_scores"]
