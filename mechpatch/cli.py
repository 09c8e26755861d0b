"""The ``mechpatch`` command line.

::

    mechpatch sweep CONFIG          patching sweeps (configs/sweep_*.yaml): resumable, chunked
    mechpatch discover CONFIG       circuit discovery (configs/discover_*.yaml)
    mechpatch interactions CONFIG   component interactions (configs/interactions_*.yaml)
    mechpatch report RUN_DIR        rebuild a finished run's report.html from its files (nothing recomputed)
    mechpatch models                the bundled models and what they are

Every run command first checks its config against the model (``--dry-run`` prints that plan and stops), then
locks its directory: nothing is written for a config that cannot run, and a second process on the same
directory is refused. Files read back are checked against the content hashes recorded when they were written;
a damaged one is named, and ``--repair`` recomputes only what is damaged (``--force`` starts again).

A run writes its directory (``out_dir`` in the config, or ``--out-dir``): see :mod:`mechpatch.runs.store`.
Run the same command again after an interruption (even ``kill -9``) and it resumes from the completed
chunks; a finished run is not recomputed unless ``--force``. Exit status: 0 on success; 2 when what was asked
cannot be done: a usage or config error (the message says what was wrong and what is valid, and nothing is
written), and equally a run directory that cannot be used as it is (damaged files, another config's run, a run
not finished, a directory locked by another process: the message says what to run instead); 1 for a failure
while running (a gated hook, the memory budget).

>>> main(["models"])  # doctest: +ELLIPSIS
induction-2l ...
0
>>> main(["sweep", "no/such/config.yaml"])  # stderr: mechpatch: error: config file not found: 'no/such/config.yaml'
2
"""

import argparse
import dataclasses
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, Optional

from mechpatch.errors import GatedHookError, MechpatchError, MemoryBudgetError

#: errors raised while running, not because of what was asked: exit status 1 (every other MechpatchError,
#: damaged run files and a locked run directory included, exits 2: see the module docstring)
RUNTIME_ERRORS = (GatedHookError, MemoryBudgetError)
#: keys a config file must name although the config class has defaults for them (as a sweep must name its model
#: and its task or prompts)
REQUIRED_KEYS = {"sweep": (), "discover": ("model", "task"), "interactions": ("model", "task")}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechpatch", description="Exact activation patching, circuit discovery and interactions on "
        "TransformerLens 4, driven by YAML configs.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  mechpatch models\n  mechpatch sweep configs/sweep_induction.yaml\n"
               "  mechpatch discover configs/discover_induction.yaml\n  mechpatch report out/sweep_induction",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def run_command(name: str, help: str, example: str, several: bool = False) -> None:
        p = sub.add_parser(name, help=help, description=help)
        if several:
            p.add_argument("config", nargs="+", help=f"YAML config, e.g. {example}; several configs of one model run "
                                                     "as a batch, each search one unit of --executor")
        else:
            p.add_argument("config", help=f"YAML config, e.g. {example}")
        p.add_argument("--out-dir", help="run directory (overrides the config's out_dir)")
        p.add_argument("--force", action="store_true",
                       help="start again: discard whatever run the directory holds (a finished one, another "
                            "config's, or a damaged one)")
        p.add_argument("--repair", action="store_true",
                       help="recompute only the chunks and result files found damaged (their content hash "
                            "differs from the one recorded when they were written), keep the rest")
        p.add_argument("--dry-run", action="store_true",
                       help="check the config against the model and print the plan (cells, chunks, forwards, "
                            "memory); write nothing")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages (for CI)")
        p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
        p.add_argument("--executor", choices=("local", "ray"),
                       help="where chunks run (overrides the config's executor): here, or on Ray workers")
        p.add_argument("--workers", type=int, help="Ray workers (with --executor ray; default 2)")
        p.add_argument("--address", help="a Ray cluster to join, 'auto' or HOST:PORT (with --executor ray; default: "
                                         "start Ray on this machine for the run)")

    run_command("sweep", "patching sweeps over a grid of sites (resumable)", "configs/sweep_induction.yaml")
    run_command("discover", "circuit discovery on a model and task", "configs/discover_induction.yaml", several=True)
    run_command("interactions", "many-component ablations and interaction recovery", "configs/interactions_redundant_induction.yaml")
    p = sub.add_parser("report", help="rebuild a finished run's report.html from its files",
                       description="Rebuild report.html and the figure files of a finished run from the files in its "
                       "directory; nothing is recomputed and no model is loaded.")
    p.add_argument("run_dir", help="a run directory (it holds manifest.json)")
    p = sub.add_parser("models", help="the bundled models and what they are")
    p.add_argument("-v", "--verbose", action="store_true", help="also say where each model came from")
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _models(args: argparse.Namespace) -> int:
    from mechpatch import zoo

    if args.json:
        print(json.dumps([dataclasses.asdict(e) for e in zoo.MODELS.values()], indent=2))
        return 0
    width = max(len(n) for n in zoo.MODELS)
    for name, entry in sorted(zoo.MODELS.items()):
        lines = textwrap.wrap(entry.summary, 100 - width - 2)
        if args.verbose:
            lines += textwrap.wrap("from: " + entry.provenance, 100 - width - 2)
        print(f"{name:<{width}}  {lines[0]}")
        for line in lines[1:]:
            print(f"{'':<{width}}  {line}")
    return 0


