"""Circuit discovery from edge attribution scores: EAP and EAP-IG in :data:`~mechpatch.circuit.discovery.DISCOVERY`.

Rank every edge by its :func:`~mechpatch.attribution.edges.edge_attribution` score, keep the best (a count or a
threshold), optionally verify the candidates with the exact engine (:func:`~mechpatch.circuit.edges.edge_patch`,
one edge per row), and measure the kept circuit exactly. The estimator itself stays in
:mod:`mechpatch.attribution.edges`; this module is the discovery algorithm built on it.
"""

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

from jaxtyping import Int
from torch import Tensor

from mechpatch.attribution.base import AttributionError, check_flag
from mechpatch.attribution.edges import IG_MODES, EdgeAttribution, edge_attribution
from mechpatch.circuit.edges import edge_patch, make_runner
from mechpatch.circuit.faithfulness import circuit_metric
from mechpatch.circuit.result import DiscoveryResult
from mechpatch.errors import InvalidArgumentError, choices
from mechpatch.model import HookedModel
from mechpatch.patching.interventions import Intervention, Replace, check_intervention, describe
from mechpatch.patching.metrics import Metric

DEFAULT_TOP_N = 100  # edges kept when neither top_n nor tau is given
#: the attribution each discovery method runs (:func:`~mechpatch.attribution.edges.edge_attribution`'s ``ig`` and
#: ``steps``) when called by name with its defaults, as :func:`~mechpatch.circuit.discover` and the run command do
ATTRIBUTION = {"eap": {"ig": None, "steps": 1}, "eap-ig": {"ig": "inputs", "steps": 5}}



def check_verify_options(verify: object, n_verify: object, exact_batch_size: object, per_position: object) -> None:
    """EAP / EAP-IG's flags and exact-verification options: True/False flags, positive counts (never clamped)."""
    check_flag(verify, "verify")
    check_flag(per_position, "per_position")
    if n_verify is not None and (isinstance(n_verify, bool) or not isinstance(n_verify, int) or n_verify < 1):
        raise InvalidArgumentError(f"n_verify must be a positive int (edges verified exactly) or None (twice the "
                                   f"selection); got {n_verify!r}")
    if isinstance(exact_batch_size, bool) or not isinstance(exact_batch_size, int) or exact_batch_size < 1:
        raise InvalidArgumentError(f"exact_batch_size must be a positive int (edge sets per exact forward); got "
                                   f"{exact_batch_size!r}")


def _discover(model: HookedModel, base: Any, metric: Any, *, source: Any, intervention: Intervention, answers: Any,
              ig: Optional[str], steps: int, top_n: Optional[int], tau: Optional[float], verify: bool,
              n_verify: Optional[int], batch_size: Optional[int], memory_budget: Any, exact_batch_size: int,
              per_position: bool = False, attribution: Optional[EdgeAttribution] = None) -> DiscoveryResult:
    check_intervention(intervention, AttributionError)
    check_verify_options(verify, n_verify, exact_batch_size, per_position)
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
        raise AttributionError(f"top_n must be a non-negative int or None; got {top_n!r}")
    if tau is not None and (isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau)):
        raise AttributionError(f"tau must be a finite number or None; got {tau!r}")
    limit = top_n if top_n is not None else (None if tau is not None else DEFAULT_TOP_N)
    start = time.time()
    if attribution is None:
        att = edge_attribution(model, base, metric=metric, source=source, intervention=intervention, answers=answers,
                               ig=ig, steps=steps, batch_size=batch_size, memory_budget=memory_budget,
                               per_position=per_position)
    else:
        att = _check_attribution(attribution, model, ig, steps, per_position, intervention)
    ranked = att.ranked()

    def select(edges: list, value: dict) -> list:
        """Edges (ranked best first) whose |value| reaches tau, at most ``limit`` of them."""
        out = [e for e in edges if tau is None or abs(value[e]) >= tau]
        return out if limit is None else out[:limit]

    chosen = select(ranked, att.edge_scores())
    prepared = make_runner(model, base, metric=metric, source=source, intervention=intervention, answers=answers)
    meta: dict[str, Any] = {"attribution_seconds": att.seconds, "attribution_passes": att.passes}
    evaluations, forwards = 0, att.passes
    if verify:
        n_cand = min(len(ranked), 2 * max(1, len(chosen)) if n_verify is None else max(1, int(n_verify)))
        cands = ranked[:n_cand]
        run = edge_patch(model, base, [[e] for e in cands], metric=metric, batch_size=exact_batch_size,
                         prepared=prepared, progress=False)
        exact = (run.values.mean(1) - run.base_values.mean()).tolist()
        evaluations += len(cands)
        forwards += run.forwards
        effect = dict(zip(cands, exact))
        kept = select(sorted(cands, key=lambda e: abs(effect[e]), reverse=True), effect)
        meta["exact"] = {e.label: v for e, v in effect.items()}
    else:
        kept = chosen
    kept_set = set(kept)
    kept = [e for e in att.edge_scores() if e in kept_set]  # canonical order
    final = float(circuit_metric(model, base, [kept], metric=metric, prepared=prepared)[0])
    evaluations += 1
    forwards += 1
    return DiscoveryResult(
        method=att.method, edges=tuple(kept), scores=att.edge_scores(), layout=att.layout, metric=att.metric,
        ablation=describe(intervention), params={"top_n": limit, "tau": tau, "steps": att.steps, "verify": verify,
                                   **({"n_pos": att.n_pos} if per_position else {})}, forwards=forwards,
        # the attribution's own time counts where it was computed elsewhere (prompt chunks on workers)
        evaluations=evaluations, seconds=time.time() - start + (att.seconds if attribution is not None else 0.0),
        final_metric=final,
        full_metric=float(att.base_values.mean()), spec=model.spec, model=model.name, meta=meta,
    )


