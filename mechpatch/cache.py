"""Activation storage and indexing: cache only the requested sites, in chunks, within a memory budget.

:func:`cache_activations` runs prompts through the model in chunks and keeps the hook tensors that
the requested sites live in, on a chosen device and dtype; :class:`SiteCache` indexes them by site.
Clean/corrupted prompt pairs with their answer tokens are :mod:`mechpatch.prompts`.
"""

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from jaxtyping import Int
from torch import Tensor
from mechpatch._progress import progress_bar

from mechpatch.errors import (
    EmptyInputError,
    GatedHookError,
    InvalidArgumentError,
    MemoryBudgetError,
    ShapeMismatchError,
    TokenizerError,
    choices,
)
from mechpatch.model import HookedModel, HookPoint, hook_shape, resolve_device, resolve_dtype
from mechpatch.sites import ModelSpec, Site, Sites

Prompts = Union[Int[Tensor, "batch pos"], Sequence[str], str]
_UNIT_NAMES = ("B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB")
#: the one default memory budget: bytes of transient activations per chunk of a batched run (the exact engine's
#: forwards; gradient methods take :data:`GRADIENT_BUDGET_SHARE` of it). Pass ``memory_budget`` to change it.
DEFAULT_MEMORY_BUDGET = 2 * 2**30
#: the share of the default budget that forward+backward chunks (attribution) plan with: a backward pass keeps
#: the forward's activations and their gradients alive together, beyond what their row estimates count
GRADIENT_BUDGET_SHARE = 0.5
_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(budget: Union[int, float, str, None]) -> Optional[int]:
    """A memory budget as bytes: a positive number, or a string such as ``"512MB"``, ``"2 GiB"``.

    >>> parse_bytes("2GiB")
    2147483648
    >>> parse_bytes(None) is None
    True
    >>> parse_bytes("lots")
    Traceback (most recent call last):
    ...
    mechpatch.errors.InvalidArgumentError: cannot read memory budget 'lots'; write a positive number of bytes (e.g. 2000000) or a number with a unit (e.g. '512MB', '2GiB'); valid units: 'B', 'KB', 'MB', 'GB', 'TB', 'KiB', 'MiB', 'GiB', 'TiB'

    Raises:
        InvalidArgumentError: not a number of bytes, an unknown unit, or not at least one byte.
    """
    if budget is None:
        return None
    how = "write a positive number of bytes (e.g. 2000000) or a number with a unit (e.g. '512MB', '2GiB')"
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        if not math.isfinite(budget) or budget < 1:
            raise InvalidArgumentError(f"memory budget must be at least one byte, got {budget!r}; {how}")
        return int(budget)
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", budget) if isinstance(budget, str) else None
    if m is None or m.group(2).lower() not in _UNITS | {"": 1}:
        raise InvalidArgumentError(
            f"cannot read memory budget {budget!r}; {how}; valid units: {choices(_UNIT_NAMES)}"
        )
    value = float(m.group(1)) * _UNITS.get(m.group(2).lower(), 1)
    if value < 1:
        raise InvalidArgumentError(f"memory budget {budget!r} is less than one byte; {how}")
    return int(value)


