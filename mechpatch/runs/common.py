"""What the run commands share: checking a config value against its choices, loading a model by name or path."""

import os
from collections.abc import Iterable
from typing import Any

from mechpatch.errors import ModelLoadError, choices

DEVICES = ("cpu", "auto", "cuda")
DTYPES = ("float32", "float64", "float16", "bfloat16")


def check_choice(key: str, value: Any, valid: Iterable[Any]) -> None:
    """Raise ``ValueError`` naming ``key``, the bad value and the valid ones (sorted) unless ``value`` is valid."""
    valid = list(valid)
    if value not in valid:
        raise ValueError(f"{key} {value!r} is not valid; valid: {', '.join(sorted(map(str, valid)))}")


def check_model(value: str) -> None:
    """A model is a bundled model's name or an existing local directory holding a saved model."""
    from mechpatch import zoo

    if value not in zoo.MODELS and not os.path.isdir(value):
        raise ValueError(f"model {value!r} is neither a bundled model ({choices(sorted(zoo.MODELS))}; see "
                         "`mechpatch models`) nor an existing directory holding a saved model")


def check_device(value: str) -> None:
    if value not in DEVICES and not value.startswith("cuda:"):
        raise ValueError(f"device {value!r} is not valid; valid: {choices(DEVICES)} or 'cuda:N'")


def load_source(source: str, device: str = "cpu", dtype: str = "float32") -> Any:
    """Load a bundled model by name, else a model saved in the directory ``source``."""
    from mechpatch import zoo
    from mechpatch.model import load_model

    if source in zoo.MODELS:
        return zoo.load(source, device=device, dtype=dtype)
    if not os.path.isdir(source):
        raise ModelLoadError(f"model {source!r} is neither a bundled model ({choices(sorted(zoo.MODELS))}) nor a "
                             "directory holding a saved model")
    return load_model(source, device=device, dtype=dtype, name=os.path.basename(os.path.normpath(source)))


def check_task_args(task: str, args: dict[str, Any], where: str = "task.args") -> dict[str, Any]:
    """A task builder's keyword arguments from a config, checked and converted by the builder's annotations.

    YAML gives lists where builders take tuples; an unknown argument is refused with the valid ones named.

    >>> check_task_args("ioi", {"n": 4, "templates": [0, 1]})
    {'n': 4, 'templates': (0, 1)}
    >>> check_task_args("ioi", {"nn": 4})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mechpatch.config.ConfigError: task.args: unknown key 'nn' for task 'ioi'; valid keys: 'n', 'seed', 'order', ...
    """
    import inspect
    import typing

    from mechpatch.config import ConfigError, _coerce, check_seed
    from mechpatch.tasks import TASKS

    check_choice("task", task, TASKS)
    if not isinstance(args, dict):
        raise ConfigError(f"{where}: expected a mapping of the task's arguments (e.g. {{n: 8}}), got "
                          f"{type(args).__name__} {args!r}")
    builder = TASKS[task]
    params = [p for p in list(inspect.signature(builder).parameters)[1:]]  # the first is the model
    hints = typing.get_type_hints(builder)
    out = {}
    for key, value in args.items():
        if key not in params:
            raise ConfigError(f"{where}: unknown key {key!r} for task {task!r}; valid keys: {choices(params)}")
        out[key] = _coerce(f"{where}.{key}", hints.get(key, Any), value)
    if "seed" in out:
        check_seed(f"{where}.seed", out["seed"])
    check_task_ranges(task, out, where)
    return out


def check_task_ranges(task: str, args: dict[str, Any], where: str = "task.args") -> None:
    """The checks of a task's arguments that need no model (the builder makes them again, with the model's):
    prompt counts at least 1, an induction block of at least 2, IOI's templates, order and corruption.

    >>> check_task_ranges("ioi", {"templates": (0, 15)})
    Traceback (most recent call last):
    ...
    mechpatch.config.ConfigError: task.args.templates: template indices must be in 0..14; got [0, 15]
    """
    from mechpatch.config import ConfigError

    def bad(key: str, message: str) -> ConfigError:
        return ConfigError(f"{where}.{key}: {message}")

    for key in ("n", "block"):
        value = args.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise bad(key, f"{key} must be a positive integer; got {value!r}")
    if task == "induction" and isinstance(args.get("block"), int) and args["block"] < 2:
        raise bad("block", f"block must be at least 2 tokens (the first of the second copy is unpredictable); got "
                           f"{args['block']}")
    if task == "ioi":
        from mechpatch.tasks.ioi import BABA_TEMPLATES, CORRUPTIONS, ORDERS

        templates = args.get("templates")
        if templates is not None:
            idx = list(templates)
            if not idx or any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(BABA_TEMPLATES)
                              for i in idx):
                raise bad("templates", f"template indices must be in 0..{len(BABA_TEMPLATES) - 1}; got {idx}")
        for key, valid in (("order", ORDERS), ("corruption", CORRUPTIONS)):
            if key in args and args[key] not in valid:
                raise bad(key, f"{args[key]!r} is not valid; valid: {choices(valid)}")


