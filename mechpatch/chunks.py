"""Where long computations keep their completed pieces, so that a killed one can resume without loss.

A chunk store is any object with ``load_chunk(group, index)`` (the tensors saved under that name, or None)
and ``save_chunk(group, index, tensors)``. :class:`mechpatch.runs.RunStore` is one (atomic safetensors
files tagged with the config hash, in the run directory); :class:`MemoryChunks` keeps them in a dict (tests,
notebooks). The algorithms that take one (:func:`mechpatch.circuit.acdc`'s ``chunks``,
:func:`mechpatch.interactions.evaluate_masks`'s ``chunks``) check that what they load belongs to the
computation asked for and raise :class:`CheckpointError` otherwise.

>>> import torch
>>> store = MemoryChunks()
>>> store.load_chunk("masks", 0) is None
True
>>> store.save_chunk("masks", 0, {"values": torch.tensor([1.0, 2.0])})
>>> store.load_chunk("masks", 0)["values"]
tensor([1., 2.])
>>> sorted(store.chunks)
[('masks', 0)]
"""

from collections.abc import Mapping
from typing import Optional, Protocol, runtime_checkable

from torch import Tensor

from mechpatch.errors import MechpatchError


class CheckpointError(MechpatchError, ValueError):
    """A saved chunk or checkpoint belongs to another computation (other layout, masks or parameters)."""


@runtime_checkable
class ChunkStore(Protocol):
    """Saves and loads named groups of numbered tensor chunks (see the module docstring)."""

    def load_chunk(self, group: str, index: int) -> Optional[dict[str, Tensor]]:
        """The tensors saved as chunk ``index`` of ``group``, or None when there are none."""

    def save_chunk(self, group: str, index: int, tensors: Mapping[str, Tensor]) -> None:
        """Save (or replace) chunk ``index`` of ``group``."""


class CountingChunks:
    """A :class:`ChunkStore` that passes every call on to ``store`` and counts the chunks found and saved.

    >>> import torch
    >>> store = CountingChunks(MemoryChunks())
    >>> store.load_chunk("g", 0) is None, store.save_chunk("g", 0, {"x": torch.zeros(1)})
    (True, None)
    >>> _ = store.load_chunk("g", 0)
    >>> store.loaded, store.saved
    (1, 1)
    """

    def __init__(self, store: ChunkStore) -> None:
        self.store, self.loaded, self.saved = store, 0, 0

    def __repr__(self) -> str:
        return f"CountingChunks({self.store!r}, loaded={self.loaded}, saved={self.saved})"

    def load_chunk(self, group: str, index: int) -> Optional[dict[str, Tensor]]:
        tensors = self.store.load_chunk(group, index)
        self.loaded += tensors is not None
        return tensors

    def save_chunk(self, group: str, index: int, tensors: Mapping[str, Tensor]) -> None:
        self.store.save_chunk(group, index, tensors)
        self.saved += 1


class MemoryChunks:
    """A :class:`ChunkStore` in memory: ``chunks[(group, index)]`` holds a copy of each saved chunk."""

    def __init__(self) -> None:
        self.chunks: dict[tuple[str, int], dict[str, Tensor]] = {}

    def __repr__(self) -> str:
        return f"MemoryChunks({len(self.chunks)} chunks)"

    def load_chunk(self, group: str, index: int) -> Optional[dict[str, Tensor]]:
        saved = self.chunks.get((group, index))
        return None if saved is None else {k: v.clone() for k, v in saved.items()}

    def save_chunk(self, group: str, index: int, tensors: Mapping[str, Tensor]) -> None:
        self.chunks[(group, index)] = {k: v.detach().cpu().clone() for k, v in tensors.items()}


__all__ = ["CheckpointError", "ChunkStore", "CountingChunks", "MemoryChunks"]
