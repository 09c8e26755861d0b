"""Scored component graphs and circuits: selection (threshold, top-k, edge count), pruning, ROC AUC, JSON.

A :class:`ComponentGraph` holds, for one model shape, a score per edge from any method (NaN: not
scored), optional node scores, ``meta`` saying where the scores came from (method, metric, ablation,
data), and a circuit: a set of edges. Nodes, edges, labels and the dense layout are
:mod:`mechpatch.circuit.components`; other file formats (networkx, Graphviz, MIB) are
:mod:`mechpatch.circuit.formats` (which does not import this module); the figure is
:func:`mechpatch.circuit.plot.graph_figure`, shown in notebooks through :mod:`mechpatch.display`.

>>> spec = ModelSpec(n_layers=2, n_heads=2, d_model=8, d_head=4, d_vocab=10, n_ctx=8)
>>> g = ComponentGraph(spec, {"L0H1->L1H0.k": 2.0, "L1H0->logits": 1.5, "input->L0H1.q": 0.5, "L0.mlp->logits": 0.1},
...                    meta={"method": "by hand"})
>>> sorted(e.label for e in g.threshold(0.4).in_circuit)
['L0H1->L1H0.k', 'L1H0->logits', 'input->L0H1.q']
>>> [n.label for n in g.threshold(0.4).nodes_in_circuit]
['input', 'L0H1', 'L1H0', 'logits']
"""

import copy
import dataclasses
import html
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechpatch.circuit.components import (
    CircuitError,
    Edge,
    EdgeLike,
    Node,
    as_node,
    graph_layout,
)
from mechpatch.errors import choices
from mechpatch.sites import ModelSpec

Real = Union[int, float]


# ----------------------------------------------------------------------------- scored graphs and circuits


