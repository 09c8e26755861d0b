"""The run store: one directory per run, written so that a run killed at any moment can resume.

Layout of a run directory::

    RUN_DIR/
      manifest.json                     what ran and how: command, config and its hash, seed, versions, model
                                        identity and weights hash, device, start/end times, attempts, status,
                                        the files written (results, tensors, figures, report)
      config.yaml                       the validated config (defaults filled in)
      chunks/<group>/<index>.safetensors  raw per-chunk results: the unit of resumption (sweep cells,
                                        interaction masks; ACDC's search state in chunks/acdc/00000)
      results/<name>.parquet            tidy tables (pandas + pyarrow)
      tensors/<name>.safetensors        raw tensors with their labels in the file's metadata
      figure_<name>.html                one figure per file (plotly.js embedded)
      report.html                       the self-contained report

Every file is written under a temporary name, flushed to disk and renamed into place (``os.replace`` is
atomic on POSIX), so a reader, or a restarted run, never sees half a file. A chunk file that exists is
complete; a restarted run loads it instead of recomputing it. The manifest turns ``"finished"`` last, after
every result file: a finished run is not recomputed (unless forced), an unfinished one resumes.

Nothing read back is trusted blindly. Every safetensors file carries the SHA-256 of its tensors in its header,
checked whenever it is read; when a run finishes, the manifest records the SHA-256 of every result file
(:data:`HASHED`), checked before a finished run is skipped, reported or loaded. A truncated, edited, emptied or
missing file raises :class:`~mechpatch.errors.DamagedFileError` naming it: ``repair=True`` (``--repair``)
recomputes only the damaged chunks and rewrites the results, ``force=True`` (``--force``) starts again.

One process at a time: :meth:`RunStore.locked` holds an advisory lock (``fcntl.flock`` on ``RUN_DIR/.lock``,
holding the owner's pid and host) while a run writes; a second process gets
:class:`~mechpatch.errors.RunLockedError`. The kernel releases the lock when its owner dies, so a lock left by a
killed process is taken over (with a message naming it).

The config hash is the SHA-256 of the config's canonical JSON without the keys that only say where results
go (:data:`LOCATION_KEYS`): two directories holding the same computation have the same hash. The weights
hash is the SHA-256 of every parameter's name, dtype, shape and bytes in name order (about 1 s for the 135M
parameters of SmolLM2 on one CPU thread; cached per loaded model).

>>> import tempfile
>>> store = RunStore(tempfile.mkdtemp(), "sweep", {"model": "m", "seed": 0, "out_dir": "out/a"})
>>> store.config_hash == config_hash({"seed": 0, "model": "m", "out_dir": "out/b"})
True
>>> store.status is None
True
"""

import dataclasses
import datetime
import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import Tensor

from mechpatch._files import file_sha256
from mechpatch.errors import DamagedFileError, MechpatchError, RunLockedError
from mechpatch.report import replace_atomically, write_json, write_text

#: config keys that say where results go or where they are computed, not what is computed: left out of the config
#: hash (a run started locally resumes on Ray and the reverse)
LOCATION_KEYS = ("out_dir", "executor")
#: version of the run-directory layout, recorded in every manifest (2: content hashes in chunks and manifest)
STORE_FORMAT = 2
_TMP = re.compile(r"\.tmp\d+$")
#: the temporary file safetensors' own writer (Rust ``tempfile``) creates beside ``<name>.tmp<pid>`` and renames to
#: it: left behind when a writer is killed inside ``save_file``
_WRITER_TMP = re.compile(r"^\.tmp[A-Za-z0-9]{6}$")
#: files whose SHA-256 a finished run's manifest records: everything a result is read back from. The figure
#: files and report.html are drawings of these (``mechpatch report`` redraws them), so they are not hashed.
HASHED = re.compile(r"^(results/.*\.parquet|tensors/.*\.safetensors|[^/]*\.json|[^/]*\.dot|config\.yaml)$")
_NOT_HASHED = ("manifest.json",)
#: how to recover, said by every damaged-file error
RECOVER = "run the same command with --repair to recompute only what is damaged, or --force to start again"


