"""Config-driven interaction runs (``mechpatch interactions CONFIG``): a model, a task, components, an intervention.

Outputs in the run directory (layout: :mod:`mechpatch.runs.store`): ``interactions.json`` (every Moebius term of
the fitted model, and of the exhaustive measurement when ``exhaustive`` is set: what the figures are drawn from),
``results/interactions.parquet`` (the ``top_k`` strongest interactions: label, order, kind, effect, score, the
exhaustive effect beside it), ``results/mains.parquet`` (one row per component), ``figure_matrix.html``,
``figure_top.html``, ``figure_network.html``, ``summary.json`` and ``report.html``.

Resumable: the masks (the random design, each of SPEX's queries, the exhaustive design) run in chunks of
``chunk_size`` distinct masks, each saved in ``chunks/<group>/`` as it completes (``sparse``, ``sparse-<call>``
for SPEX, ``exhaustive``); a run killed at any moment and started again with the same command loads them,
computes the rest and writes results bitwise identical to an uninterrupted run's (the manifest counts the
chunks loaded and computed by the last attempt). Chunk boundaries are part of the config and its hash, as a
sweep's are. A finished run is not recomputed (unless ``force``).

>>> from mechpatch.config import from_dict
>>> cfg = from_dict(InteractionsConfig, {"components": ["L1H*", "L0H0+L0H1"], "intervention": "zero"})
>>> cfg.model, cfg.n_masks, cfg.keep, cfg.max_order, cfg.chunk_size
('redundant-induction-2l', 800, 0.8, 2, 200)
>>> from_dict(InteractionsConfig, {"components": "everything"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
mechpatch.config.ConfigError: InteractionsConfig: components must be 'heads', 'tokens' or a list of site labels ...
"""

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union


from mechpatch.interactions.results import InteractionModel
from mechpatch.interactions.run import BACKENDS
from mechpatch.runs.results import model_to_dict

#: the `intervention:` names an interactions config accepts (made objects by patching.interventions.from_name)
INTERVENTIONS = ("zero", "mean", "corrupted", "filler")
#: the components a config names by a word (else: a list of site labels)
COMPONENT_KINDS = ("heads", "tokens")
DESIGN_KINDS = ("bernoulli", "antithetic")
BACKEND_KINDS = BACKENDS  # the interaction search's own list
#: the report's figures: section kind -> (figure file name, heading)
FIGURES = {"interaction_matrix": ("matrix", "pair interactions"),
           "top_interactions": ("top", "strongest interactions (outlined: exhaustive measurement)"),
           "interaction_network": ("network", "interaction network")}
#: a tokens run's report draws its prompt first
TOKEN_FIGURES = {"token_figure": ("tokens", "the prompt: tokens by main effect, strongest pairs as arcs")}


