"""Interactions among input tokens (feature attribution): which tokens, alone and together, drive the output.

The components are the prompt's positions: ablating a set of tokens replaces their embeddings with a baseline,
through the engine's batched rows like any patch (one mask per row, sites :class:`~mechpatch.sites.Embed` at those
positions). The baseline is one of:

- ``filler="..."``: one token put at the ablated positions (e.g. ``" the"``, a pad or an unknown-word token);
- ``source=``: a corrupted prompt of the same length (its token at each ablated position);
- ``intervention=``: an intervention on the embedding (``Mean(reference=...)``: the mean embedding of a reference
  batch at each position; ``Zero()``).

The value is any metric of the engine. :func:`token_interactions` fits the sparse model from random masks, or, with
``exact=True``, measures all ``2^n`` masks and returns the exact Moebius transform (every order): the ground truth
for prompts of up to :data:`MAX_EXACT` tokens. Components are labelled ``"position:token"`` (``"3:' not'"``);
:func:`mechpatch.interactions.plot.token_figure` draws the prompt coloured by main effect with the strongest pairs as
arcs.
"""

import dataclasses
from collections.abc import Sequence
from typing import Callable, Optional, Union

import torch
from jaxtyping import Int
from torch import Tensor

from mechpatch.errors import choices
from mechpatch.interactions.basis import InteractionError
from mechpatch.interactions.results import InteractionModel
from mechpatch.interactions.run import BACKENDS, exhaustive_interactions, find_interactions
from mechpatch.patching.interventions import Intervention, Replace

#: the largest number of token components whose 2^n masks ``exact=True`` measures (65,536 masks)
MAX_EXACT = 16


def _one_prompt(model: object, prompt: Union[str, Tensor, Sequence[int]], what: str) -> Tensor:
    if isinstance(prompt, str):
        tokens = model.to_tokens(prompt)
    elif isinstance(prompt, Tensor):
        tokens = prompt if prompt.ndim == 2 else prompt[None]
    elif isinstance(prompt, Sequence) and prompt and all(isinstance(t, int) for t in prompt):
        tokens = torch.tensor([list(prompt)])
    else:
        raise InteractionError(f"{what} must be a string or the token ids of one prompt; got {type(prompt).__name__}")
    if tokens.ndim != 2 or tokens.shape[0] != 1 or tokens.dtype.is_floating_point:
        raise InteractionError(f"{what}: token interactions take one prompt (token ids [1, pos]); got "
                               f"{tuple(tokens.shape)} of {tokens.dtype}: run each prompt in its own call")
    return tokens


def token_positions(tokens: Int[Tensor, "1 pos"], positions: Optional[Sequence[int]], bos: Optional[int]) -> list[int]:
    """The positions that are components: ``positions`` (checked: distinct, in range, negative from the end), or
    every position but a leading BOS token."""
    seq = tokens.shape[1]
    if positions is None:
        start = 1 if bos is not None and int(tokens[0, 0]) == bos and seq > 1 else 0
        return list(range(start, seq))
    bad = [p for p in positions if isinstance(p, bool) or not isinstance(p, int) or not -seq <= p < seq]
    if bad or not positions:
        raise InteractionError(f"positions must be a non-empty list of ints in {-seq}..{seq - 1} (this prompt has "
                               f"{seq} tokens); got {list(positions)}")
    out = [p % seq for p in positions]
    if len(set(out)) != len(out):
        raise InteractionError(f"positions name a token twice: {list(positions)}")
    return sorted(out)


def token_labels(model: object, tokens: Int[Tensor, "1 pos"], positions: Sequence[int]) -> tuple[str, ...]:
    """``"position:token"`` per component, the token as its text in quotes (its id without a tokenizer)."""
    tok = getattr(model, "tokenizer", None)
    out = []
    for p in positions:
        t = int(tokens[0, p])
        out.append(f"{p}:{tok.decode([t])!r}" if tok is not None else f"{p}:#{t}")
    return tuple(out)


def filler_token(model: object, filler: Union[str, int]) -> int:
    """The token id of a filler: a string that is one token for the model's tokenizer, or an id in its vocabulary.

    Raises:
        InteractionError: the string is not exactly one token (or the model has no tokenizer), or the id is out of
            range.
    """
    if isinstance(filler, str):
        tok = getattr(model, "tokenizer", None)
        ids = tok.encode(filler, add_special_tokens=False) if tok is not None else []
        if len(ids) != 1:
            raise InteractionError(f"filler {filler!r} must be one token for this tokenizer; it is {len(ids)}"
                                   + ("" if tok is not None else " (the model has no tokenizer: give a token id)"))
        filler = ids[0]
    vocab = model.spec.d_vocab
    if isinstance(filler, bool) or not isinstance(filler, int) or not 0 <= filler < vocab:
        raise InteractionError(f"filler must be a token (a string of one token or an id in 0..{vocab - 1}); got "
                               f"{filler!r}")
    return filler


