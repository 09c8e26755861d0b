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
import hashlib
import json
import os
import platform
import re
import shutil
import time
import weakref
from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import Tensor

from mechpatch.errors import MechpatchError
from mechpatch.report import write_json, write_text

#: config keys that say where results go, not what is computed: left out of the config hash
LOCATION_KEYS = ("out_dir",)
#: version of the run-directory layout, recorded in every manifest
STORE_FORMAT = 1
_TMP = re.compile(r"\.tmp\d+$")


class RunError(MechpatchError, RuntimeError):
    """A run directory cannot be used as asked: not a run, not finished, or damaged."""


class RunConflictError(MechpatchError, ValueError):
    """The run directory holds a different run (another config or other weights) than the one asked for."""


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


def _replace(tmp: str, path: str) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_tensors(path: str, tensors: Mapping[str, Tensor], metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write tensors as safetensors atomically (temp file, fsync, rename), with str -> str ``metadata``.

    The metadata is stored as one JSON entry with sorted keys (safetensors orders several entries at random),
    so equal tensors and metadata give byte-identical files.
    """
    from safetensors.torch import save_file

    tmp = f"{path}.tmp{os.getpid()}"
    meta = {"mechpatch": json.dumps(dict(metadata or {}), sort_keys=True)}
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
    _replace(tmp, path)


def read_tensors(path: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file written by :func:`write_tensors`."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        meta = dict(fh.metadata() or {})
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
    return tensors, (json.loads(meta["mechpatch"]) if "mechpatch" in meta else meta)


def write_table(path: str, frame: Any) -> None:
    """Write a pandas DataFrame as Parquet (pyarrow) atomically."""
    tmp = f"{path}.tmp{os.getpid()}"
    frame.to_parquet(tmp, index=False, engine="pyarrow")
    _replace(tmp, path)


# ----------------------------------------------------------------------------- the store


class RunStore:
    """One run directory: manifest, chunk files, results, tensors, figures, report.

    Args:
        root: the run directory (created when the run begins).
        command: what kind of run it is (``"sweep"``, ``"discover"``, ...): :func:`mechpatch.runs.rebuild_report`
            dispatches on it.
        config: the validated config (a dataclass or mapping); it is normalized and hashed.
    """

    def __init__(self, root: str, command: str, config: Any) -> None:
        self.root = os.fspath(root)
        self.command = command
        self.config = normalize_config(config)
        self.config_hash = config_hash(self.config)
        self._manifest: Optional[dict[str, Any]] = None
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
    def check(self, force: bool = False) -> bool:
        """Before any work: True when this exact run already finished here (nothing to do).

        A directory holding another config's run is refused (:class:`RunConflictError`) unless ``force``,
        which deletes that run's manifest and chunks so that nothing of it is reused.
        """
        m = self.manifest
        if m is None:
            return False
        if force:
            self.clear()
            return False
        if m.get("command") != self.command or m.get("config_hash") != self.config_hash:
            raise RunConflictError(
                f"{self.root!r} holds a {m.get('command')!r} run of another config (hash "
                f"{str(m.get('config_hash'))[:12]}, "
                f"this one {self.config_hash[:12]}); choose another out_dir, or pass --force to discard that run"
            )
        return m.get("status") == "finished"

    def clear(self) -> None:
        """Forget a previous run here: its manifest and chunk files (results are overwritten when the run ends)."""
        shutil.rmtree(os.path.join(self.root, "chunks"), ignore_errors=True)
        if os.path.exists(self.manifest_path):
            os.remove(self.manifest_path)
        self._manifest = None

    def begin(self, model: Any = None, source: str = "", seed: Optional[int] = None, force: bool = False) -> None:
        """Record the start of an attempt: write (or update) the manifest, clear half-written temp files.

        A resumed run must use the same weights as the chunks it reuses: a different weights hash is refused
        (:class:`RunConflictError`) unless ``force``.
        """
        os.makedirs(self.root, exist_ok=True)
        self._remove_temp_files()
        identity = model_identity(model, source) if model is not None else None
        old = self.manifest
        if old is not None and identity is not None and old.get("model", {}).get("weights_sha256") not in (
                None, identity["weights_sha256"]):
            if not force:
                raise RunConflictError(
                    f"{self.root!r} was started with other weights for {source!r} (sha256 "
                    f"{old['model']['weights_sha256'][:12]}, now {identity['weights_sha256'][:12]}); its chunks cannot "
                    "be reused: pass --force to start again"
                )
            self.clear()
            old = None
        started = self._created
        device = device_info(model) if model is not None else None
        # each attempt records what it ran on: a resumed run's chunks may come from several
        attempt = {"started": started, "pid": os.getpid(), "host": platform.node(), "versions": versions(),
                   "device": device}
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
        import yaml

        write_text(self.path("config.yaml"), yaml.safe_dump(self.config, sort_keys=False))
        self._write_manifest()

    def update(self, **entries: Any) -> None:
        """Add entries to the manifest (written atomically)."""
        if self._manifest is None:
            raise RunError("the run has not begun: call begin() first")
        self._manifest.update(entries)
        self._write_manifest()

    def finish(self, **entries: Any) -> None:
        """Mark the run finished (the last write of a run), with the files it wrote and its timings."""
        if self._manifest is None:
            raise RunError("the run has not begun: call begin() first")
        end = now()
        self._manifest["attempts"][-1]["finished"] = end
        t0 = datetime.datetime.fromisoformat(self._manifest["started"])
        seconds = (datetime.datetime.fromisoformat(end) - t0).total_seconds()
        self._manifest.update(entries, status="finished", finished=end, wall_seconds=seconds)
        self._write_manifest()

    def _remove_temp_files(self) -> None:
        if not os.path.isdir(self.root):
            return
        for folder, _, files in os.walk(self.root):
            for name in files:
                if _TMP.search(name):
                    os.remove(os.path.join(folder, name))

    # ------------------------------------------------------------------ chunks
    def chunk_path(self, group: str, index: int) -> str:
        return os.path.join(self.root, "chunks", group, f"{index:05d}.safetensors")

    def load_chunk(self, group: str, index: int) -> Optional[dict[str, Tensor]]:
        """A completed chunk's tensors, or None when that chunk has not been written."""
        path = self.chunk_path(group, index)
        if not os.path.exists(path):
            return None
        tensors, meta = read_tensors(path)
        if meta.get("config_hash") != self.config_hash:
            raise RunConflictError(f"{path!r} belongs to another config; pass --force to start again")
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
    """The manifest of a run directory (:class:`RunError` when there is none or it is not a manifest)."""
    path = os.path.join(os.fspath(run_dir), "manifest.json")
    if not os.path.exists(path):
        raise RunError(f"{os.fspath(run_dir)!r} is not a run directory: it has no manifest.json")
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or "command" not in data or "config" not in data:
        raise RunError(f"{path!r} is not a mechpatch run manifest")
    return data


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``_`` and ``-``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


def elapsed(since: float) -> float:
    """Seconds since ``since`` (a ``time.perf_counter()`` value), rounded to 0.01."""
    return round(time.perf_counter() - since, 2)