class RunError(MechpatchError, RuntimeError):
    """A run directory cannot be used as asked: not a run, not finished, or damaged."""


class RunConflictError(MechpatchError, ValueError):
    """The run directory holds a different run (another config or other weights) than the one asked for."""


def _io_error(path: str, err: OSError, doing: str) -> RunError:
    """An OS error while using the run directory, as a :class:`RunError` naming the path and the cause."""
    return RunError(f"cannot {doing} {path!r}: {err.strerror or err} (errno {errno.errorcode.get(err.errno, err.errno)})")


# ----------------------------------------------------------------------------- hashes and provenance


def normalize_config(config: Any) -> dict[str, Any]:
    """A config dataclass (or mapping) as plain JSON data: tuples become lists, keys keep their order."""
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return json.loads(json.dumps(data))


def config_hash(config: Any) -> str:
    """SHA-256 of the config's canonical JSON (sorted keys), without :data:`LOCATION_KEYS`."""
    data = {k: v for k, v in normalize_config(config).items() if k not in LOCATION_KEYS}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


_WEIGHTS_HASHES: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def weights_hash(model: Any) -> str:
    """SHA-256 over the model's parameters (name, dtype, shape, bytes) in name order; cached per loaded model.

    Args:
        model: a :class:`~mechpatch.model.HookedModel` (or any ``nn.Module``).

    Returns:
        The hex digest. Equal weights give equal digests in any process, on any device.
    """
    module = getattr(model, "bridge", model)
    if module in _WEIGHTS_HASHES:
        return _WEIGHTS_HASHES[module]
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        t = param.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    _WEIGHTS_HASHES[module] = digest.hexdigest()
    return _WEIGHTS_HASHES[module]


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries a result depends on."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("mechpatch", "torch", "transformer-lens", "transformers", "numpy", "pandas", "pyarrow", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def device_info(model: Any) -> dict[str, Any]:
    """The device the model runs on, what it is, and the CPU thread count (CPU results depend on it)."""
    device = getattr(model, "device", torch.device("cpu"))
    info: dict[str, Any] = {"device": str(device), "torch_threads": torch.get_num_threads(),
                            "platform": platform.platform(), "machine": platform.machine()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    return info


def model_identity(model: Any, source: str) -> dict[str, Any]:
    """What model ran: where it came from, its shape, dtype, parameter count and weights hash."""
    spec = getattr(model, "spec", None)
    module = getattr(model, "bridge", model)
    return {
        "source": source,
        "name": getattr(model, "name", type(model).__name__),
        "repr": repr(model),
        "spec": dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else None,
        "dtype": str(getattr(model, "dtype", "")),
        "n_params": sum(p.numel() for p in module.parameters()),
        "weights_sha256": weights_hash(model),
    }


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- atomic writers


def tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 of named tensors: each name, dtype, shape and bytes, in name order.

    >>> a = tensors_sha256({"x": torch.tensor([1.0, 2.0])})
    >>> a == tensors_sha256({"x": torch.tensor([1.0, 2.0])}), a == tensors_sha256({"x": torch.tensor([1.0, 2.5])})
    (True, False)
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_tensors(path: str, tensors: Mapping[str, Tensor], metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write tensors as safetensors atomically (temp file, fsync, rename), with str -> str ``metadata``.

    The metadata and the tensors' SHA-256 (:func:`tensors_sha256`, checked by :func:`read_tensors`) are stored
    as ONE header entry, JSON with sorted keys: safetensors keeps its metadata in a hash map and writes several
    entries in a different order in every process, so two entries would make equal runs differ in their bytes.
    Equal tensors and metadata give byte-identical files.
    """
    from safetensors.torch import save_file

    tmp = f"{path}.tmp{os.getpid()}"
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    entry = {"metadata": dict(metadata or {}), "sha256": tensors_sha256(cpu)}
    save_file(cpu, tmp, metadata={"mechpatch": json.dumps(entry, sort_keys=True)})
    replace_atomically(tmp, path)


def read_tensors(path: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file written by :func:`write_tensors`, their content hash checked.

    Raises:
        DamagedFileError: the file is missing, cannot be parsed (truncated, not safetensors), or its tensors'
            SHA-256 is not the one recorded in its header (a flipped byte, an edited value).
    """
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
        entry = json.loads(meta["mechpatch"]) if "mechpatch" in meta else {}
        info, recorded = entry.get("metadata", {}), entry.get("sha256")
    except FileNotFoundError:
        raise DamagedFileError(f"{path!r} is missing; {RECOVER}") from None
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError/ValueError on bad bytes
        raise DamagedFileError(f"{path!r} is damaged and was not used ({type(err).__name__}: {err}); "
                               f"{RECOVER}") from None
    if recorded is None:
        raise DamagedFileError(f"{path!r} has no content hash (written by an older mechpatch, or not by "
                               f"mechpatch), so it cannot be checked and was not used; {RECOVER}")
    actual = tensors_sha256(tensors)
    if actual != recorded:
        raise DamagedFileError(f"{path!r} is damaged and was not used: its tensors' sha256 is {actual[:12]}, "
                               f"recorded {recorded[:12]} when written; {RECOVER}")
    return tensors, info


def write_table(path: str, frame: Any) -> None:
    """Write a pandas DataFrame as Parquet (pyarrow) atomically."""
    tmp = f"{path}.tmp{os.getpid()}"
    frame.to_parquet(tmp, index=False, engine="pyarrow")
    replace_atomically(tmp, path)


def hashed_files(run_dir: str) -> dict[str, str]:
    """SHA-256 of every file of a run directory that results are read back from (:data:`HASHED`), by path."""
    out = {}
    for folder, _, files in os.walk(run_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), run_dir).replace(os.sep, "/")
            if HASHED.match(rel) and rel not in _NOT_HASHED and not _TMP.search(rel):
                out[rel] = file_sha256(os.path.join(run_dir, rel))
    return dict(sorted(out.items()))


def damaged_files(run_dir: str, manifest: Mapping[str, Any]) -> list[str]:
    """The files a finished run's manifest records whose content differs from the record (or that are gone),
    each with the reason: empty when the run's results can be trusted."""
    damaged = []
    for rel, recorded in (manifest.get("files") or {}).items():
        path = os.path.join(run_dir, rel)
        if not os.path.isfile(path):
            damaged.append(f"{rel} (missing)")
        elif file_sha256(path) != recorded:
            damaged.append(f"{rel} (sha256 {file_sha256(path)[:12]}, recorded {recorded[:12]})")
    if manifest.get("status") == "finished" and "files" not in manifest:
        damaged.append("manifest.json (records no file hashes: written by an older mechpatch)")
    return damaged


def verify_finished(run_dir: str, manifest: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The manifest of a finished run whose recorded files are all intact.

    Raises:
        RunError: the directory holds no finished run.
        DamagedFileError: a recorded file is missing or its content changed since the run finished.
    """
    manifest = dict(manifest) if manifest is not None else read_manifest(run_dir)
    if manifest.get("status") != "finished":
        raise RunError(f"the run in {os.fspath(run_dir)!r} has not finished (status {manifest.get('status')!r}); run "
                       "its command again to resume it")
    damaged = damaged_files(os.fspath(run_dir), manifest)
    if damaged:
        raise DamagedFileError(f"the finished run in {os.fspath(run_dir)!r} has damaged files, so its results were "
                               f"not used: {'; '.join(damaged)}; {RECOVER}")
    return manifest


# ----------------------------------------------------------------------------- the store


class RunStore:
    """One run directory: manifest, chunk files, results, tensors, figures, report.

    Args:
        root: the run directory (created when the run begins).
        command: what kind of run it is (``"sweep"``, ``"discover"``, ...): :func:`mechpatch.runs.rebuild_report`
            dispatches on it.
        config: the validated config (a dataclass or mapping); it is normalized and hashed.
        repair: a damaged chunk is deleted and recomputed (its name recorded in the manifest's ``repaired``)
            instead of raising :class:`~mechpatch.errors.DamagedFileError`; a finished run with damaged result
            files runs again from its intact chunks.
    """

    def __init__(self, root: str, command: str, config: Any, *, repair: bool = False) -> None:
        self.root = os.fspath(root)
        self.command = command
        self.config = normalize_config(config)
        self.config_hash = config_hash(self.config)
        self.repair = repair
        self.repaired: list[str] = []
        self._manifest: Optional[dict[str, Any]] = None
        self._lock_fd: Optional[int] = None
        self._created = now()  # the attempt starts when the command does (before the model loads)

    def __repr__(self) -> str:
        return f"RunStore({self.root!r}, {self.command}, config {self.config_hash[:12]}, status={self.status})"

    # ------------------------------------------------------------------ paths and manifest
    def path(self, *parts: str) -> str:
        """A path inside the run directory; its folder is created."""
        p = os.path.join(self.root, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.root, "manifest.json")

    @property
    def manifest(self) -> Optional[dict[str, Any]]:
        """The manifest on disk (None before the run began)."""
        if self._manifest is None and os.path.exists(self.manifest_path):
            self._manifest = read_manifest(self.root)
        return self._manifest

    @property
    def status(self) -> Optional[str]:
        m = self.manifest
        return None if m is None else m.get("status")

    def _write_manifest(self) -> None:
        if self._manifest is None:
            raise RunError("the run has not begun: call begin() first")
        write_json(self.path("manifest.json"), self._manifest)

    # ------------------------------------------------------------------ life cycle
    def preflight(self) -> None:
        """Before any work (reads only): the run directory is, or can be created as, a writable directory.

        Raises:
            RunError: ``root`` is a file, sits under a file, or its nearest existing folder is not writable.
        """
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise RunError(f"out_dir {self.root!r} is a file, not a directory; choose another out_dir")
        parent = os.path.abspath(self.root)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise RunError(f"out_dir {self.root!r} cannot be created: {parent!r} is a file, not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RunError(f"out_dir {self.root!r} cannot be written: {parent!r} is not writable by this user; "
                           "choose another out_dir")

    def check(self, force: bool = False) -> bool:
        """Before any work (reads only): True when this exact run already finished here, intact (nothing to do).

        A directory holding another config's run is refused (:class:`RunConflictError`) unless ``force``; with
        ``force`` nothing here is read (not even a damaged manifest): :meth:`begin` discards the old run. A
        finished run whose result files changed since it finished raises
        :class:`~mechpatch.errors.DamagedFileError` naming them, unless the store repairs (then the run goes
        on: False).
        """
        self.preflight()
        foreign = self.foreign_entries()
        if foreign:
            raise RunConflictError(
                f"{self.root!r} is not empty and holds no mechpatch run (no manifest.json; it has "
                f"{', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); choose a new or empty out_dir "
                "(--force only discards mechpatch runs, never other files)"
            )
        if force:
            return False
        m = self.manifest
        if m is None:
            return False
        if m.get("command") != self.command or m.get("config_hash") != self.config_hash:
            raise RunConflictError(
                f"{self.root!r} holds a {m.get('command')!r} run of another config (hash "
                f"{str(m.get('config_hash'))[:12]}, "
                f"this one {self.config_hash[:12]}); choose another out_dir, or pass --force to discard that run"
            )
        if m.get("status") != "finished":
            return False
        damaged = damaged_files(self.root, m)
        if damaged and not self.repair:
            raise DamagedFileError(f"the finished run in {self.root!r} has damaged files, so its results were not "
                                   f"used: {'; '.join(damaged)}; {RECOVER}")
        self.repaired += [d.split(" ")[0] for d in damaged]
        return not damaged

    def foreign_entries(self) -> list[str]:
        """What a directory without a manifest holds besides a run's first files (its lock, its config): a run is
        never written into such a directory, so that no file of the user's is overwritten or taken for a result."""
        if not os.path.isdir(self.root) or os.path.lexists(self.manifest_path):
            return []
        return sorted(e for e in os.listdir(self.root)
                      if e not in (".lock", "config.yaml") and not _TMP.search(e) and not _WRITER_TMP.match(e))

    def clear(self) -> None:
        """Discard a previous run here (``--force``): everything in its directory but the lock, so that none of its
        results, tensors or figures is left to be taken for the new run's. Only a run directory is cleared (one with
        a manifest, or none but a run's first files: :meth:`foreign_entries`)."""
        if self.foreign_entries():  # check() refuses these first; never delete what no run wrote
            raise RunConflictError(f"{self.root!r} holds files no mechpatch run wrote; it is not cleared")
        if os.path.isdir(self.root):
            for entry in os.listdir(self.root):
                path = os.path.join(self.root, entry)
                if entry == ".lock":
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
        self._manifest = None

    @contextmanager
    def locked(self, say: Callable[[str], None] = lambda _: None) -> Iterator["RunStore"]:
        """Hold the run directory's lock (``RUN_DIR/.lock``) while the block runs; create the directory.

        Raises:
            RunLockedError: another live process holds it (the message names its pid, host and start).
            RunError: the directory cannot be created or the lock file written.
        """
        self.acquire(say)
        try:
            yield self
        finally:
            self.release()

    def acquire(self, say: Callable[[str], None] = lambda _: None) -> None:
        """Take the run directory's lock (see :meth:`locked`); a lock left by a dead process is taken over."""
        if self._lock_fd is not None:
            return
        self.preflight()
        path = os.path.join(self.root, ".lock")
        try:
            os.makedirs(self.root, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise _io_error(path, err, "create the run directory's lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.root!r} is in use by another mechpatch process (pid {owner.get('pid', '?')} on host "
                f"{owner.get('host', '?')}, {owner.get('command', '?')} since {owner.get('since', '?')}): wait for it "
                "to finish, or stop it and run the command again (it resumes)") from None
        stale = _read_owner(fd)
        if stale.get("pid") is not None:
            say(f"{self.root}: taking over the lock left by pid {stale['pid']} on {stale.get('host', '?')} "
                f"(since {stale.get('since', '?')}), which no longer runs")
        owner = {"pid": os.getpid(), "host": platform.node(), "command": self.command, "since": now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        self._lock_fd = fd

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 (interpreter shutdown: the kernel releases the lock with the process)
            pass

    def release(self) -> None:
        """Give the lock back (the lock file stays, empty)."""
        if self._lock_fd is None:
            return
        fd, self._lock_fd = self._lock_fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def begin(self, model: Any = None, source: str = "", seed: Optional[int] = None, force: bool = False) -> None:
        """Record the start of an attempt: write (or update) the manifest, clear half-written temp files.

        Takes the run directory's lock first (if the caller has not: :meth:`locked`), so no other process's
        temporary files are touched. ``force`` discards whatever run the directory held. A resumed run must
        use the same weights as the chunks it reuses: a different weights hash is refused
        (:class:`RunConflictError`) unless ``force``.
        """
        self.acquire()
        if force:
            self.clear()
        self._remove_temp_files()
        identity = model_identity(model, source) if model is not None else None
        old = self.manifest
        if old is not None and identity is not None and old.get("model", {}).get("weights_sha256") not in (
                None, identity["weights_sha256"]):
            raise RunConflictError(
                f"{self.root!r} was started with other weights for {source!r} (sha256 "
                f"{old['model']['weights_sha256'][:12]}, now {identity['weights_sha256'][:12]}); its chunks cannot "
                "be reused: pass --force to start again"
            )
        started = self._created
        device = device_info(model) if model is not None else None
        # each attempt records what it ran on: a resumed run's chunks may come from several
        attempt = {"started": started, "pid": os.getpid(), "host": platform.node(), "versions": versions(),
                   "device": device, "repair": self.repair}
        attempts = (old or {}).get("attempts", []) + [attempt]
        self._manifest = {
            "format": STORE_FORMAT,
            "command": self.command,
            "status": "running",
            "config": self.config,
            "config_hash": self.config_hash,
            "seed": seed,
            "versions": versions(),
            "model": identity,
            "device": device,
            "started": (old or {}).get("started", started),
            "finished": None,
            "attempts": attempts,
        }
        if self.repaired:
            self._manifest["repaired"] = list(self.repaired)
        import yaml

        try:
            write_text(self.path("config.yaml"), yaml.safe_dump(self.config, sort_keys=False))
            self._write_manifest()
        except OSError as err:
            raise _io_error(self.root, err, "write the run's manifest in") from None

    def note_attempt(self, **entries: Any) -> None:
        """Record ``entries`` on this attempt (the last of the manifest's ``attempts``): its executor, workers, ..."""
        if self._manifest is None:
            raise RunError("the run has not begun: call begin() first")
        self._manifest["attempts"][-1].update(entries)
        self._write_manifest()

    def update(self, **entries: Any) -> None:
        """Add entries to the manifest (written atomically)."""
        if self._manifest is None:
            raise RunError("the run has not begun: call begin() first")
        self._manifest.update(entries)
        self._write_manifest()

    def finish(self, **entries: Any) -> None:
        """Mark the run finished (the last write of a run), with the files it wrote, their SHA-256
        (:func:`hashed_files`: checked whenever the run is read back) and its timings; give the lock back."""
        if self._manifest is None:
            raise RunError("the run has not begun: call begin() first")
        end = now()
        self._manifest["attempts"][-1]["finished"] = end
        t0 = datetime.datetime.fromisoformat(self._manifest["started"])
        seconds = (datetime.datetime.fromisoformat(end) - t0).total_seconds()
        if self.repaired:
            self._manifest["repaired"] = list(self.repaired)
        self._manifest.update(entries, status="finished", finished=end, wall_seconds=seconds,
                              files=hashed_files(self.root))
        self._write_manifest()
        self.release()  # the last write of the run

    def _remove_temp_files(self) -> None:
        if not os.path.isdir(self.root):
            return
        for folder, _, files in os.walk(self.root):
            for name in files:
                if _TMP.search(name) or _WRITER_TMP.match(name):
                    os.remove(os.path.join(folder, name))

    # ------------------------------------------------------------------ chunks
    def chunk_path(self, group: str, index: int) -> str:
        return os.path.join(self.root, "chunks", group, f"{index:05d}.safetensors")

    def load_chunk(self, group: str, index: int) -> Optional[dict[str, Tensor]]:
        """A completed chunk's tensors (content hash checked), or None when that chunk has not been written.

        Raises:
            DamagedFileError: the chunk file is truncated, unreadable or its content changed, or it is another
                chunk's file (its header names another group or index: copied or moved); unless the store
                repairs: then the file is deleted and None returned, so the chunk is recomputed.
            RunConflictError: the chunk belongs to another config (unless the store repairs, as above).
        """
        path = self.chunk_path(group, index)
        if not os.path.exists(path):
            return None
        try:
            tensors, meta = read_tensors(path)
            if meta.get("config_hash") != self.config_hash:
                raise RunConflictError(f"{path!r} belongs to another config; pass --repair to recompute it, or "
                                       "--force to start again")
            # a chunk of this config at another place (same shapes, other cells) would be a silently wrong result
            if (meta.get("group"), meta.get("index")) != (group, str(index)):
                raise DamagedFileError(f"{path!r} holds chunk {meta.get('index')} of {meta.get('group')!r}, not "
                                       f"chunk {index} of {group!r} (a file copied or moved); {RECOVER}")
        except (DamagedFileError, RunConflictError):
            if not self.repair:
                raise
            os.remove(path)
            self.repaired.append(os.path.relpath(path, self.root).replace(os.sep, "/"))
            return None
        return tensors

    def save_chunk(self, group: str, index: int, tensors: Mapping[str, Tensor]) -> None:
        """Write one chunk's tensors atomically."""
        path = self.chunk_path(group, index)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_tensors(path, tensors, {"config_hash": self.config_hash, "group": group, "index": str(index)})

    # ------------------------------------------------------------------ outputs
    def write_table(self, name: str, frame: Any) -> str:
        """``results/<name>.parquet``; returns its path relative to the run directory."""
        rel = os.path.join("results", f"{name}.parquet")
        write_table(self.path(rel), frame)
        return rel

    def write_tensors(self, name: str, tensors: Mapping[str, Tensor],
                      metadata: Optional[Mapping[str, str]] = None) -> str:
        """``tensors/<name>.safetensors``; returns its path relative to the run directory."""
        rel = os.path.join("tensors", f"{name}.safetensors")
        write_tensors(self.path(rel), tensors, metadata)
        return rel

    def write_figure(self, name: str, figure: Any) -> str:
        """``figure_<name>.html`` (see :func:`write_figure`); returns its path relative to the run directory."""
        return write_figure(self.root, name, figure)


def _read_owner(fd: int) -> dict[str, Any]:
    """The owner recorded in a lock file (empty when none, or unreadable)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def write_figure(run_dir: str, name: str, figure: Any) -> str:
    """Write ``figure_<name>.html`` in ``run_dir`` atomically; returns its path relative to ``run_dir``.

    The figure loads ``plotly.min.js`` from beside it (written once per run directory), so a run with many
    figures does not hold many copies of plotly.js; ``report.html`` embeds it and stands alone.
    """
    js = os.path.join(run_dir, "plotly.min.js")
    if not os.path.exists(js):
        from plotly.offline import get_plotlyjs

        write_text(js, get_plotlyjs())
    rel = f"figure_{slug(name)}.html"
    write_text(os.path.join(run_dir, rel), figure.to_html(include_plotlyjs="directory", full_html=True))
    return rel


def read_manifest(run_dir: str) -> dict[str, Any]:
    """The manifest of a run directory.

    Raises:
        RunError: there is none (not a run directory).
        DamagedFileError: it is not valid JSON, or not a mechpatch manifest.
    """
    path = os.path.join(os.fspath(run_dir), "manifest.json")
    if not os.path.isdir(os.fspath(run_dir)):
        raise RunError(f"{os.fspath(run_dir)!r} is not a run directory (not a directory)")
    if not os.path.exists(path):
        raise RunError(f"{os.fspath(run_dir)!r} is not a run directory: it has no manifest.json")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (ValueError, UnicodeDecodeError) as err:
        raise DamagedFileError(f"{path!r} is damaged (not valid JSON: {err}); the run cannot be trusted: run the "
                               "command again with --force to start it again") from None
    if not isinstance(data, dict) or "command" not in data or "config" not in data:
        raise DamagedFileError(f"{path!r} is not a mechpatch run manifest; run the command with --force to start "
                               "again, or choose another out_dir")
    return data


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``_`` and ``-``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


def elapsed(since: float) -> float:
    """Seconds since ``since`` (a ``time.perf_counter()`` value), rounded to 0.01."""
    return round(time.perf_counter() - since, 2)