def format_bytes(n: Union[int, float]) -> str:
    """A byte count for people.

    >>> format_bytes(3 * 2**20)
    '3.0 MiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def as_tokens(model: HookedModel, prompts: Prompts) -> Int[Tensor, "batch pos"]:
    """Token ids for ``prompts`` (strings are tokenized; tensors are checked and moved to the model).

    Token ids may also come as a numpy integer array or a list of lists of ints ([batch, pos]; a flat list of
    ints is one prompt), converted to a LongTensor and checked as a tensor is.

    Raises:
        InvalidTypeError: neither text, nor token ids (e.g. floats, or a numpy array of floats); the message names
            the type given.
        ShapeMismatchError: token ids out of the vocabulary, ragged rows, or longer than the model's context.
        EmptyInputError: no prompts, or prompts of no tokens.
    """
    import numbers

    from mechpatch.errors import InvalidTypeError

    how = "pass token ids (an int tensor or numpy int array [batch, pos], or a list of lists of ints) or strings"
    if type(prompts).__module__ == "numpy" and hasattr(prompts, "dtype"):
        import numpy as np

        if not np.issubdtype(prompts.dtype, np.integer):
            raise InvalidTypeError(f"prompts: a numpy array of {prompts.dtype} is not token ids; {how}")
        prompts = torch.from_numpy(np.ascontiguousarray(prompts, dtype=np.int64))
    elif isinstance(prompts, Sequence) and not isinstance(prompts, str) and len(prompts) > 0 and not all(
            isinstance(p, str) for p in prompts):
        rows = [prompts] if all(isinstance(t, numbers.Integral) for t in prompts) else prompts
        for row in rows:
            if not isinstance(row, Sequence) or isinstance(row, str) or not all(
                    isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in row):
                bad = row if not isinstance(row, Sequence) or isinstance(row, str) else next(
                    t for t in row if isinstance(t, bool) or not isinstance(t, numbers.Integral))
                raise InvalidTypeError(f"prompts: expected token ids (ints) or strings; got an element of type "
                                       f"{type(bad).__name__} ({bad!r}); {how}")
        if len({len(row) for row in rows}) > 1:
            raise ShapeMismatchError(f"token id rows have different lengths ({sorted({len(r) for r in rows})}); "
                                     "mechpatch does not pad: give rows of equal length")
        try:
            prompts = torch.tensor([[int(t) for t in row] for row in rows], dtype=torch.long)
        except (OverflowError, RuntimeError, ValueError):
            raise ShapeMismatchError(f"token ids must be in 0..{model.spec.d_vocab - 1} (the vocabulary); got ids "
                                     "beyond 64 bits") from None
    elif not isinstance(prompts, (Tensor, str)) and not hasattr(prompts, "__iter__"):
        raise InvalidTypeError(f"prompts must be token ids or strings; got {type(prompts).__name__}; {how}")
    if isinstance(prompts, Tensor):
        if prompts.ndim == 1:
            prompts = prompts[None]
        if prompts.ndim != 2 or prompts.dtype not in (torch.int64, torch.int32):
            raise ShapeMismatchError(
                f"token ids must be an integer tensor [batch, pos]; got {prompts.dtype} of shape {tuple(prompts.shape)}"
            )
        if prompts.shape[0] == 0 or prompts.shape[1] == 0:
            raise EmptyInputError(f"empty token tensor of shape {tuple(prompts.shape)}")
        if int(prompts.min()) < 0 or int(prompts.max()) >= model.spec.d_vocab:
            raise ShapeMismatchError(
                f"token ids must be in 0..{model.spec.d_vocab - 1} (the vocabulary); got "
                f"{int(prompts.min())}..{int(prompts.max())}"
            )
        if prompts.shape[1] > model.spec.n_ctx:
            raise ShapeMismatchError(f"prompts have {prompts.shape[1]} tokens; the model's context is {model.spec.n_ctx}")
        return prompts.long().to(model.device)
    return model.to_tokens(prompts)


def _hook_points(model: HookedModel, sites: Sites, seq_len: int) -> list[HookPoint]:
    if isinstance(sites, (Site, str)):
        sites = [sites]
    points = [model.hook_point(s, seq_len) for s in sites]
    if not points:
        raise EmptyInputError("no sites requested: name at least one site (e.g. Head(0, 1) or 'L0.resid_pre')")
    return points


def estimate_cache_bytes(
    model: HookedModel,
    sites: Sites,
    n_prompts: int,
    seq_len: int,
    dtype: Union[str, torch.dtype, None] = None,
) -> int:
    """Bytes a :func:`cache_activations` call would keep, computed from shapes without running the model.

    Sites sharing a hook (e.g. every head of a layer) share its storage.
    """
    points = _hook_points(model, sites, seq_len)
    dt = resolve_dtype(dtype, torch.device("cpu")) if dtype is not None else model.dtype
    size = torch.tensor([], dtype=dt).element_size()
    hooks = {p.name: p.spec for p in points}
    return sum(math.prod(hook_shape(spec, model.spec, n_prompts, seq_len)) * size for spec in hooks.values())


@dataclass
class SiteCache:
    """Cached hook tensors, indexed by site: ``cache[Head(1, 2)]`` -> [batch pos d_head].

    Holds the full tensor of every hook a requested site lives in (so sites of one layer share it);
    ``cache[site]`` selects the site's head/group/neuron and positions.
    """

    tensors: dict[str, Tensor]
    points: dict[Site, HookPoint]
    seq_len: int
    spec: ModelSpec
    tokens: Int[Tensor, "batch pos"] = field(repr=False)

    def __getitem__(self, site: Union[Site, str]) -> Tensor:
        """The cached activation of ``site``: a :class:`Site` or its notation (``"L1H0@-1"``, as
        :func:`mechpatch.sites.parse_site` reads it).

        Raises:
            InvalidTypeError: ``site`` is neither a Site nor a string.
            UnknownSiteKindError: a string that is not a site.
            KeyError: the site was not cached (the message lists those that were).
        """
        if isinstance(site, str):
            from mechpatch.sites import parse_site

            site = parse_site(site)
        elif not isinstance(site, Site):
            from mechpatch.errors import InvalidTypeError

            raise InvalidTypeError(f"a cache is indexed by a Site (e.g. Head(1, 0)) or its notation (e.g. 'L1H0@-1'); "
                                   f"got {type(site).__name__} {site!r}")
        point = self.points.get(site.validate(self.spec, self.seq_len))
        if point is None:
            cached = ", ".join(s.label for s in list(self.points)[:10])
            raise KeyError(f"site {site} was not cached; cached sites: {cached}{', ...' if len(self.points) > 10 else ''}")
        return self.tensors[point.name][point.index(self.seq_len)]

    def __contains__(self, site: object) -> bool:
        return isinstance(site, Site) and site.validate(self.spec, self.seq_len) in self.points

    def hook(self, name: str) -> Tensor:
        """The full cached tensor of a hook (canonical name, e.g. ``blocks.0.attn.hook_z``)."""
        if name not in self.tensors:
            raise KeyError(f"hook {name!r} was not cached; cached hooks: {', '.join(self.tensors)}")
        return self.tensors[name]

    @property
    def sites(self) -> list[Site]:
        return list(self.points)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def __repr__(self) -> str:
        return (
            f"SiteCache({len(self.points)} sites in {len(self.tensors)} hooks, {self.tokens.shape[0]} prompts x "
            f"{self.seq_len} tokens, {format_bytes(self.nbytes)})"
        )


def cache_activations(
    model: HookedModel,
    prompts: Prompts,
    sites: Sites,
    *,
    device: Union[str, torch.device, None] = None,
    dtype: Union[str, torch.dtype, None] = None,
    batch_size: int = 32,
    memory_budget: Union[int, str, None] = None,
    progress: Optional[bool] = None,
) -> SiteCache:
    """Run ``prompts`` and keep only the activations of ``sites``.

    Args:
        model: the model to run.
        prompts: token ids [batch pos] or strings (tokenized; all must have the same length).
        sites: the sites to keep (see :mod:`mechpatch.sites`).
        device: where to store the cache (default: the model's device).
        dtype: storage dtype (default: the model's dtype).
        batch_size: prompts per forward pass; large prompt sets run in chunks.
        memory_budget: refuse, before running, if the cache would exceed this (bytes or "2GiB").
        progress: show a progress bar (default: only when there is more than one chunk).

    Returns:
        A :class:`SiteCache`.

    Raises:
        MemoryBudgetError: the estimated cache size exceeds ``memory_budget``.
        GatedHookError: a gated hook could not be enabled or did not fire.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
    budget = parse_bytes(memory_budget)
    tokens = as_tokens(model, prompts)
    n, seq_len = tokens.shape
    points = _hook_points(model, sites, seq_len)
    store_device = resolve_device(device) if device is not None else model.device
    store_dtype = resolve_dtype(dtype, store_device) if dtype is not None else model.dtype
    need = estimate_cache_bytes(model, [p.site for p in points], n, seq_len, store_dtype)
    if budget is not None and need > budget:
        per_prompt = need / n
        raise MemoryBudgetError(
            f"caching {len(points)} sites for {n} prompts x {seq_len} tokens needs {format_bytes(need)} in "
            f"{store_dtype}, over the budget of {format_bytes(budget)}; cache fewer sites or at most "
            f"{int(budget // per_prompt)} prompts, use a smaller dtype, or raise memory_budget"
        )

    specs = {p.name: p.spec for p in points}
    out = {
        name: torch.empty(hook_shape(spec, model.spec, n, seq_len), dtype=store_dtype, device=store_device)
        for name, spec in specs.items()
    }
    filled: dict[str, int] = {}
    last_layer = max((p.site.layer_index for p in points if p.site.layer_index is not None), default=0)

    def make_hook(name: str):
        def hook(act: Tensor, hook: object) -> None:
            lo, hi = bounds
            out[name][lo:hi] = act.detach().to(device=store_device, dtype=store_dtype)
            filled[name] = filled.get(name, 0) + act.shape[0]

        return hook

    fwd_hooks = [(name, make_hook(name)) for name in specs]
    starts = range(0, n, batch_size)
    show = progress if progress is not None else len(starts) > 1
    with model.gates([p.site for p in points]), torch.inference_mode():
        for lo in progress_bar(starts, desc="caching", enabled=show, unit="chunk"):
            bounds = (lo, min(n, lo + batch_size))
            model.bridge.run_with_hooks(
                tokens[lo : bounds[1]], fwd_hooks=fwd_hooks, stop_at_layer=min(last_layer + 1, model.spec.n_layers)
            )
    missing = [name for name in specs if filled.get(name, 0) != n]
    if missing:
        raise GatedHookError(
            f"hooks {missing} did not fire on this {model.spec.architecture} model, so these sites could not "
            "be cached; TransformerLens may not implement them for this architecture"
        )
    return SiteCache(out, {p.site: p for p in points}, seq_len, model.spec, tokens)


__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "GRADIENT_BUDGET_SHARE",
    "SiteCache",
    "TokenizerError",
    "as_tokens",
    "cache_activations",
    "estimate_cache_bytes",
    "format_bytes",
    "parse_bytes",
]
