"""Circuit discovery. One signature, one registry: ``DISCOVERY[name](model, base, *, metric, source, ...)``.

ACDC (Conmy et al. 2023): start from the full edge graph; visit receivers in reverse topological order
(logits first); for each edge into the receiver (latest sender first), ablate it on top of everything
removed so far, and remove it for good if the damage (increase of a distance metric such as KL, or
decrease of a task metric) is below the threshold ``tau``. A node whose every outgoing edge is gone no
longer reaches the logits, so its incoming edges are removed without evaluating them (exactly: its
output is ablated everywhere, so nothing it reads matters).

The batched search speculates: it evaluates the receiver's next candidate edges in one forward, either
*cumulatively* (row j ablates candidates i..j on top of the removed set: exact as long as they are all
removed) or *one each* (row j ablates candidate j only: exact as long as they are all kept), guessing
that the next decisions repeat the last one. The first decision against the guess makes later rows
stale: a new batch starts there with the guess flipped and a small size, which doubles while guesses
hold. Every row resumes at the receiver's layer (nothing earlier can change). The result equals one-edge-per-forward ACDC (``search="sequential"``) up to float rounding in
damages that lie within ~1e-6 of ``tau``.

Checkpoints: the whole state of an ACDC search between two receivers is the removed-edge mask, the scores so
far, the current metric, the cost counters and the next receiver (the speculation restarts at each receiver).
Given a chunk store ``chunks`` (:class:`~mechpatch.chunks.ChunkStore`, e.g. the run directory's
:class:`~mechpatch.runs.RunStore`), :func:`acdc` saves that state (group :data:`CHECKPOINT_GROUP`, chunk 0,
replaced each time) after receivers, at most every ``checkpoint_seconds``, and at the end; started again with
the same store it loads the state and goes on from the next receiver. Scores are stored as float64 (every
Python float exactly), so a resumed search returns the same edges, the same scores in the same order and
the same final metric, bit for bit, as one that was never interrupted. A checkpoint of another edge layout,
metric, intervention, ``tau``, ``search``, ``batch_size`` or orientation, or of other prompts, is refused
(:class:`~mechpatch.chunks.CheckpointError`).

Units of work: with ``rows_per_unit``, each forward's candidate rows are cut into units of at most that many rows,
each its own forward (:func:`acdc_rows`); an ``executor`` (:mod:`mechpatch.runs.executor`: Ray workers that
prepared the same runner) computes the units of one forward at once, and the search goes on with their values,
which are the same wherever the units ran. The decisions stay sequential: the workers share each batch of
speculative rows.
"""

import difflib
import inspect
import math
import time
from collections.abc import Callable
from typing import Any, Optional, Union

import torch
from jaxtyping import Int
from torch import Tensor

from mechpatch._progress import progress_bar
from mechpatch.attribution.base import check_flag
from mechpatch.chunks import CheckpointError, ChunkStore
from mechpatch.circuit.components import Edge, GraphLayout
from mechpatch.circuit.eap import check_verify_options, eap, eap_ig
from mechpatch.circuit.edges import EdgeError, EdgeRunner, make_runner
from mechpatch.circuit.result import DiscoveryResult
from mechpatch.errors import InvalidArgumentError, InvalidTypeError, choices, unknown_names
from mechpatch.model import HookedModel
from mechpatch.patching.interventions import Intervention, Replace, check_intervention, describe
from mechpatch.patching.metrics import KLDivergence, Loss, Metric, as_metric

#: ACDC's search strategies (``acdc(search=...)``; a "method" in mechpatch is a discovery algorithm or an engine path)
SEARCHES = ("batched", "sequential")
#: metrics for which lower is better (distances to the clean run); any other metric is a task score
LOWER_IS_BETTER = ("kl_div", "output_mse", "loss")
#: the chunk group under which :func:`acdc` keeps its checkpoint (chunk 0, replaced as the search goes on)
CHECKPOINT_GROUP = "acdc"


def _lower_is_better(metric: Metric) -> bool:
    return metric.name in LOWER_IS_BETTER or isinstance(metric, (KLDivergence, Loss))