@dataclass(frozen=True)
class InteractionsConfig:
    """One interactions run.

    Attributes:
        model: a bundled model (``mechpatch models``) or a directory holding a saved model.
        task, task_args: a task of :data:`mechpatch.tasks.TASKS` and its builder's arguments (one prompt length).
        components: ``"heads"`` (every attention head), ``"tokens"`` (every input position but a leading BOS: the
            token embedding at that position in every prompt, labelled by the first prompt's token; the report
            draws the prompt with its token interactions) or a list of site labels; each entry is one component
            (``"L1H0"``), a wildcard giving one component per site (``"L1H*"``), or sites joined by ``+``
            patched together as one component (``"L0H0+L0H1"``).
        intervention: how a component of the clean run is ablated (``direction="noise"``): ``zero``, ``mean`` (with
            tokens: the mean embedding over the prompts at each position), ``corrupted`` (the task's corrupted
            prompts' activation: with tokens, the corrupted prompt's token) or, with tokens only, ``filler`` (the
            token ``filler`` at every ablated position).
        filler: the filler token of ``intervention: filler``: a string of one token for the model's tokenizer, or a
            token id.
        n_masks: the whole mask budget (a ``holdout`` fraction measures the held-out R^2).
        keep: probability a component is left intact in a random mask.
        max_order: 2 (pairs) or 3 (pairs and screened triples).
        design, holdout, backend: see :func:`mechpatch.interactions.find_interactions`.
        exhaustive: also measure every set of at most two components exactly (N(N-1)/2 masks) and compare.
        top_k: interactions kept in ``results/interactions.parquet`` and the report.
        chunk_size: distinct masks per chunk, the unit of resumption (part of the config hash: it sets how the
            engine batches its forwards).
        device, dtype, seed: where and how it runs; ``seed`` seeds the design and the task unless its args set one.
        out_dir: the run directory.
        executor: ``local`` (this process) or ``{ray: {address, workers, cpus_per_worker, gpus_per_worker}}``: where
            the chunks of masks are computed (:mod:`mechpatch.runs.executor`); not part of the config hash: results
            do not depend on it.
    """

    model: str = "redundant-induction-2l"
    task: str = "induction"
    task_args: dict = field(default_factory=dict)
    components: Union[str, list] = "heads"
    intervention: str = "mean"
    filler: Union[str, int, None] = None
    n_masks: int = 800
    keep: float = 0.8
    max_order: int = 2
    design: str = "bernoulli"
    holdout: float = 0.2
    backend: str = "mechpatch"
    exhaustive: bool = True
    top_k: int = 30
    chunk_size: int = 200
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    out_dir: str = "out/interactions"
    executor: Any = "local"

    def __post_init__(self) -> None:
        from mechpatch.runs.common import DTYPES, check_choice, check_device, check_model, check_task_args
        from mechpatch.runs.executor import parse_executor
        from mechpatch.sites import parse_site
        from mechpatch.tasks import TASKS

        object.__setattr__(self, "executor", parse_executor(self.executor))
        check_model(self.model)
        for key, valid in (("task", TASKS), ("intervention", INTERVENTIONS), ("design", DESIGN_KINDS),
                           ("backend", BACKEND_KINDS), ("dtype", DTYPES), ("max_order", (2, 3))):
            check_choice(key, getattr(self, key), valid)
        check_device(self.device)
        if isinstance(self.components, str):
            if self.components not in COMPONENT_KINDS:
                raise ValueError(f"components must be 'heads', 'tokens' or a list of site labels (e.g. ['L1H*', "
                                 f"'L0H0+L0H1']); got {self.components!r}")
        else:
            if not self.components or not all(isinstance(c, str) for c in self.components):
                raise ValueError(f"components must be 'heads', 'tokens' or a non-empty list of site labels; got "
                                 f"{self.components!r}")
            for entry in self.components:
                for part in entry.split("+"):
                    if "*" not in part and "-" not in part:
                        parse_site(part.strip())  # raises, naming the valid forms
            object.__setattr__(self, "components", list(self.components))
            if all("*" not in e and "-" not in e for e in self.components) and len(self.components) < self.max_order:
                # one component per entry: too few to fit interactions of max_order (known without the model)
                raise ValueError(f"max_order {self.max_order} needs at least {self.max_order} components; components "
                                 f"names {len(self.components)} ({', '.join(self.components)}): add components or "
                                 "lower max_order")
        for key in ("n_masks", "top_k", "chunk_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive integer; got {getattr(self, key)!r}")
        if not 0.0 < self.keep < 1.0:
            raise ValueError(f"keep must be a probability in (0, 1); got {self.keep!r}")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be a fraction in [0, 1); got {self.holdout!r}")
        object.__setattr__(self, "task_args", check_task_args(self.task, self.task_args))
        if (self.intervention == "filler") != (self.filler is not None) or (
                self.filler is not None and self.components != "tokens"):
            raise ValueError(f"filler and intervention: filler go together, with components: tokens (the token put "
                             f"at ablated positions); got intervention {self.intervention!r}, filler {self.filler!r}, "
                             f"components {self.components!r}")

    def make_intervention(self) -> Any:
        """The intervention object this config names (:func:`~mechpatch.patching.interventions.from_name`; a filler
        token and the corrupted prompts replace: :meth:`make_source` is the run that holds them)."""
        from mechpatch.patching.interventions import from_name

        return from_name(self.intervention)

    def make_source(self, model: Any, batch: Any) -> Any:
        """The run the ablated components are read from: the corrupted prompts, the filler token at every position
        (after checking it is one token), or None (zero and mean ablation need none)."""
        if self.intervention == "corrupted":
            return batch.corrupted
        if self.intervention == "filler":
            import torch

            from mechpatch.interactions.tokens import filler_token

            return torch.full_like(batch.clean, filler_token(model, self.filler))
        return None