def _baseline(model: object, tokens: Tensor, source: object, filler: Optional[Union[str, int]],
              intervention: Optional[Intervention]) -> tuple[Optional[Tensor], Intervention, str]:
    given = [name for name, v in (("source", source), ("filler", filler), ("intervention", intervention))
             if v is not None]
    if len(given) != 1 and given != ["source", "intervention"]:
        raise InteractionError("give one baseline for the ablated tokens: filler= (a token put in their place), "
                               "source= (a corrupted prompt of the same length) or intervention= (e.g. "
                               f"Mean(reference=...) for the mean embedding); got {choices(given) if given else 'none'}")
    if filler is not None:
        filler = filler_token(model, filler)
        return torch.full_like(tokens, filler), Replace(), f"filler {filler}"
    if source is not None:
        src = _one_prompt(model, source, "source")
        if src.shape != tokens.shape:
            raise InteractionError(f"source has {src.shape[1]} tokens and the prompt {tokens.shape[1]}: a corrupted "
                                   "prompt must align with the prompt token for token")
        return src, intervention if intervention is not None else Replace(), "source"
    return None, intervention, type(intervention).__name__


#: what :func:`token_interactions` sets itself, so not among the keywords it passes on
_OWN = ("model", "base", "components", "metric", "source", "intervention", "answers", "order", "n_masks", "keep",
        "max_order", "backend", "seed")


def _check_engine(engine: dict, exact: bool) -> None:
    """Refuse keywords :func:`token_interactions` would pass on that the search it runs does not take (with a
    "did you mean" for a misspelling), before any work."""
    import inspect

    from mechpatch.errors import unknown_names

    target = exhaustive_interactions if exact else find_interactions
    valid = [p for p in inspect.signature(target).parameters if p not in _OWN]
    unknown = unknown_names(engine, valid)
    if unknown:
        raise InteractionError(f"token_interactions: {unknown}; valid: the named arguments and "
                               f"{choices(valid, limit=20)}")


def token_interactions(
    model: object,
    prompt: Union[str, Int[Tensor, "1 pos"]],
    positions: Optional[Sequence[int]] = None,
    *,
    metric: Union[object, str, Callable],
    source: Union[str, Int[Tensor, "1 pos"], None] = None,
    intervention: Optional[Intervention] = None,
    filler: Optional[Union[str, int]] = None,
    exact: bool = False,
    n_masks: int = 1000,
    keep: float = 0.8,
    max_order: int = 3,
    answers: Optional[Int[Tensor, "1 answer"]] = None,
    backend: str = "mechpatch",
    seed: int = 0,
    **engine: object,
) -> InteractionModel:
    """Interactions among the tokens of one prompt: main effects, pairs (and triples), as Moebius effects.

    Args:
        model, prompt: the model and one prompt (a string or token ids [1, pos]).
        positions: the positions that are components (default: every position but a leading BOS).
        metric, answers: the value of each mask, as :func:`mechpatch.patching.run_patches` reads it.
        source, filler, intervention: the baseline an ablated token takes (one of them; see the module docstring).
        exact: measure all 2^n masks (n <= :data:`MAX_EXACT`) and return the exact Moebius transform, every order.
        n_masks, keep, max_order, backend, seed: the sparse fit's budget and design (:func:`find_interactions`).
            The defaults (keep 0.8, pairs and screened triples) suit prompts: ablating a few tokens at a time
            keeps the masks near the prompt, where the Moebius effects are read, and ablated prompts are rich in
            higher-order terms (measured on SmolLM2: ``bench_interactions.py --settings tokens-smollm2``).
        engine: passed on (``method``, ``batch_size``, ``memory_budget``, ``progress``, ``chunk_size``, ``chunks``,
            ``executor``).

    Returns:
        :class:`~mechpatch.interactions.InteractionModel` over components labelled ``"position:token"``; its ``info``
        holds the positions, the tokens and the baseline.
    """
    from mechpatch.sites import Embed

    if backend not in BACKENDS:
        raise InteractionError(f"unknown backend {backend!r}; valid: {choices(BACKENDS)}")
    if not isinstance(exact, bool):
        raise InteractionError(f"exact must be True or False; got {type(exact).__name__} {exact!r}")
    _check_engine(engine, exact)
    tokens = _one_prompt(model, prompt, "prompt")
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    pos = token_positions(tokens, positions, bos)
    src, intervention, baseline = _baseline(model, tokens, source, filler, intervention)
    if exact and len(pos) > MAX_EXACT:
        raise InteractionError(f"exact=True measures all 2^n masks; {len(pos)} tokens would be {2 ** len(pos):,} "
                               f"masks (at most {MAX_EXACT} tokens): choose positions= or use the sparse fit")
    components = [(Embed(pos=p),) for p in pos]
    common = dict(metric=metric, source=src, intervention=intervention, answers=answers, **engine)
    if exact:
        found = exhaustive_interactions(model, tokens, components, order=len(pos), **common)
    else:
        found = find_interactions(model, tokens, components, n_masks=n_masks, keep=keep, max_order=max_order,
                                  backend=backend, seed=seed, **common)
    info = dict(found.info, positions=pos, tokens=[int(tokens[0, p]) for p in pos], baseline=baseline,
                prompt_tokens=tokens[0].tolist())
    return dataclasses.replace(found, components=token_labels(model, tokens, pos), info=info)


__all__ = ["MAX_EXACT", "filler_token", "token_interactions", "token_labels", "token_positions"]
