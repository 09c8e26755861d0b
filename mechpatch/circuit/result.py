"""What a circuit discovery returns (:class:`DiscoveryResult`): every algorithm of
:data:`mechpatch.circuit.DISCOVERY` (ACDC in :mod:`mechpatch.circuit.discovery`, EAP and EAP-IG in :mod:`mechpatch.circuit.eap`) gives one.

Its notebook display (the table below, then the circuit figure) is :mod:`mechpatch.display`'s.
"""

import math
from dataclasses import dataclass, field
from typing import Any

from mechpatch.circuit.components import Edge, GraphLayout


@dataclass(frozen=True)
class DiscoveryResult:
    """Edges kept, a score per edge (the damage its removal caused when it was considered; NaN where it
    was never evaluated), and what the search cost."""

    method: str
    edges: tuple[Edge, ...]
    scores: dict[Edge, float]
    layout: GraphLayout
    metric: str
    ablation: str
    params: dict[str, Any]
    forwards: int  # batched forward passes
    evaluations: int  # edge-set evaluations (rows)
    seconds: float
    final_metric: float  # mean metric of the discovered circuit (every other edge ablated)
    full_metric: float  # mean metric of the full model
    spec: Any = None  # the model's ModelSpec
    model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"DiscoveryResult({self.method}: {len(self.edges)} of {len(self.scores)} edges kept, "
                f"{self.metric} {self.full_metric:.4g} -> {self.final_metric:.4g}, {self.forwards} forwards, "
                f"{self.evaluations} evaluations, {self.seconds:.1f} s)")

    def to_graph(self) -> Any:
        """The result as a :class:`~mechpatch.circuit.graph.ComponentGraph` (scores on every evaluated edge)."""
        from mechpatch.circuit.graph import ComponentGraph

        meta = {"method": self.method, "metric": self.metric, "ablation": self.ablation, **self.params,
                "forwards": self.forwards, "full_metric": self.full_metric, "circuit_metric": self.final_metric,
                **self.meta}
        return ComponentGraph(self.spec, dict(self.scores), in_circuit=self.edges, meta=meta, model=self.model,
                              n_pos=self.params.get("n_pos"))

    def _html_table(self, rows: int = 15) -> str:
        """What the search found and cost, then the ``rows`` kept edges with the largest ``|score|``, as HTML."""
        import html

        from mechpatch.report import html_table

        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        about = [("method", self.method + (f" ({params})" if params else "")),
                 ("edges kept", f"{len(self.edges)} of {self.layout.n_edges}"),
                 (f"{self.metric} (ablation: {self.ablation})",
                  f"full {self.full_metric:.4g} -> circuit {self.final_metric:.4g}"),
                 ("forwards", self.forwards), ("evaluations", self.evaluations), ("seconds", f"{self.seconds:.1f}")]
        head = "".join(f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in about)
        score = {e: self.scores.get(e, math.nan) for e in self.edges}
        order = sorted(self.edges, key=lambda e: -abs(score[e]) if math.isfinite(score[e]) else math.inf)
        shown = order[:rows]
        edges = html_table(["circuit edge (by |score|)", "score"],
                           [(e.label, f"{score[e]:.6g}") for e in shown])
        more = len(self.edges) - len(shown)
        return (f"<p>{html.escape(repr(self))}</p><table>{head}</table>{edges}"
                + (f"<p>... and {more} more circuit edges</p>" if more > 0 else ""))


__all__ = ["DiscoveryResult"]