def _entry(command: str) -> tuple[type, Any, Any]:
    """The config class, run function and plan function of a run command."""
    if command == "sweep":
        from mechpatch.runs.sweep import SweepConfig, plan_sweep, run_sweep

        return SweepConfig, run_sweep, plan_sweep
    if command == "discover":
        from mechpatch.runs.discover import DiscoverConfig, plan_discover, run_discover

        return DiscoverConfig, run_discover, plan_discover
    from mechpatch.runs.interactions import InteractionsConfig, plan_interactions, run_interactions

    return InteractionsConfig, run_interactions, plan_interactions


def _run(args: argparse.Namespace) -> int:
    from mechpatch.config import load_config

    config_cls, run, plan = _entry(args.command)
    if args.force and args.repair:
        raise _Usage("--force starts again and --repair keeps what is intact: give one of them")
    if isinstance(args.config, list):
        if len(args.config) > 1:
            return _batch(args)
        args.config = args.config[0]
    cfg = load_config(config_cls, args.config, required=REQUIRED_KEYS[args.command])
    if args.out_dir:
        cfg = dataclasses.replace(cfg, out_dir=args.out_dir)
    if args.executor is not None or args.workers is not None or args.address is not None:
        try:
            cfg = dataclasses.replace(cfg, executor=_executor(cfg, args))
        except ValueError as err:  # the config refuses this executor (ACDC runs in one process)
            raise _Usage(f"{args.config}: {err}") from None
    _threads(args)
    if args.dry_run:
        print(plan(cfg))
        return 0
    run(cfg, force=args.force, quiet=args.quiet, repair=args.repair)
    return 0


def _threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise _Usage(f"--threads must be at least 1; got {args.threads}")
        torch.set_num_threads(args.threads)


def _batch(args: argparse.Namespace) -> int:
    """``mechpatch discover A.yaml B.yaml ...``: one batch (:func:`~mechpatch.runs.discover.run_discoveries`)."""
    from mechpatch.config import load_config
    from mechpatch.runs.discover import DiscoverConfig, plan_discover, run_discoveries
    from mechpatch.runs.executor import ExecutorSpec

    if args.out_dir:
        raise _Usage("--out-dir names one run directory; a batch writes each config's own out_dir")
    cfgs = [load_config(DiscoverConfig, path, required=REQUIRED_KEYS["discover"]) for path in args.config]
    executor = _executor(dataclasses.replace(cfgs[0], executor=ExecutorSpec()), args)
    _threads(args)
    if args.dry_run:
        for cfg in cfgs:
            print(plan_discover(cfg))
        return 0
    run_discoveries(cfgs, executor=executor, force=args.force, quiet=args.quiet, repair=args.repair)
    return 0


def _executor(cfg: Any, args: argparse.Namespace) -> Any:
    """The config's executor with the command line's --executor/--workers/--address applied."""
    from mechpatch.runs.executor import ExecutorSpec, RayOptions

    kind = args.executor or cfg.executor.kind
    if kind == "local":
        if args.workers is not None or args.address is not None:
            raise _Usage("--workers and --address need --executor ray (or executor: {ray: ...} in the config)")
        return ExecutorSpec()
    base = cfg.executor.ray or RayOptions()
    try:
        opts = dataclasses.replace(base, workers=base.workers if args.workers is None else args.workers,
                                   address=base.address if args.address is None else args.address)
    except ValueError as err:
        raise _Usage(str(err)) from None
    return ExecutorSpec("ray", opts)


class _Usage(MechpatchError, ValueError):
    pass


def _report(args: argparse.Namespace) -> int:
    from mechpatch.errors import DamagedFileError
    from mechpatch.runs import rebuild_report

    try:
        print(rebuild_report(args.run_dir))
    except DamagedFileError as err:  # its advice names --repair/--force, which `report` does not take
        raise DamagedFileError(_own_command_advice(str(err), args.run_dir)) from None
    return 0


def _own_command_advice(message: str, run_dir: str) -> str:
    """A damaged-run message raised under ``mechpatch report``, its advice re-worded to name the run's own command
    (``mechpatch sweep CONFIG --repair``): ``report`` only redraws, and takes neither --repair nor --force."""
    from mechpatch.runs.store import RECOVER, read_manifest

    try:
        command = read_manifest(run_dir)["command"]
    except MechpatchError:
        command = None
    own = f"mechpatch {command} CONFIG" if command in REQUIRED_KEYS else \
        "the run's own command (mechpatch sweep|discover|interactions CONFIG)"
    advice = (f"run {own} --repair to recompute only what is damaged, or {own} --force to start again "
              "(`mechpatch report` only redraws a finished run)")
    if RECOVER in message:
        return message.replace(RECOVER, advice)
    for phrase in ("run the command again with --force to start it again",
                   "run the command with --force to start again", "run the command again with --repair"):
        if phrase in message:
            flag = phrase.split("with ")[1].split(" ")[0]
            return message.replace(phrase, f"run {own} {flag} (`mechpatch report` takes neither --repair nor "
                                            "--force)")
    return message


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = _parser().parse_args(argv)
    if getattr(args, "quiet", False):
        os.environ["TQDM_DISABLE"] = "1"  # silences every progress bar of this process, libraries' included
    try:
        if args.command == "models":
            return _models(args)
        if args.command == "report":
            return _report(args)
        return _run(args)
    except RUNTIME_ERRORS as err:
        print(f"mechpatch: failed: {err}", file=sys.stderr)
        return 1
    except MechpatchError as err:
        print(f"mechpatch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mechpatch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (`mechpatch models | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