def token_components(model: Any, tokens: Any) -> tuple[list[tuple[Any, ...]], list[int], tuple[str, ...]]:
    """``components: tokens``: one ``Embed`` site per position but a leading BOS (in every prompt), the positions and
    their labels from the first prompt (``"3:' Mary'"``)."""
    from mechpatch.interactions.tokens import token_labels, token_positions
    from mechpatch.sites import Embed

    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    all_bos = bos is not None and bool((tokens[:, 0] == bos).all())
    positions = token_positions(tokens[:1], None, bos if all_bos else None)
    return [(Embed(pos=p),) for p in positions], positions, token_labels(model, tokens[:1], positions)


def resolve_components(spec: Any, components: Union[str, list]) -> list[tuple[Any, ...]]:
    """The components a config names, as site sets of the model with ``spec`` (validated; ``"tokens"`` depends on
    the prompts: :func:`token_components`).

    Raises:
        SiteOutOfRangeError: an entry names a layer or head the model does not have (the message gives
            the valid range).
        UnknownSiteKindError: an entry is not a site label.
        InteractionError: a component is named more than once (directly, or by a wildcard and an entry).
    """
    from mechpatch.interactions.basis import InteractionError
    from mechpatch.interactions.run import check_distinct
    from mechpatch.sites import heads, select

    if components == "heads":
        return [(s,) for s in heads(spec)]
    out: list[tuple[Any, ...]] = []
    origin: list[str] = []  # the config entry each component comes from
    for entry in components:
        if not isinstance(entry, str):
            raise InteractionError(f"components entries are site labels such as 'L1H0', 'L1H*' or 'L0H0+L0H1'; "
                                   f"got {entry!r}")
        if "+" in entry:
            out.append(tuple(select(spec, *[p.strip() for p in entry.split("+")])))
            origin.append(entry.strip())
        else:
            sites = select(spec, entry.strip())
            out.extend((s,) for s in sites)
            origin.extend([entry.strip()] * len(sites))
    labels = ["+".join(s.label for s in c) for c in out]
    check_distinct(out, [lab if lab == o else f"{lab} (from {o!r})" for lab, o in zip(labels, origin)])
    return out


def run_interactions(cfg: InteractionsConfig, *, force: bool = False, quiet: bool = False,
                     repair: bool = False) -> dict[str, Any]:
    """Run (or skip, when finished) the interaction analysis ``cfg`` describes; returns its summary.

    Everything is checked against the model (:func:`plan_interactions`) before the run directory is locked and
    its manifest written; ``repair`` recomputes damaged chunks instead of refusing them.

    Raises:
        RunConflictError: ``cfg.out_dir`` holds another config's run (and not ``force``).
        ShapeMismatchError: the task has prompts of several lengths (one batch is needed).
        DamagedFileError: a file of the run changed since it was written (and not ``repair``/``force``).
    """
    from mechpatch.runs.common import run_task_command
    from mechpatch.runs.executor import check_executor

    check_executor(cfg.executor)
    return run_task_command(cfg, "interactions", "interactions need", _plan, _run, force=force, quiet=quiet,
                            repair=repair)


def plan_interactions(cfg: InteractionsConfig, model: Any = None) -> Any:
    """What :func:`run_interactions` would compute (components, masks, forwards, memory), checked against the
    model; writes nothing (``mechpatch interactions CONFIG --dry-run``). Loads the model unless it is given."""
    from mechpatch.runs.common import plan_task_run

    store, model, b = plan_task_run(cfg, "interactions", "interactions need", model)
    return _plan(cfg, model, b, store)


