"""What a run will do, checked against the model before anything is written: the one validation layer that
every run command (``mechpatch sweep|discover|interactions``) and its Python entry point pass through.

A command first checks its config (the frozen dataclass refuses unknown keys, wrong types, values out of range),
then loads the model and builds its plan: the prompts (a task the tokenizer cannot express, ``n: 0``, a block
longer than the context are refused here), every site of every grid (a layer the model does not have, an MLP
kind on an attention-only model), the metric (run once on one prompt), and the memory it needs against what
this machine has. Only then does it take the run directory's lock and write its manifest. A config that fails
its plan leaves no file behind, so the corrected config runs without ``--force``.

``mechpatch sweep CONFIG --dry-run`` (and ``discover``, ``interactions``) prints the plan and stops.

>>> p = RunPlan("sweep", "out/x", "induction-2l", (("cells", "16"),), forwards=3, memory_bytes=2**20)
>>> print(p)  # doctest: +NORMALIZE_WHITESPACE, +ELLIPSIS
sweep plan -> out/x
  model            induction-2l
  cells            16
  forwards         at most 3
  memory           about 1.0 MiB (this machine has ... available)
"""

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from mechpatch.errors import MemoryBudgetError

#: prompts built to measure a task's prompt length before building all of it (memory is checked in between)
PROBE_PROMPTS = 4


@dataclass(frozen=True)
class RunPlan:
    """What a run command will compute: the work units and an upper bound on forwards and memory.

    Attributes:
        command: ``sweep``, ``discover`` or ``interactions``.
        out_dir: the run directory.
        model: what model runs.
        rows: ``(what, detail)`` lines describing the work (cells, chunks, prompts, edges, masks, ...).
        forwards: an upper bound on the forward passes (no-op cells and resumed chunks need fewer).
        memory_bytes: an estimate of the memory the run holds at its peak, beyond the model's weights.
        status: the run directory's state: ``new``, ``resume`` (an unfinished run of this config) or ``finished``.
    """

    command: str
    out_dir: str
    model: str
    rows: tuple[tuple[str, str], ...]
    forwards: int
    memory_bytes: int
    status: str = "new"
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __str__(self) -> str:
        from mechpatch.cache import format_bytes

        avail = available_memory()
        lines = [f"{self.command} plan -> {self.out_dir}" + ("" if self.status == "new" else f" ({self.status})"),
                 f"  {'model':<16} {self.model}"]
        lines += [f"  {k:<16} {v}" for k, v in self.rows]
        lines.append(f"  {'forwards':<16} at most {self.forwards}")
        lines.append(f"  {'memory':<16} about {format_bytes(self.memory_bytes)} (this machine has "
                     f"{format_bytes(avail) if avail else 'an unknown amount'} available)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what the manifest records as the run's ``plan``."""
        return {"rows": dict(self.rows), "forwards": self.forwards, "memory_bytes": self.memory_bytes}


def available_memory() -> Optional[int]:
    """Bytes of memory this machine can give a new allocation now (Linux ``MemAvailable``; else physical RAM)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(estimate: int, what: str) -> None:
    """Refuse, before any work, a run whose memory ``estimate`` exceeds what the machine has available.

    >>> check_memory(10, "ten bytes")
    >>> check_memory(2**62, "a lot")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mechpatch.errors.MemoryBudgetError: a lot needs about 4294967296.0 GiB, but this machine has ... available; ...
    """
    from mechpatch.cache import format_bytes

    avail = available_memory()
    if avail is not None and estimate > avail:
        raise MemoryBudgetError(f"{what} needs about {format_bytes(estimate)}, but this machine has "
                                f"{format_bytes(avail)} available; use fewer prompts, shorter prompts or fewer cells")


def prompt_bytes(model: Any, seq_len: int) -> int:
    """Memory one prompt pair holds during a run: its tokens, and the cached residual streams and hook values of
    its clean and corrupted runs (an upper bound for every engine method)."""
    s = model.spec
    elem = model_elem_size(model)
    return int(seq_len * (2 * 8 + 3 * (s.n_layers + 1) * s.d_model * elem + 2 * s.d_vocab * elem))


def model_elem_size(model: Any) -> int:
    import torch

    return torch.tensor([], dtype=getattr(model, "dtype", torch.float32)).element_size()


def build_task(model: Any, name: str, args: Mapping[str, Any], seed: int,
               bytes_per_prompt: Optional[Callable[[int], int]] = None) -> Any:
    """A task (:func:`mechpatch.tasks.make_task`), seeded with ``seed`` unless its args set one, whose memory
    is checked first: a task of many prompts is built with :data:`PROBE_PROMPTS` prompts to learn its prompt
    length, and refused (:class:`~mechpatch.errors.MemoryBudgetError`) if all of them would not fit.

    Args:
        bytes_per_prompt: memory per prompt of the run, from the prompt length (default :func:`prompt_bytes`).
    """
    from mechpatch.tasks import make_task

    args = seeded_args(name, args, seed)
    n = args.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > PROBE_PROMPTS:
        probe = make_task(name, model, **{**args, "n": PROBE_PROMPTS})
        longest = max(b.seq_len for b in probe.batches)
        per = (bytes_per_prompt or (lambda t: prompt_bytes(model, t)))(longest)
        check_memory(n * per, f"task {name!r} with n={n} ({longest} tokens a prompt)")
    return make_task(name, model, **args)


def seeded_args(name: str, args: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """A task's builder arguments with ``seed`` added where the builder takes one and the args do not set it."""
    import inspect

    from mechpatch.tasks import TASKS

    out = dict(args)
    if "seed" not in out and "seed" in inspect.signature(TASKS[name]).parameters:
        out["seed"] = seed
    return out


def store_status(store: Any) -> str:
    """What a run directory holds for this store's config, as the run itself would judge it (reads only):
    ``new``, ``resume``, ``finished``, or why the run would be refused (another config's run, files of a finished
    run changed, a damaged manifest, files that are not a run's)."""
    from mechpatch.errors import DamagedFileError
    from mechpatch.runs.store import damaged_files

    if store.foreign_entries():
        return "not a run directory: refused (choose a new or empty out_dir)"
    try:
        m = store.manifest
    except DamagedFileError:
        return "damaged manifest: refused (--force discards the run)"
    if m is None:
        return "new"
    if m.get("command") != store.command or m.get("config_hash") != store.config_hash:
        return f"holds a {m.get('command')!r} run of another config: refused (--force discards it)"
    if m.get("status") != "finished":
        return "resume"
    damaged = damaged_files(store.root, m)
    if damaged:
        return f"finished, but {len(damaged)} file(s) damaged: refused (--repair recomputes them)"
    return "finished"


__all__ = ["PROBE_PROMPTS", "RunPlan", "available_memory", "build_task", "check_memory", "prompt_bytes",
           "seeded_args", "store_status"]