def _check_attribution(att: object, model: HookedModel, ig: Optional[str], steps: int, per_position: bool,
                       intervention: Intervention) -> EdgeAttribution:
    """Refuse scores that are not the attribution these arguments would compute (other method, model, positions)."""
    if not isinstance(att, EdgeAttribution):
        raise AttributionError(f"attribution must be an EdgeAttribution (edge_attribution, or PreparedAttribution's "
                               f"result); got {type(att).__name__}")
    method = "eap" if ig is None else f"eap-ig-{ig}"
    wrong = [f"{what} {got!r} (these arguments: {want!r})" for what, got, want in (
        ("method", att.method, method), ("steps", att.steps, 1 if ig is None else steps),
        ("model", att.layout.spec, model.spec), ("per-position", att.n_pos is not None, per_position),
        ("ablation", att.ablation, describe(intervention))) if got != want]
    if wrong:
        raise AttributionError(f"the attribution given was computed otherwise: {'; '.join(wrong)}")
    return att


def eap(
    model: HookedModel,
    base: Union[Int[Tensor, "batch pos"], Sequence[str]],
    *,
    metric: Union[Metric, str, Callable],
    source: Union[Int[Tensor, "batch pos"], Sequence[str], None] = None,
    intervention: Intervention = Replace(),
    answers: Optional[Int[Tensor, "batch answer"]] = None,
    top_n: Optional[int] = None,
    tau: Optional[float] = None,
    verify: bool = False,
    n_verify: Optional[int] = None,
    batch_size: Optional[int] = None,
    memory_budget: Union[int, str, None] = None,
    exact_batch_size: int = 32,
    per_position: bool = False,
    attribution: Optional[EdgeAttribution] = None,
) -> DiscoveryResult:
    """Circuit discovery by EAP: rank every edge by |score|, keep the best, optionally verified exactly.

    The discovery signature of :data:`mechpatch.circuit.discovery.DISCOVERY`. ``scores`` of the result are
    the EAP scores (estimated metric change when the edge is ablated); ``final_metric`` is the exact metric of
    the kept circuit with every other edge ablated.

    Args:
        model, base, metric, source, intervention, answers: as :func:`~mechpatch.circuit.edges.edge_patch` (what a
            removed edge carries; the attribution estimates that ablation).
        top_n: keep at most this many edges (default 100 when ``tau`` is not given either).
        tau: keep the edges whose |score| reaches this (metric units, like ACDC's threshold).
        verify: ablate the ``n_verify`` best-ranked edges (default twice the selection) one at a time with the
            exact engine and select by their exact effects instead (``meta["exact"]`` holds them).
        per_position: rank and keep edges per token position (``L0H2@3->L1H0.k@3``); the circuit is
            position-resolved, and so is its exact check.
        batch_size, memory_budget: of the attribution pass (see :func:`edge_attribution`);
            ``exact_batch_size``: edge sets per exact forward.
        attribution: the scores, already computed with these arguments (e.g. by prompt shards on several workers:
            :class:`~mechpatch.attribution.edges.PreparedAttribution`, as ``mechpatch discover`` does); checked
            against the arguments, and then not computed again.
    """
    return _discover(model, base, metric, source=source, intervention=intervention, answers=answers, ig=None, steps=1,
                     top_n=top_n, tau=tau, verify=verify, n_verify=n_verify, batch_size=batch_size,
                     memory_budget=memory_budget, exact_batch_size=exact_batch_size, per_position=per_position,
                     attribution=attribution)


def eap_ig(
    model: HookedModel,
    base: Union[Int[Tensor, "batch pos"], Sequence[str]],
    *,
    metric: Union[Metric, str, Callable],
    source: Union[Int[Tensor, "batch pos"], Sequence[str], None] = None,
    intervention: Intervention = Replace(),
    answers: Optional[Int[Tensor, "batch answer"]] = None,
    steps: int = ATTRIBUTION["eap-ig"]["steps"],
    ig: str = ATTRIBUTION["eap-ig"]["ig"],
    top_n: Optional[int] = None,
    tau: Optional[float] = None,
    verify: bool = False,
    n_verify: Optional[int] = None,
    batch_size: Optional[int] = None,
    memory_budget: Union[int, str, None] = None,
    exact_batch_size: int = 32,
    per_position: bool = False,
    attribution: Optional[EdgeAttribution] = None,
) -> DiscoveryResult:
    """Circuit discovery by EAP-IG (``ig="inputs"`` or ``"activations"``, ``steps`` path points); see :func:`eap`."""
    if ig not in IG_MODES:
        raise AttributionError(f"unknown ig mode {ig!r}; valid: {choices(IG_MODES)}")
    return _discover(model, base, metric, source=source, intervention=intervention, answers=answers, ig=ig, steps=steps,
                     top_n=top_n, tau=tau, verify=verify, n_verify=n_verify, batch_size=batch_size,
                     memory_budget=memory_budget, exact_batch_size=exact_batch_size, per_position=per_position,
                     attribution=attribution)


__all__ = ["ATTRIBUTION", "DEFAULT_TOP_N", "eap", "eap_ig"]