def run_task_command(cfg: Any, kind: str, needs: str, plan: Any, run: Any, *, force: bool, quiet: bool,
                     repair: bool, model: Any = None) -> dict[str, Any]:
    """The life of a run command on one task batch (``discover``, ``interactions``): skip it when finished
    (its ``summary.json``), else load the model and task, check the whole plan (``plan(cfg, model, batch,
    store)`` -> :class:`~mechpatch.runs.plan.RunPlan`: nothing written if it fails), then lock the directory,
    begin the run and return ``run(cfg, store, say, model, task, batch, plan, start, quiet)``, its summary.
    ``model``: the config's model, already loaded (a batch of runs of one model loads it once)."""
    import time

    start = time.time()
    store, say, loaded = prepare_task_run(cfg, kind, needs, force=force, quiet=quiet, repair=repair, model=model)
    if loaded is None:
        return read_json(os.path.join(cfg.out_dir, "summary.json"))
    model, task, b = loaded
    checked = plan(cfg, model, b, store)
    with store.locked(say):
        store.begin(model, cfg.model, cfg.seed, force=force)
        store.update(plan=checked.to_dict())
        return run(cfg, store, say, model, task, b, checked, start, quiet)


def read_json(path: str) -> dict[str, Any]:
    """A JSON file a run wrote (:class:`~mechpatch.runs.store.RunError` when it is missing: the run has not
    finished; :class:`~mechpatch.errors.DamagedFileError` when it is not JSON)."""
    import json

    from mechpatch.errors import DamagedFileError
    from mechpatch.runs.store import RunError

    if not os.path.exists(path):
        raise RunError(f"{path!r} is missing: the run has not finished; run the same command again")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (ValueError, UnicodeDecodeError) as err:
        raise DamagedFileError(f"{path!r} is damaged (not valid JSON: {err}); run the command again with "
                               "--repair") from None


def redraw_missing_report(run_dir: str, say: Any) -> None:
    """A finished run whose report or figure script was deleted gets them redrawn from its (checked) files, as
    ``mechpatch report`` would: "already finished" never leaves a run without its report."""
    names = os.listdir(run_dir)
    missing = [f for f in ("report.html", "report.json") if f not in names]
    if any(n.startswith("figure_") for n in names) and "plotly.min.js" not in names:
        missing.append("plotly.min.js")
    if "report.json" in missing:  # the report's spec is a hashed result: its loss is damage, named by check()
        return
    if missing:
        from mechpatch.runs import rebuild_report

        rebuild_report(run_dir)
        say(f"{run_dir}: {', '.join(missing)} missing: redrawn from the run's files")


def prepare_task_run(cfg: Any, kind: str, needs: str, *, force: bool, quiet: bool,
                     repair: bool = False, model: Any = None) -> tuple[Any, Any, Any]:
    """The shared, read-only start of a run on one task batch: open the run store (nothing written), skip a
    finished run, load the model, build the task (seeded from ``cfg.seed`` where the task takes a seed, its
    memory checked first) and require a single batch.

    The caller checks the rest of its plan, then locks the directory and begins the run
    (``with store.locked(say): store.begin(...)``): a config that fails before that writes nothing.

    Returns ``(store, say, loaded)``: ``loaded`` is None when the run had already finished, else
    ``(model, task, batch)`` with the batch on the model's device. ``needs`` names the caller in the error
    for tasks of several prompt lengths (e.g. "discovery needs").
    """
    import torch

    from mechpatch.runs.store import RunStore

    store = RunStore(cfg.out_dir, kind, cfg, repair=repair)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    if store.check(force):
        say(f"{cfg.out_dir}: already finished (config {store.config_hash[:12]}); nothing to do (--force recomputes)")
        redraw_missing_report(cfg.out_dir, say)
        return store, say, None
    torch.manual_seed(cfg.seed)
    if model is None:
        model = load_source(cfg.model, cfg.device, cfg.dtype)
    task, batch = one_batch_task(cfg, model, needs)
    return store, say, (model, task, batch)


def plan_task_run(cfg: Any, kind: str, needs: str, model: Any = None) -> tuple[Any, Any, Any]:
    """The read-only start of a ``--dry-run`` on one task batch: the run store (its directory checked, nothing
    written), the model (loaded unless given, torch seeded from ``cfg.seed``) and the task's single batch.

    Returns ``(store, model, batch)``.
    """
    import torch

    from mechpatch.runs.store import RunStore

    store = RunStore(cfg.out_dir, kind, cfg)
    store.preflight()
    if model is None:
        torch.manual_seed(cfg.seed)
        model = load_source(cfg.model, cfg.device, cfg.dtype)
    return store, model, one_batch_task(cfg, model, needs)[1]


def one_batch_task(cfg: Any, model: Any, needs: str) -> tuple[Any, Any]:
    """The task ``cfg.task`` / ``cfg.task_args`` names (memory checked first), and its single batch on the model's
    device (:class:`~mechpatch.errors.ShapeMismatchError` when it has prompts of several lengths)."""
    from mechpatch.errors import ShapeMismatchError
    from mechpatch.runs.plan import build_task

    task = build_task(model, cfg.task, cfg.task_args, cfg.seed)
    if len(task.batches) != 1:
        raise ShapeMismatchError(f"{cfg.task} built {len(task.batches)} batches of different lengths; {needs} "
                                 "one (restrict the task, e.g. IOI templates: [0])")
    return task, task.batches[0].to(model.device)