def _jsonable(meta: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a mapping, not {type(meta).__name__}")
    try:
        return json.loads(json.dumps(dict(meta)))
    except (TypeError, ValueError) as err:
        raise CircuitError(f"meta must hold JSON values only (str, number, bool, None, lists, dicts): {err}") from err


def _num(x: float) -> Union[float, str, None]:
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def _unnum(x: Union[float, int, str, None]) -> float:
    if x is None:
        return math.nan
    if isinstance(x, str):
        if x not in ("Infinity", "-Infinity"):
            raise CircuitError(
                f"bad score {x!r} in a graph file; scores are numbers, null (not scored), 'Infinity' or '-Infinity'"
            )
        return math.inf if x == "Infinity" else -math.inf
    return float(x)


class ComponentGraph:
    """Scores on the edges (and nodes) of a model's component graph, and a circuit: a set of its edges.

    A graph holds, for one model shape, a float64 score per edge (NaN: not scored), optional node scores,
    the circuit (``in_circuit``; all edges by default, i.e. the full model), and ``meta``: where the
    scores came from (method, metric, ablation, data, ...). Selections (:meth:`threshold`,
    :meth:`top_k`, :meth:`edge_count`) and :meth:`prune` return new graphs; a graph is not changed
    after it is made.

    Args:
        spec: the model's shape (``model.spec``).
        scores: per-edge scores: a mapping edge -> score (an :class:`Edge`, a label ``"s->r"`` or a pair of
            labels ``("s", "r")``, as :class:`~mechpatch.circuit.discovery.DiscoveryResult` keys them), or a
            dense tensor of :attr:`GraphLayout.shape` (cells that are not edges must be NaN or 0). Unlisted
            edges are NaN.
        in_circuit: the circuit: edges (as above, or neutral dicts ``{"sender", "receiver"}``), or a bool
            mask; default every edge.
        node_scores: node -> score (senders: ``input``, heads, MLPs).
        meta: JSON-able facts about the scores: ``method``, ``metric``, ``ablation``, ``data``, anything.
        model: the model's name.
        n_pos: resolve the graph over this many token positions (labels ``@p``).
        causal: for position-resolved graphs, whether a head reads keys/values only from earlier positions.

    >>> spec = ModelSpec(n_layers=2, n_heads=2, d_model=8, d_head=4, d_vocab=10, n_ctx=8)
    >>> scores = {"L0H0->L1H1.v": -3.0, "L1H1->logits": 2.0, "L0.mlp->L1.mlp": 1.0, "input->L0H0.q": 0.5}
    >>> g = ComponentGraph(spec, scores, model="tiny")
    >>> g
    ComponentGraph(model='tiny', layers=2, heads=2, edges=46, scored=4, circuit=46 edges / 8 nodes)
    >>> [e.label for e in g.top_k(2).in_circuit_edges()]
    ['L0H0->L1H1.v', 'L1H1->logits']
    >>> g.top_k(4).prune().edge_scores(circuit_only=True)  # L0.mlp is not reached, L1.mlp reaches no logits
    {'input->L0H0.q': 0.5, 'L0H0->L1H1.v': -3.0, 'L1H1->logits': 2.0}
    """

    def __init__(
        self,
        spec: ModelSpec,
        scores: Union[Mapping[Any, Real], Tensor, None] = None,
        *,
        in_circuit: Union[Iterable[EdgeLike], Tensor, None] = None,
        node_scores: Optional[Mapping[Any, Real]] = None,
        meta: Optional[Mapping[str, Any]] = None,
        model: str = "",
        n_pos: Optional[int] = None,
        causal: bool = True,
    ) -> None:
        self.spec, self.model, self.n_pos, self.causal = spec, model, n_pos, bool(causal)
        self.layout = lay = graph_layout(spec, n_pos)
        self.meta = _jsonable(meta)
        valid = self._valid()
        if scores is None:
            dense = torch.full(lay.shape, math.nan, dtype=torch.float64)
        elif isinstance(scores, Tensor):
            if tuple(scores.shape) != lay.shape:
                raise CircuitError(f"dense scores of this graph are {list(lay.shape)} (see GraphLayout); got "
                                   f"{list(scores.shape)}")
            dense = scores.detach().to("cpu", torch.float64).clone()
            stray = ~valid & ~dense.isnan() & (dense != 0)
            if stray.any():
                bad = torch.nonzero(stray)[0].tolist()
                raise CircuitError(f"the scores have a value at {lay.sender_labels[bad[-2]]} -> "
                                   f"{lay.receiver_labels[bad[-1]]}, which is not an edge; is the layout the same?")
            dense[~valid] = math.nan
        elif isinstance(scores, Mapping):
            dense = torch.full(lay.shape, math.nan, dtype=torch.float64)
            flat = [lay.flat(lay.label_index(e) if isinstance(e, str) else lay.index(e)) for e in scores]
            if len(set(flat)) < len(flat):
                seen: dict[int, object] = {}
                for f, e in zip(flat, scores):
                    if f in seen:
                        raise CircuitError(f"the scores name one edge twice: {seen[f]!r} and {e!r}")
                    seen[f] = e
            dense.view(-1)[torch.tensor(flat, dtype=torch.long)] = torch.tensor(
                [float(v) for v in scores.values()], dtype=torch.float64)
        else:
            raise TypeError(f"scores must be a mapping edge -> score or a tensor, not {type(scores).__name__}")
        self._scores = dense
        if in_circuit is None:
            self._circuit = valid.clone()
        elif isinstance(in_circuit, Tensor):
            if tuple(in_circuit.shape) != lay.shape:
                raise CircuitError(f"a circuit mask of this graph is {list(lay.shape)}; got {list(in_circuit.shape)}")
            self._circuit = in_circuit.detach().to("cpu", torch.bool).clone()
            if (self._circuit & ~valid).any():
                lay.edges_of(self._circuit)  # raises, naming the first pair that is not an edge
        else:
            self._circuit = lay.mask(in_circuit)
        self._node_scores: dict[Node, float] = {}
        for node, value in (node_scores or {}).items():
            node = as_node(node)
            lay.sender_index(node)
            self._node_scores[node] = float(value)

    # ------------------------------------------------------------------ basic access

    def _valid(self) -> Tensor:
        v = self.layout.valid
        return v if self.n_pos is None else v.expand(self.n_pos, *v.shape)

    def _derive(self, circuit: Tensor) -> "ComponentGraph":
        new = object.__new__(ComponentGraph)
        new.__dict__.update(self.__dict__)
        new._circuit, new.meta, new._node_scores = circuit, copy.deepcopy(self.meta), dict(self._node_scores)
        return new

    @property
    def edges(self) -> tuple[Edge, ...]:
        """Every edge of the graph, in canonical order."""
        return self.layout.edges

    @property
    def scores(self) -> Float[Tensor, "*pos sender receiver"]:
        """Dense float64 scores (a copy), NaN where not scored and where no edge is."""
        return self._scores.clone()

    @property
    def circuit_mask(self) -> Bool[Tensor, "*pos sender receiver"]:
        """Dense bool mask of the circuit (a copy)."""
        return self._circuit.clone()

    @property
    def node_scores(self) -> dict[Node, float]:
        return dict(self._node_scores)

    @property
    def in_circuit(self) -> frozenset[Edge]:
        """The circuit's edges."""
        return frozenset(self.in_circuit_edges())

    def in_circuit_edges(self) -> list[Edge]:
        """The circuit's edges in canonical order."""
        return self.layout.edges_of(self._circuit)

    @property
    def n_edges(self) -> int:
        return self.layout.n_edges

    @property
    def n_scored(self) -> int:
        return int((~self._scores.isnan()).sum())

    @property
    def n_in_circuit(self) -> int:
        return int(self._circuit.sum())

    def score(self, edge: EdgeLike) -> float:
        """One edge's score (NaN: not scored)."""
        return float(self._scores[self.layout.index(edge)])

    def _edge_values(self) -> Tensor:
        return self._scores.reshape(-1)[self.layout.flat_indices()]

    def _edge_circuit(self) -> Tensor:
        return self._circuit.reshape(-1)[self.layout.flat_indices()]

    def edge_scores(self, circuit_only: bool = False, scored_only: bool = True) -> dict[str, float]:
        """Edge label -> score, in canonical order (of the circuit only; of scored edges only)."""
        vals, keep = self._edge_values(), torch.ones(self.n_edges, dtype=torch.bool)
        if circuit_only:
            keep &= self._edge_circuit()
        if scored_only:
            keep &= ~vals.isnan()
        labels = self.layout.edge_labels()
        return {labels[i]: float(vals[i]) for i in torch.nonzero(keep).flatten().tolist()}

    def with_circuit(self, edges: Union[Iterable[EdgeLike], Tensor]) -> "ComponentGraph":
        """The same scores with another circuit (edges or a mask)."""
        if isinstance(edges, Tensor):
            return ComponentGraph(self.spec, self._scores, in_circuit=edges, node_scores=self._node_scores,
                                  meta=self.meta, model=self.model, n_pos=self.n_pos, causal=self.causal)
        return self._derive(self.layout.mask(edges))

    def with_meta(self, **meta: Any) -> "ComponentGraph":
        """The same graph with ``meta`` updated."""
        new = self._derive(self._circuit)
        new.meta = _jsonable({**self.meta, **meta})
        return new

    # ------------------------------------------------------------------ selecting circuits

    def _ranked(self, absolute: bool) -> Tensor:
        vals = self._edge_values()
        return vals.abs() if absolute else vals

    def _from_edge_keep(self, keep: Tensor) -> "ComponentGraph":
        circuit = torch.zeros(self.layout.shape, dtype=torch.bool)
        circuit.view(-1)[self.layout.flat_indices()[keep]] = True
        return self._derive(circuit)

    def threshold(self, tau: Real, absolute: bool = True) -> "ComponentGraph":
        """The circuit of edges whose score (``|score|`` if ``absolute``) is ``>= tau``; unscored edges are out."""
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or math.isnan(tau):
            raise CircuitError(f"tau must be a number, not {tau!r}")
        vals = self._ranked(absolute)
        return self._from_edge_keep(~vals.isnan() & (vals >= tau))

    def top_k(self, k: int, absolute: bool = True) -> "ComponentGraph":
        """The circuit of the ``k`` highest-scoring edges (``|score|`` if ``absolute``); ties go to the earlier edge."""
        vals = self._ranked(absolute)
        n_scored = int((~vals.isnan()).sum())
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n_scored:
            raise CircuitError(f"k must be an int in 0..{n_scored} (the scored edges); got {k!r}")
        order = torch.sort(torch.nan_to_num(vals, nan=-math.inf), descending=True, stable=True).indices
        keep = torch.zeros(self.n_edges, dtype=torch.bool)
        keep[order[:k]] = True
        return self._from_edge_keep(keep)

    def edge_count(self, n: int, absolute: bool = True, prune: bool = True) -> "ComponentGraph":
        """A circuit of at most ``n`` edges made of the highest-scoring ones.

        With ``prune`` (the default) the result is pruned and has no dangling edges: it is the pruned
        :meth:`top_k` ``m`` for the largest ``m`` whose pruned circuit has at most ``n`` edges (pruning never
        adds edges, and a longer prefix never prunes to fewer), so it may have fewer than ``n`` when the next
        edge would complete several paths at once. Without ``prune``, this is ``top_k(n)``.
        """
        n_scored = int((~self._edge_values().isnan()).sum())
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= n_scored:
            raise CircuitError(f"n must be an int in 0..{n_scored} (the scored edges); got {n!r}")
        if not prune:
            return self.top_k(n, absolute)
        lo, hi = n, n_scored  # top_k(lo).prune() has <= n edges; find the largest such m by bisection
        best = self.top_k(lo, absolute).prune()
        while lo < hi:
            mid = (lo + hi + 1) // 2
            cand = self.top_k(mid, absolute).prune()
            if cand.n_in_circuit <= n:
                lo, best = mid, cand
            else:
                hi = mid - 1
        return best

    # ------------------------------------------------------------------ pruning and nodes

    def _flows(self, c: Bool[Tensor, "pos sender receiver"]) -> tuple[Tensor, Tensor]:
        """Through circuit ``c`` (with a position axis, length 1 if not position-resolved): which senders the
        input reaches [pos, sender], and which receiver inputs have a path to the logits [pos, receiver]."""
        lay = self.layout
        P, S, R = c.shape
        same, kv, cf = lay.feeds_same.float(), lay.feeds_kv.float(), c.float()

        def spread(x: Tensor, backward: bool) -> Tensor:
            """k/v read at position p reach the head at positions >= p (every position if not causal)."""
            if P == 1:
                return x
            if not self.causal:
                return x.any(0, keepdim=True).expand_as(x)
            if backward:
                return x.flip(0).cummax(0).values.flip(0)
            return x.cummax(0).values

        reach = torch.zeros(P, S, dtype=torch.bool)
        reach[:, 0] = True
        while True:  # grows monotonically; at most one step per stage
            ports = torch.einsum("ps,psr->pr", reach.float(), cf) > 0
            new = (ports.float() @ same > 0) | spread(ports.float() @ kv > 0, backward=False)
            new[:, 0] = True
            if torch.equal(new, reach):
                break
            reach = new
        alive_ports = torch.zeros(P, R, dtype=torch.bool)
        alive_ports[:, lay.logits_index] = True
        while True:
            alive = torch.einsum("psr,pr->ps", cf, alive_ports.float()) > 0
            new = (alive.float() @ same.T > 0) | spread(alive.float() @ kv.T > 0, backward=True)
            new[:, lay.logits_index] = True
            if torch.equal(new, alive_ports):
                break
            alive_ports = new
        return reach, alive_ports

    def prune(self) -> "ComponentGraph":
        """Drop dangling edges: those whose sender the input does not reach, or whose receiver has no path to
        the logits, through the circuit; repeated until nothing changes.

        A head counts as reached when any of its q/k/v inputs is; a key/value input of a GQA group leads on
        through any head of the group.
        """
        c = self._circuit if self.n_pos is not None else self._circuit[None]
        while True:
            reach, alive = self._flows(c)
            new = c & reach[:, :, None] & alive[:, None, :]
            if torch.equal(new, c):
                break
            c = new
        return self._derive(c if self.n_pos is not None else c[0])

    @property
    def nodes_in_circuit(self) -> tuple[Node, ...]:
        """Nodes the circuit touches, in forward order: senders of its edges, and the heads, MLPs and logits its
        edges enter (an edge into a GQA group's k/v counts for the group's heads only through their own edges)."""
        lay = self.layout
        c = self._circuit if self.n_pos is not None else self._circuit[None]
        senders = c.any(2)  # P S
        ports = c.any(1)  # P R
        entered = (ports.float() @ (lay.feeds_same | (lay.feeds_kv & lay.head_port[:, None])).float() > 0) | senders
        out = []
        for p in range(c.shape[0]):
            pos = None if self.n_pos is None else p
            out += [(n.stage, p, n.at(pos)) for n, on in zip(lay.senders, entered[p].tolist()) if on]
            if bool(ports[p, lay.logits_index]):
                out.append((Node("logits").stage, p, Node("logits", pos=pos)))
        return tuple(n for _, _, n in sorted(out, key=lambda t: (t[0], t[1], t[2].unit or 0)))

    # ------------------------------------------------------------------ evaluation against a ground truth

    def roc_auc(self, ground_truth: Iterable[EdgeLike], absolute: bool = True) -> float:
        """Edge-level ROC AUC of the scores (``|score|`` if ``absolute``) against a ground-truth edge set.

        Every edge of the graph takes part: ground-truth edges are positives, all others negatives.
        Unscored (NaN) edges rank below every scored edge, tied with each other; ties count one half
        (the Mann-Whitney statistic), so a constant score gives 0.5.

        >>> spec = ModelSpec(n_layers=1, n_heads=1, d_model=4, d_head=4, d_vocab=5, n_ctx=4, attn_only=True)
        >>> g = ComponentGraph(spec, {"input->L0H0.q": 3.0, "input->L0H0.k": 2.0, "input->L0H0.v": 1.0,
        ...                           "input->logits": 0.5, "L0H0->logits": 0.0})
        >>> g.roc_auc(["input->L0H0.q", "input->L0H0.k"]), g.roc_auc(["L0H0->logits"])
        (1.0, 0.0)
        """
        truth = self.layout.mask(ground_truth).reshape(-1)[self.layout.flat_indices()]
        n_pos, n_neg = int(truth.sum()), int((~truth).sum())
        if n_pos == 0 or n_neg == 0:
            raise CircuitError(
                f"ROC AUC needs positive and negative edges; the ground truth has {n_pos} of the graph's "
                f"{self.n_edges} edges"
            )
        vals = torch.nan_to_num(self._ranked(absolute), nan=-math.inf)
        _, inverse, counts = torch.unique(vals, sorted=True, return_inverse=True, return_counts=True)
        ends = torch.cumsum(counts, 0).double()
        avg_rank = ends - (counts.double() - 1) / 2  # 1-based average rank of each distinct value
        rank_sum = float(avg_rank[inverse][truth].sum())
        return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        """The graph as JSON-able data (see :meth:`to_json`)."""
        vals, inc = self._edge_values(), self._edge_circuit()
        labels, values, member = self.layout.edge_labels(), vals.tolist(), inc.tolist()
        rows = [
            {"edge": labels[i], "score": _num(values[i]), "in_circuit": member[i]}
            for i in torch.nonzero(~vals.isnan() | inc).flatten().tolist()
        ]
        return {
            "format": "mechpatch.ComponentGraph",
            "version": 1,
            "model": self.model,
            "spec": dataclasses.asdict(self.spec),
            "n_pos": self.n_pos,
            "causal": self.causal,
            "meta": self.meta,
            "node_scores": {n.label: _num(v) for n, v in self._node_scores.items()},
            "edges": rows,
        }

    def to_json(self, path: Union[str, os.PathLike, None] = None) -> str:
        """The graph as JSON text (written atomically to ``path`` if given); :meth:`from_json` reads it back exactly.

        Scores are float64 written by ``repr`` (exact); ``null`` means not scored, infinities are the strings
        ``"Infinity"``/``"-Infinity"``. Edges that are neither scored nor in the circuit are left out.
        """
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            from mechpatch.report import write_text

            write_text(os.fspath(path), text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ComponentGraph":
        """A graph from :meth:`to_dict`'s data."""
        if not isinstance(data, Mapping) or data.get("format") != "mechpatch.ComponentGraph":
            raise CircuitError("not a mechpatch ComponentGraph file (its 'format' is not 'mechpatch.ComponentGraph'); "
                               "for MIB circuit files use ComponentGraph.from_mib")
        if data.get("version") != 1:
            raise CircuitError(f"unsupported ComponentGraph file version {data.get('version')!r}; valid: 1")
        missing = [k for k in ("spec", "edges") if k not in data]
        if missing:
            raise CircuitError(f"the graph file has no {choices(missing)}; it has {choices(sorted(data))}")
        try:
            spec = ModelSpec(**data["spec"])
        except TypeError as err:
            raise CircuitError(f"bad model spec in the graph file: {err}") from err
        lay = graph_layout(spec, data.get("n_pos"))
        dense = torch.full(lay.shape, math.nan, dtype=torch.float64)
        circuit = torch.zeros(lay.shape, dtype=torch.bool)
        rows = data["edges"]
        flat = torch.tensor([lay.flat(lay.label_index(row["edge"])) for row in rows], dtype=torch.long)
        dense.view(-1)[flat] = torch.tensor([_unnum(row["score"]) for row in rows], dtype=torch.float64)
        circuit.view(-1)[flat] = torch.tensor([bool(row["in_circuit"]) for row in rows], dtype=torch.bool)
        return cls(spec, dense, in_circuit=circuit,
                   node_scores={k: _unnum(v) for k, v in data.get("node_scores", {}).items()},
                   meta=data.get("meta"), model=data.get("model", ""), n_pos=data.get("n_pos"),
                   causal=data.get("causal", True))

    @classmethod
    def from_json(cls, source: Union[str, os.PathLike]) -> "ComponentGraph":
        """Read a graph from :meth:`to_json`'s text, or from a file holding it."""
        text = os.fspath(source)
        if not text.lstrip().startswith("{"):
            if not os.path.exists(text):
                raise CircuitError(f"{text!r} is neither JSON text nor an existing file")
            with open(text, encoding="utf-8") as fh:
                text = fh.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CircuitError(f"the graph file is not valid JSON: {err}") from err
        return cls.from_dict(data)

    # ------------------------------------------------------------------ other formats (mechpatch.circuit.formats)

    def to_networkx(self, circuit_only: bool = True) -> Any:
        """A ``networkx.MultiDiGraph`` (see :func:`mechpatch.circuit.formats.to_networkx`)."""
        from mechpatch.circuit.formats import to_networkx

        return to_networkx(self, circuit_only)

    def to_dot(self, circuit_only: bool = True) -> str:
        """Graphviz DOT text (see :func:`mechpatch.circuit.formats.to_dot`)."""
        from mechpatch.circuit.formats import to_dot

        return to_dot(self, circuit_only)

    def to_mib(self, path: Union[str, os.PathLike, None] = None, nan_score: Optional[float] = None) -> dict[str, Any]:
        """MIB's circuit-submission JSON data (see :func:`mechpatch.circuit.formats.to_mib`)."""
        from mechpatch.circuit.formats import to_mib

        return to_mib(self, path, nan_score=nan_score)

    @classmethod
    def from_mib(cls, source: Union[Mapping[str, Any], str, os.PathLike], spec: ModelSpec, model: str = "",
                 meta: Optional[Mapping[str, Any]] = None) -> "ComponentGraph":
        """A graph from MIB's circuit JSON (data or a file), for a model of shape ``spec`` (read by
        :func:`mechpatch.circuit.formats.read_mib`); ``meta`` defaults to ``{"format": "MIB"}``."""
        from mechpatch.circuit.formats import read_mib

        mib = read_mib(source, spec)
        return cls(spec, mib.scores, in_circuit=mib.in_circuit, node_scores=mib.node_scores,
                   meta={"format": "MIB"} if meta is None else meta, model=model)

    # ------------------------------------------------------------------ comparison and display

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ComponentGraph):
            return NotImplemented
        same_nan = torch.equal(self._scores.isnan(), other._scores.isnan())
        return (
            self.spec == other.spec and self.model == other.model and self.n_pos == other.n_pos
            and self.causal == other.causal and self.meta == other.meta
            and same_nan and torch.equal(self._scores.nan_to_num(0.0), other._scores.nan_to_num(0.0))
            and torch.equal(self._circuit, other._circuit)
            and self._node_scores.keys() == other._node_scores.keys()
            and all(_same(v, other._node_scores[k]) for k, v in self._node_scores.items())
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        s = self.spec
        name = self.model or s.architecture
        kv = f"/kv={s.n_kv_heads}" if s.is_gqa else ""
        pos = f", positions={self.n_pos}" if self.n_pos is not None else ""
        about = "".join(f", {k}={self.meta[k]!r}" for k in ("method", "metric", "ablation") if k in self.meta)
        return (
            f"ComponentGraph(model={name!r}, layers={s.n_layers}, heads={s.n_heads}{kv}{pos}, edges={self.n_edges}, "
            f"scored={self.n_scored}, circuit={self.n_in_circuit} edges / {len(self.nodes_in_circuit)} nodes{about})"
        )

    def _html_table(self, rows: int = 15) -> str:
        """The repr, ``meta``, and the ``rows`` strongest circuit edges, as HTML (the notebook display, with the
        figure, is :mod:`mechpatch.display`'s)."""
        vals, inc = self._edge_values(), self._edge_circuit()
        labels = self.layout.edge_labels()
        key = torch.where(inc, torch.nan_to_num(vals.abs(), nan=-1.0), torch.full_like(vals, -2.0))
        order = torch.sort(key, descending=True, stable=True).indices[: min(rows, self.n_in_circuit)].tolist()
        body = "".join(f"<tr><td>{html.escape(labels[i])}</td><td>{float(vals[i]):.6g}</td></tr>" for i in order)
        more = self.n_in_circuit - len(order)
        meta = "".join(f"<tr><th align='left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.meta.items())
        return (
            f"<p>{html.escape(repr(self))}</p>{f'<table>{meta}</table>' if meta else ''}"
            f"<table><tr><th>circuit edge (by |score|)</th><th>score</th></tr>{body}</table>"
            + (f"<p>... and {more} more circuit edges</p>" if more > 0 else "")
        )


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


__all__ = ["ComponentGraph"]