def _search_key(lay: GraphLayout, metric: str, ablation: str) -> Tensor:
    """SHA-256 (as uint8 [32]) of what an ACDC state is about: the edge layout, the metric and the ablation
    (:func:`~mechpatch.patching.interventions.describe` of the intervention: ``"corrupted"``, ``"zero"``, ...)."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps([list(lay.sender_labels), list(lay.receiver_labels), metric, ablation]).encode())
    digest.update(lay.valid.to("cpu", torch.bool).contiguous().numpy().tobytes())
    return torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8)


def _check_checkpoint(state: dict[str, Tensor], expect: dict[str, Tensor], full_metric: float, about: str) -> None:
    """Refuse (CheckpointError) an ACDC checkpoint that belongs to another search."""
    again = "; give another chunk store (or delete this one) to start the search afresh"
    needed = (set(expect) - {"rows_per_unit"}) | {"removed", "scores", "scored", "current", "next", "counters",
                                                   "seconds"}
    missing = sorted(needed - set(state))
    if missing:
        raise CheckpointError(f"the checkpoint is not an ACDC state: it lacks {', '.join(missing)}{again}")
    shape, old = tuple(expect["removed"].shape), tuple(state["removed"].shape)
    if old != shape:
        raise CheckpointError(f"the checkpoint is of an edge layout of {old[0]} senders x {old[1]} receivers; this "
                              f"search has {shape[0]} x {shape[1]}: it belongs to another model{again}")
    if not torch.equal(state["key"], expect["key"]):
        raise CheckpointError("the checkpoint belongs to another edge layout, metric or ablation than this search "
                              f"({about} here){again}")
    # the search is stored as "method" (older checkpoints); rows_per_unit 0 (whole forwards) where not saved
    for name in ("tau", "method", "batch_size", "lower_is_better", "rows_per_unit"):
        a = state[name].item() if name in state else 0
        b = expect[name].item()
        if a != b:
            shown = name
            if name == "method":
                shown, a, b = "search", SEARCHES[int(a)], SEARCHES[int(b)]
            raise CheckpointError(f"the checkpoint was saved by a search with {shown}={a!r}; this one has "
                                  f"{shown}={b!r}{again}")
    saved = float(state["full_metric"][0])
    if not math.isclose(saved, full_metric, rel_tol=1e-5, abs_tol=1e-7):
        raise CheckpointError(f"the checkpoint's full-model metric {saved!r} differs from this one's {full_metric!r}: "
                              f"it was saved on other prompts or weights{again}")


def acdc(
    model: HookedModel,
    base: Union[Int[Tensor, "batch pos"], list],
    *,
    metric: Union[Metric, str],
    source: Optional[Tensor] = None,
    intervention: Intervention = Replace(),
    answers: Optional[Tensor] = None,
    tau: float = 0.01,
    search: str = "batched",
    batch_size: int = 64,
    progress: Optional[bool] = None,
    lower_is_better: Optional[bool] = None,
    chunks: Optional[ChunkStore] = None,
    checkpoint_seconds: float = 1.0,
    rows_per_unit: Optional[int] = None,
    executor: Optional[Any] = None,
) -> DiscoveryResult:
    """ACDC edge pruning with threshold ``tau`` (see the module docstring).

    Args:
        model: a model the fast path supports.
        base: the clean prompts.
        metric: KL divergence to the clean run (``"kl_div"``), a task metric, or any Metric.
        source: corrupted prompts (for ``Replace()``, the default intervention); ``Zero()`` and ``Mean()`` need none.
        intervention: what a removed edge carries (see :func:`~mechpatch.circuit.edges.edge_patch`).
        tau: remove an edge when its damage is below this (in the metric's units, mean over prompts).
        search: "batched" (cumulative candidate rows, layer-resumed) or "sequential" (one edge per forward
            from the embeddings: the plain algorithm, for reference and benchmarks).
        batch_size: candidate rows per forward (batched).
        lower_is_better: the metric's orientation (default: True for kl_div, output_mse, loss).
        chunks: a chunk store (``load_chunk``/``save_chunk``, e.g. a :class:`~mechpatch.runs.RunStore`):
            the search starts from the state saved there, if any, and saves its state as it goes (see the
            module docstring); the result equals an uninterrupted search's, bit for bit.
        checkpoint_seconds: least time between two saves (a save takes a few ms; it is also spaced to cost
            at most ~5% of the search). 0 saves after every receiver, whatever the timing (deterministic: tests).
            The final state is always saved.
        rows_per_unit: cut each forward's candidate rows into units of at most this many rows (None: whole
            forwards); part of the computation, so of the checkpoint (see the module docstring).
        executor: computes the units of a forward (default: here, one after another): ``run(units, save,
            payloads)`` with payloads ``(ACDC_ROWS, {"masks", "start"})`` for a job holding the same runner
            (:class:`~mechpatch.runs.discover.DiscoverJob`); needs ``rows_per_unit``.

    Returns:
        :class:`DiscoveryResult` (``seconds`` counts the time of every attempt of a resumed search).

    Raises:
        CheckpointError: the checkpoint holds the state of another search (other layout, metric, intervention,
            tau, search, batch_size, orientation or prompts).

    >>> from mechpatch import zoo
    >>> from mechpatch.chunks import MemoryChunks
    >>> from mechpatch.patching import Zero
    >>> from mechpatch.tasks import make_task
    >>> model = zoo.load("tracr-reverse")
    >>> task = make_task("tracr-reverse", model)
    >>> (b,) = task.batches
    >>> store = MemoryChunks()
    >>> res = acdc(model, b.clean, metric=task.metric, intervention=Zero(), tau=1e-4, progress=False, chunks=store)
    >>> again = acdc(model, b.clean, metric=task.metric, intervention=Zero(), tau=1e-4, progress=False, chunks=store)
    >>> again.edges == res.edges, again.forwards == res.forwards  # the second one only read the final state
    (True, True)
    >>> acdc(model, b.clean, metric=task.metric, intervention=Zero(), tau=1e-3, progress=False,  # doctest: +ELLIPSIS
    ...      chunks=store)
    Traceback (most recent call last):
    ...
    mechpatch.chunks.CheckpointError: the checkpoint was saved by a search with tau=0.0001; this one has tau=0.001...
    """
    _check_acdc_args(intervention, search, tau, batch_size, chunks, checkpoint_seconds)
    check_flag(progress, "progress", optional=True)
    check_flag(lower_is_better, "lower_is_better", optional=True)
    if rows_per_unit is not None and (isinstance(rows_per_unit, bool) or not isinstance(rows_per_unit, int)
                                      or rows_per_unit < 1):
        raise EdgeError(f"rows_per_unit must be a positive int or None (whole forwards); got {rows_per_unit!r}")
    if executor is not None and (rows_per_unit is None or not callable(getattr(executor, "run", None))):
        raise EdgeError("executor needs rows_per_unit (the rows it shares out) and a run(units, save, payloads) "
                        "method (mechpatch.runs.executor)")
    start_time = time.time()
    metric = as_metric(metric)
    lower = _lower_is_better(metric) if lower_is_better is None else lower_is_better
    prepared = make_runner(model, base, metric=metric, source=source, intervention=intervention, answers=answers)
    ablation = describe(intervention)
    st = _AcdcSearch(model, prepared, metric, ablation, tau, search, batch_size, lower, chunks, start_time,
                     rows_per_unit, executor)
    st.resume(f"metric {metric.name!r}, ablation {ablation!r}")
    first, order = st.first, st.order
    for position in progress_bar(range(first, len(order)), total=len(order), initial=first,
                                 desc=f"ACDC ({search})", unit="receiver",
                                 enabled=progress if progress is not None else True):
        if chunks is not None and position > first and (checkpoint_seconds == 0 or (
                time.perf_counter() - st.last_save >= max(checkpoint_seconds, 20 * st.save_cost))):
            st.save(position)
        st.receiver(order[position])
    if chunks is not None and first < len(order):
        st.save(len(order))
    return st.result()


#: :func:`acdc_rows` by name: what an executor's worker runs on its runner for one unit of candidate rows
ACDC_ROWS = "mechpatch.circuit.discovery:acdc_rows"


def acdc_rows(runner: EdgeRunner, *, masks: Tensor, start: Any) -> dict[str, Tensor]:
    """One forward of ACDC's candidate rows: the mean metric over the prompts (``"values"``, on the CPU) of each
    row of removed-edge masks [row, sender, receiver], resumed at layer ``start``."""
    n = runner.n
    rows_prompt = torch.arange(n, device=runner.base.device).repeat(masks.shape[0])
    m = masks.to(runner.base.device).repeat_interleave(n, dim=0)
    with torch.inference_mode():
        logits, _, _ = runner.forward(runner.base, rows_prompt, m, start)
        return {"values": runner.metric(logits, rows_prompt).reshape(masks.shape[0], n).mean(1).cpu()}


def _check_acdc_args(intervention: object, search: object, tau: object, batch_size: object, chunks: object,
                     checkpoint_seconds: object) -> None:
    """:func:`acdc`'s argument checks."""
    check_intervention(intervention, EdgeError)
    if search not in SEARCHES:
        raise EdgeError(f"unknown ACDC search {search!r}; valid: {choices(SEARCHES)}")
    if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not math.isfinite(tau):
        raise EdgeError(f"tau must be a finite number; got {tau!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EdgeError(f"batch_size must be a positive int; got {batch_size!r}")
    if chunks is not None and not isinstance(chunks, ChunkStore):
        raise EdgeError(f"chunks must have load_chunk(group, index) and save_chunk(group, index, tensors) (a "
                        f"RunStore or mechpatch.chunks.MemoryChunks); got {type(chunks).__name__}")
    if isinstance(checkpoint_seconds, bool) or not isinstance(checkpoint_seconds, (int, float)) or not (
            0 <= checkpoint_seconds < math.inf):
        raise EdgeError(f"checkpoint_seconds must be a finite number >= 0; got {checkpoint_seconds!r}")


class _AcdcSearch:
    """The state of an ACDC search between two receivers (removed edges, scores so far, the current metric,
    the cost counters, the next receiver), and the steps that change it: see :func:`acdc`."""

    def __init__(self, model: HookedModel, runner: EdgeRunner, metric: Metric, ablation: str, tau: Union[int, float],
                 search: str, batch_size: int, lower: bool, chunks: Optional[ChunkStore], start_time: float,
                 rows_per_unit: Optional[int] = None, executor: Optional[Any] = None) -> None:
        self.model, self.runner, self.metric, self.ablation = model, runner, metric, ablation
        self.rows_per_unit, self.executor, self.units = rows_per_unit, executor, 0
        self.tau, self.search, self.batch_size, self.chunks = tau, search, batch_size, chunks
        self.start_time = start_time
        self.lay = lay = runner.lay
        self.n_s, self.n_r = len(lay.senders), len(lay.receivers)
        self.removed = torch.zeros(self.n_s, self.n_r, dtype=torch.bool)
        self.scores: dict[Edge, float] = {}
        self.edge_of = {(s, r): e for e, s, r in zip(lay.edges, lay.edge_senders.tolist(), lay.edge_receivers.tolist())}
        self.index_of = {e: sr for sr, e in self.edge_of.items()}
        self.sign = 1.0 if lower else -1.0
        self.counters = {"forwards": 0, "rows": 0}
        self.current = float(runner.base_values.mean())
        self.full_metric = self.current
        self.owners_of = lay.feeds_same | lay.feeds_kv  # [receiver, sender]: the nodes whose input a receiver input is
        self.order = list(range(self.n_r - 1, -1, -1))
        self.first, self.seconds_before = 0, 0.0  # the next position in order, and the time earlier attempts took
        self.fixed = {
            "key": _search_key(lay, metric.name, ablation), "tau": torch.tensor([float(tau)], dtype=torch.float64),
            "method": torch.tensor([SEARCHES.index(search)]), "batch_size": torch.tensor([batch_size]),
            "lower_is_better": torch.tensor([lower]), "rows_per_unit": torch.tensor([rows_per_unit or 0]),
            "full_metric": torch.tensor([self.full_metric], dtype=torch.float64)}
        self.last_save, self.save_cost = time.perf_counter(), 0.0

    def resume(self, about: str) -> None:
        """Load the state saved in the chunk store, if any (refusing another search's), and start the save clock."""
        if self.chunks is not None:
            state = self.chunks.load_chunk(CHECKPOINT_GROUP, 0)
            if state is not None:
                _check_checkpoint(state, {**self.fixed, "removed": self.removed}, self.full_metric, about)
                self.removed = state["removed"].to(torch.bool).clone()
                self.first, self.seconds_before = int(state["next"][0]), float(state["seconds"][0])
                self.current = float(state["current"][0])
                self.counters["forwards"], self.counters["rows"] = (int(x) for x in state["counters"])
                saved, scored = state["scores"].to(torch.float64), state["scored"].to(torch.bool)
                for r in self.order[:self.first]:  # the order the search scored them in: receivers, then senders,
                    for s in range(self.n_s - 1, -1, -1):  # latest first
                        if scored[s, r]:
                            self.scores[self.edge_of[(s, r)]] = float(saved[s, r])
        self.last_save, self.save_cost = time.perf_counter(), 0.0

    def save(self, position: int) -> None:
        """Save the state (``position``: the next position in the receiver order) to the chunk store."""
        t = time.perf_counter()
        values = torch.full((self.n_s, self.n_r), math.nan, dtype=torch.float64)
        scored = torch.zeros(self.n_s, self.n_r, dtype=torch.bool)
        for e, v in self.scores.items():
            values[self.index_of[e]] = v
            scored[self.index_of[e]] = True
        self.chunks.save_chunk(CHECKPOINT_GROUP, 0, {
            **self.fixed, "removed": self.removed.clone(), "scores": values, "scored": scored,
            "current": torch.tensor([self.current], dtype=torch.float64), "next": torch.tensor([position]),
            "counters": torch.tensor([self.counters["forwards"], self.counters["rows"]]),
            "seconds": torch.tensor([self.seconds_before + time.time() - self.start_time], dtype=torch.float64)})
        self.last_save = time.perf_counter()
        self.save_cost = self.last_save - t

    def evaluate(self, masks: Tensor, start: Any) -> Tensor:
        """Mean metric per row of masks [k, sender, receiver]: one forward, or one per unit of ``rows_per_unit``
        rows (computed by the executor, if any)."""
        size = self.rows_per_unit or masks.shape[0]
        slices = [masks[lo:lo + size] for lo in range(0, masks.shape[0], size)]
        self.counters["forwards"] += len(slices)
        self.counters["rows"] += masks.shape[0]
        if self.executor is None:
            return torch.cat([acdc_rows(self.runner, masks=m, start=start)["values"] for m in slices])
        units = [("acdc-rows", self.units + i) for i in range(len(slices))]
        self.units += len(slices)
        payloads = {u: (ACDC_ROWS, {"masks": m, "start": start}) for u, m in zip(units, slices)}
        out: dict[tuple[str, int], Tensor] = {}
        self.executor.run(units, lambda unit, tensors: out.__setitem__(unit, tensors["values"]), payloads)
        return torch.cat([out[u] for u in units])

    def receiver(self, r: int) -> None:
        """Decide every edge into receiver input ``r``, latest sender first."""
        lay, removed = self.lay, self.removed
        cands = [s for s in range(self.n_s - 1, -1, -1) if lay.valid[s, r]]
        # sender nodes whose output this receiver input belongs to (a GQA k/v input serves a group of heads)
        owners = torch.nonzero(self.owners_of[r]).flatten().tolist()
        if owners and all(not (lay.valid[o] & ~removed[o]).any() for o in owners):
            removed[cands, r] = True  # dangling: the node's output reaches nothing
        elif self.search == "sequential":
            for s in cands:
                m = removed.clone()
                m[s, r] = True
                v = float(self.evaluate(m[None], 0)[0])
                self._decide(s, r, v)
        else:
            self._batched(r, cands)

    def _decide(self, s: int, r: int, value: float) -> bool:
        """Score edge (s, r) by its damage when the metric becomes ``value``; remove it if below tau."""
        damage = self.sign * (value - self.current)
        self.scores[self.edge_of[(s, r)]] = damage
        remove = damage < self.tau
        if remove:
            self.removed[s, r] = True
            self.current = value
        return remove

    def _batched(self, r: int, cands: list[int]) -> None:
        """The speculative batched search over the candidates of receiver ``r`` (see the module docstring)."""
        start = min(self.lay.receiver_layer[r], self.model.spec.n_layers - 1)
        i, guess, size = 0, True, 4  # guess: the next candidates will be removed (True) or kept (False)
        while i < len(cands):
            chunk = cands[i:i + size]
            masks = self.removed[None].repeat(len(chunk), 1, 1)
            for j, s in enumerate(chunk):
                if guess:
                    masks[j:, s, r] = True  # cumulative: row j ablates chunk[0..j]
                else:
                    masks[j, s, r] = True  # one each: row j ablates chunk[j] only
            vals = self.evaluate(masks, start)
            hit = True
            for j, s in enumerate(chunk):
                i += 1
                remove = self._decide(s, r, float(vals[j]))
                if remove != guess:  # later rows assumed the other outcome: re-batch from the next candidate
                    guess, hit = remove, False
                    break
            size = min(self.batch_size, size * 2) if hit else 4

    def result(self) -> DiscoveryResult:
        """The kept edges (receivers in order, senders in order), every edge's score (NaN: never evaluated)."""
        lay, model = self.lay, self.model
        kept_mask = lay.valid & ~self.removed
        kept = tuple(self.edge_of[(int(s), int(r))] for r, s in torch.nonzero(kept_mask.T))
        for e in lay.edges:
            self.scores.setdefault(e, float("nan"))
        return DiscoveryResult(
            method=f"acdc-{self.search}", edges=kept, scores=self.scores, layout=lay, metric=self.metric.name,
            ablation=self.ablation, params={"tau": self.tau}, forwards=self.counters["forwards"],
            evaluations=self.counters["rows"], seconds=self.seconds_before + time.time() - self.start_time,
            final_metric=self.current, full_metric=self.full_metric, spec=model.spec, model=model.name,
        )


#: name -> discovery function with the shared signature (model, base, *, metric, source, intervention, ...): ACDC here,
#: EAP and EAP-IG (ranking by edge attribution scores) in :mod:`mechpatch.circuit.eap`
DISCOVERY: dict[str, Callable[..., DiscoveryResult]] = {"acdc": acdc, "eap": eap, "eap-ig": eap_ig}


#: EAP / EAP-IG options that only matter when the candidates are verified exactly (``verify=True``)
VERIFY_OPTIONS = ("n_verify", "exact_batch_size")


def _check_discover_options(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse options that algorithm ``name`` does not take (with a "did you mean"), and for EAP / EAP-IG a bad
    ``verify``, ``n_verify``, ``exact_batch_size`` or ``per_position``, or a verify-only option without verify=True."""
    valid = [p for p in inspect.signature(DISCOVERY[name]).parameters if p not in ("model", "base", "metric")]
    unknown = unknown_names(kwargs, valid, "option")
    if unknown:
        raise InvalidArgumentError(f"discover({name!r}): {unknown}; valid: {choices(valid, limit=len(valid))}")
    if "verify" not in valid:
        return
    verify = kwargs.get("verify", False)
    check_verify_options(verify, kwargs.get("n_verify"), kwargs.get("exact_batch_size", 1),
                         kwargs.get("per_position", False))
    given = [k for k in VERIFY_OPTIONS if kwargs.get(k) is not None]
    if given and not verify:
        raise InvalidArgumentError(f"{' and '.join(given)} only matter{'' if len(given) > 1 else 's'} when the "
                                   f"candidates are verified exactly: it needs verify=True (verify={verify!r})")


def discover(name: str, model: HookedModel, base: Any, *, metric: Any, **kwargs: Any) -> DiscoveryResult:
    """Run discovery algorithm ``name`` (see :data:`DISCOVERY`) with its keyword arguments (``source``,
    ``intervention``, ``answers``, ``tau``, ...).

    Raises:
        EdgeError: an unknown algorithm.
        InvalidArgumentError: an option ``name`` does not take, or (EAP, EAP-IG) a verify-only option
            (:data:`VERIFY_OPTIONS`) without ``verify=True``.
        InvalidTypeError: a flag (``verify``, ``per_position``, ...) that is not True or False.
    """
    if not isinstance(name, str):
        raise InvalidTypeError(f"name must be a discovery algorithm's name; got {type(name).__name__}; "
                               f"valid: {choices(DISCOVERY)}")
    if name not in DISCOVERY:
        close = difflib.get_close_matches(name, DISCOVERY, 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise EdgeError(f"unknown discovery algorithm {name!r}{hint}; valid: {choices(DISCOVERY)}")
    _check_discover_options(name, kwargs)
    return DISCOVERY[name](model, base, metric=metric, **kwargs)


__all__ = ["ACDC_ROWS", "CHECKPOINT_GROUP", "DISCOVERY", "SEARCHES", "VERIFY_OPTIONS", "DiscoveryResult", "acdc",
           "acdc_rows", "discover"]