def _plan(cfg: InteractionsConfig, model: Any, b: Any, store: Any) -> Any:
    from mechpatch.interactions.run import check_search
    from mechpatch.runs.executor import plan_row
    from mechpatch.runs.plan import RunPlan, check_memory, prompt_bytes, store_status

    if cfg.components == "tokens":
        components, positions, labels = token_components(model, b.clean)
        tokens = {"positions": positions, "labels": labels, "prompt_tokens": b.clean[0].tolist()}
    else:
        components, tokens = resolve_components(model.spec, cfg.components), None
    source = cfg.make_source(model, b)  # a filler that is not one token is refused here
    n = len(components)
    if n < cfg.max_order:  # else the fit fails after the masks have run
        from mechpatch.interactions.basis import InteractionError

        named = ", ".join("+".join(s.label for s in c) for c in components[:6]) + (", ..." if n > 6 else "")
        raise InteractionError(f"max_order {cfg.max_order} needs at least {cfg.max_order} components; components "
                               f"names {n} ({named or 'none'}): add components or lower max_order")
    exhaustive = 1 + n + n * (n - 1) // 2 if cfg.exhaustive else 0
    check_search("noise", cfg.holdout, cfg.backend, cfg.design, cfg.n_masks, n)  # enough masks to fit
    masks = cfg.n_masks + exhaustive
    memory = b.n_prompts * prompt_bytes(model, b.seq_len) + 8 * masks * (n + b.n_prompts)
    check_memory(memory, f"{masks} masks over {n} components on {b.n_prompts} prompts")
    rows = (("prompts", f"{b.n_prompts} of {b.seq_len} tokens ({cfg.task})"),
            ("components", f"{n} ({', '.join(' + '.join(s.label for s in c) for c in components[:6])}"
                           f"{', ...' if n > 6 else ''})"),
            ("masks", f"{cfg.n_masks} {cfg.design} (keep {cfg.keep}, {cfg.backend})"
                      + (f" + {exhaustive} exhaustive (all sets of at most two)" if exhaustive else "")),
            ("chunks", f"{-(-cfg.n_masks // cfg.chunk_size)} + {-(-exhaustive // cfg.chunk_size)} of at most "
                       f"{cfg.chunk_size} masks"))
    rows += tuple(r for r in (plan_row(cfg.executor, -(-cfg.n_masks // cfg.chunk_size)),) if r is not None)
    return RunPlan("interactions", cfg.out_dir, cfg.model, rows, masks + 4, memory, store_status(store),
                   extra={"components": components, "tokens": tokens, "source": source})


def _run(cfg: InteractionsConfig, store: Any, say: Any, model: Any, task: Any, b: Any, plan: Any, start: float,
         quiet: bool) -> dict[str, Any]:
    from mechpatch.chunks import CountingChunks
    from mechpatch.interactions.results import compare
    from mechpatch.interactions.run import exhaustive_interactions, find_interactions
    from mechpatch.report import write_json

    from mechpatch.runs.executor import MODEL_JOB, ModelJob, run_executor

    components = plan.extra["components"]

    chunks = CountingChunks(store)
    with run_executor(store, cfg.executor, lambda: ModelJob(model), MODEL_JOB) as ex:
        common = dict(intervention=cfg.make_intervention(), source=plan.extra["source"], direction="noise",
                      answers=b.answers,
                      progress=False if quiet else None, chunk_size=cfg.chunk_size, chunks=chunks, executor=ex)
        sparse = find_interactions(model, b.clean, components, metric=task.metric, n_masks=cfg.n_masks,
                                   design=cfg.design, keep=cfg.keep, max_order=cfg.max_order, holdout=cfg.holdout,
                                   seed=cfg.seed, backend=cfg.backend, **common)
        say(sparse.summary(10))
        exact = exhaustive_interactions(model, b.clean, components, metric=task.metric, **common) \
            if cfg.exhaustive else None
    tokens = plan.extra["tokens"]
    if tokens is not None:  # label the components by their tokens; the positions let the report draw the prompt
        info = {"positions": tokens["positions"], "prompt_tokens": tokens["prompt_tokens"]}
        sparse = dataclasses.replace(sparse, components=tokens["labels"], info=dict(sparse.info, **info))
        if exact is not None:
            exact = dataclasses.replace(exact, components=tokens["labels"], info=dict(exact.info, **info))
    store.update(chunks_loaded_last_attempt=chunks.loaded, chunks_computed_last_attempt=chunks.saved)
    out = cfg.out_dir
    write_json(os.path.join(out, "interactions.json"), {"sparse": model_to_dict(sparse),
                                                        "exhaustive": model_to_dict(exact) if exact else None})
    results = [store.write_table("interactions", top_table(sparse, cfg.top_k, exact)),
               store.write_table("mains", mains_table(sparse, exact))]
    summary: dict[str, Any] = {
        "model": repr(model), "task": repr(task), "components": len(components), "intervention": cfg.intervention,
        "base_metric": sparse.base_value, "r2_heldout": sparse.r2, "evaluations": sparse.evaluations,
        "forwards": sparse.forwards, "fit_seconds": sparse.seconds, "terms": len(sparse.moebius) - 1,
        "kinds": {k: len(sparse.interactions(kind=k)) for k in ("synergy", "redundancy")},
        "top": [{"label": i.label, "kind": i.kind, "effect": i.effect} for i in sparse.top(10)],
    }
    if exact is not None:
        summary["exhaustive"] = {"evaluations": exact.evaluations, "forwards": exact.forwards,
                                 "seconds": exact.seconds, "agreement": compare(sparse, exact, k=10)}
    summary["seconds"] = round(time.time() - start, 1)
    write_json(os.path.join(out, "summary.json"), json.loads(json.dumps(summary, default=float)))
    written = write_interactions_report(out)
    store.finish(results=results, outputs=["interactions.json", "summary.json"], **written)
    say(json.dumps({k: summary[k] for k in ("components", "evaluations", "r2_heldout", "kinds", "seconds")}))
    return summary


def top_table(m: InteractionModel, k: int, truth: Optional[InteractionModel] = None) -> Any:
    """The ``k`` strongest interactions (order >= 2) as a table, with the exhaustive effect where measured."""
    import pandas as pd

    rows = [{"rank": r, "label": i.label, "components": " x ".join(i.labels), "order": i.order, "kind": i.kind,
             "effect": i.effect, "score": i.score,
             "exhaustive_effect": (truth.moebius.get(i.term, float("nan")) if truth is not None else float("nan"))}
            for r, i in enumerate(m.top(k), 1)]
    columns = ["rank", "label", "components", "order", "kind", "effect", "score", "exhaustive_effect"]
    return pd.DataFrame(rows, columns=columns)


def mains_table(m: InteractionModel, truth: Optional[InteractionModel] = None) -> Any:
    """One row per component: its main effect and score (and the exhaustive main effect)."""
    import pandas as pd

    return pd.DataFrame([{"component": i.label, "effect": i.effect, "score": i.score,
                          "exhaustive_effect": truth.moebius.get(i.term, float("nan")) if truth else float("nan")}
                         for i in m.mains()])


def write_interactions_report(run_dir: str) -> dict[str, Any]:
    """Write an interactions run's ``report.json`` (headline from ``summary.json``; the three interaction
    figures drawn from ``interactions.json``) and draw the report (no model, no recomputation)."""
    from mechpatch.runs.common import read_json
    from mechpatch.runs.report import build_report, section, write_report_spec
    from mechpatch.runs.store import read_manifest

    manifest = read_manifest(run_dir)
    cfg = manifest["config"]
    summary = read_json(os.path.join(run_dir, "summary.json"))
    headline = {k: summary[k] for k in ("model", "task", "components", "intervention", "base_metric", "r2_heldout",
                                         "evaluations", "forwards", "terms", "kinds")}
    headline["top"] = ", ".join(f"{t['label']} ({t['kind']}, {t['effect']:+.3f})" for t in summary["top"][:8])
    if "exhaustive" in summary:
        headline["exhaustive agreement"] = summary["exhaustive"]["agreement"]
    headline["weights sha256"] = (manifest.get("model") or {}).get("weights_sha256")
    headline["config hash"] = manifest["config_hash"]
    figures = dict(TOKEN_FIGURES, **FIGURES) if cfg.get("components") == "tokens" else FIGURES
    sections = [section(kind, name, "interactions.json", heading) for kind, (name, heading) in figures.items()]
    write_report_spec(run_dir, f"interactions: {cfg['model']} / {cfg['task']}", headline, sections)
    return build_report(run_dir)


__all__ = [
    "COMPONENT_KINDS", "InteractionsConfig", "mains_table", "plan_interactions", "resolve_components", "run_interactions", "token_components",
    "top_table", "write_interactions_report",
]
