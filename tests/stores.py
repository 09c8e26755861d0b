"""Chunk stores for tests of resumable computations."""

from mechpatch.chunks import MemoryChunks


class Killed(Exception):
    """Raised by :class:`DiesAfter`: the stand-in for a process killed mid-run."""


class DiesAfter(MemoryChunks):
    """A chunk store whose process 'dies' (raises :class:`Killed`) right after its n-th save completed."""

    def __init__(self, n, chunks=None):
        super().__init__()
        self.n, self.saves = n, 0
        if chunks is not None:
            self.chunks = chunks

    def save_chunk(self, group, index, tensors):
        super().save_chunk(group, index, tensors)
        self.saves += 1
        if self.saves == self.n:
            raise Killed
