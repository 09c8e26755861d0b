"""Nodes and edges of a transformer's component graph, their labels, and the dense layout of edge masks.

Nodes are the components that edge-level circuit discovery (ACDC, EAP, MIB) connects:

==================  ============================================================================
``input``           the embeddings (token and positional): the first sender
``L{l}H{h}``        attention head ``h`` of layer ``l``; it sends its output (z @ W_O)
``L{l}.mlp``        the MLP of layer ``l`` (attention-only models have none)
``logits``          the unembedding; it reads the final residual stream
==================  ============================================================================

An edge is a sender's output reaching one input of a receiver through the residual stream. A head
reads three inputs, so an edge into a head says which: ``L0H2->L1H0.k`` is "previous-token head ->
induction head via keys". An MLP and the logits read one: ``input->L0.mlp``, ``L1.mlp->logits``. In a
model with grouped keys and values (GQA, ``n_kv_heads < n_heads``) one key/value input serves a group of
heads, so k/v edges end at the group, labelled as :class:`mechpatch.sites.Key` labels it:
``L0H2->L1G0.k`` (head ``h`` is in group ``h // (n_heads // n_kv_heads)``, TransformerLens's
``repeat_interleave`` order). These labels are the neutral edge format of :mod:`mechpatch.zoo.tracr`.

Blocks are sequential: a head of layer ``l`` reads the residual stream before layer ``l`` (the input,
every head and MLP of earlier layers), the MLP of layer ``l`` reads it after layer ``l``'s attention
(so the heads of its own layer too), the logits read everything. (:class:`~mechpatch.sites.ModelSpec`
has no parallel-attention flag; GPT-J/Pythia-style parallel blocks are not modelled.)

Position-resolved graphs (``n_pos=P``) copy every node and edge per token position, labelled ``@p``:
``L0H2@3->L1H0.k@3``. Both ends of an edge are at one position (the residual stream is per position);
attention moves information between positions inside a head, so a head at position ``p`` reads keys
and values written at positions ``<= p`` (every position when ``causal=False``).

**Dense layout** (:class:`GraphLayout`; the same order as EAP-IG's and
:func:`mechpatch.circuit.edges.layout`'s, so masks are interchangeable): senders are ``input``, then per
layer its heads ``0..H-1`` and its MLP; receivers are, per layer, the queries of heads ``0..H-1``, the keys
of heads (or groups) ``0..G-1``, the values likewise, the MLP; then ``logits``. With ``M = 1`` if the model
has MLPs, else 0:

- sender index: ``input`` 0; ``L{l}H{h}`` ``1 + l*(H+M) + h``; ``L{l}.mlp`` ``1 + l*(H+M) + H``
- receiver index: with ``b = l*(H+2G+M)``: ``.q`` ``b + h``; ``.k`` ``b + H + g``; ``.v`` ``b + H + G + g``;
  ``L{l}.mlp`` ``b + H + 2G``; ``logits`` ``L*(H+2G+M)``

An edge mask is ``Bool[sender, receiver]`` (``[pos, sender, receiver]`` position-resolved). The edge list
(:func:`all_edges`) runs over receivers in that order, then senders in order (then over positions,
position-major), which is a topological order: every edge into a node comes before any edge out of it.

>>> spec = ModelSpec(n_layers=2, n_heads=2, d_model=8, d_head=4, d_vocab=10, n_ctx=8)
>>> [e.label for e in all_edges(spec)[:4]]
['input->L0H0.q', 'input->L0H1.q', 'input->L0H0.k', 'input->L0H1.k']
"""

import dataclasses
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Optional, Union

import torch
from jaxtyping import Bool
from torch import Tensor

from mechpatch.errors import (
    EmptyInputError,
    MechpatchError,
    SiteOutOfRangeError,
    UnknownSiteKindError,
    UnsupportedSiteError,
    choices,
)
from mechpatch.sites import ModelSpec


class CircuitError(MechpatchError, ValueError):
    """An edge that cannot exist, a selection that cannot be made, or a graph file that does not fit."""


NODE_KINDS = ("input", "head", "group", "mlp", "logits")
INPUTS = ("q", "k", "v")
_LAST = 1 << 30  # stage of the logits: after everything

_NODE_FORMS = "'input', 'logits', 'L<layer>.mlp', 'L<layer>H<head>' (optionally '@<pos>')"
_RECEIVER_FORMS = (
    "'L<layer>H<head>.q' / '.k' / '.v', 'L<layer>G<group>.k' / '.v' (GQA models), 'L<layer>.mlp', 'logits' "
    "(optionally '@<pos>')"
)
_LABEL_RE = re.compile(
    r"^(?:(?P<simple>input|logits)|L(?P<ml>\d+)\.mlp|L(?P<hl>\d+)(?P<ch>[HG])(?P<hu>\d+)(?:\.(?P<inp>[qkv]))?)"
    r"(?:@(?P<pos>\d+))?$"
)


def _index(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__} {value!r}")
    if value < 0:
        raise SiteOutOfRangeError(f"{what} must be >= 0, got {value}")


@dataclass(frozen=True)
class Node:
    """A node of the component graph: ``input``, a head, a key/value group (a receiver only), an MLP, ``logits``.

    ``unit`` is the head (``kind="head"``) or key/value group (``kind="group"``) index; ``pos`` a token
    position in a position-resolved graph. Make nodes from labels with :func:`parse_node`.

    >>> Node("head", 1, 0).label, Node("mlp", 3, pos=2).label, parse_node("L1G0")
    ('L1H0', 'L3.mlp@2', Node(kind='group', layer=1, unit=0, pos=None))
    """

    kind: str
    layer: Optional[int] = None
    unit: Optional[int] = None
    pos: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kind not in NODE_KINDS:
            raise UnknownSiteKindError(f"unknown node kind {self.kind!r}; valid: {choices(NODE_KINDS)}")
        needs = {"layer": self.kind in ("head", "group", "mlp"), "unit": self.kind in ("head", "group")}
        for name, needed in needs.items():
            value = getattr(self, name)
            if needed:
                _index(f"{self.kind} node {name}", value)
            elif value is not None:
                raise CircuitError(f"a {self.kind} node has no {name}; got {name}={value!r}")
        if self.pos is not None:
            _index("pos", self.pos)

    @property
    def base_label(self) -> str:
        """The label without position."""
        if self.kind in ("input", "logits"):
            return self.kind
        if self.kind == "mlp":
            return f"L{self.layer}.mlp"
        return f"L{self.layer}{'H' if self.kind == 'head' else 'G'}{self.unit}"

    @property
    def label(self) -> str:
        return self.base_label + _pos_suffix(self.pos)

    def port_label(self, input: Optional[str] = None) -> str:
        """This node's label as a receiver reading ``input`` (``"L1H0.k@3"``)."""
        return self.base_label + (f".{input}" if input else "") + _pos_suffix(self.pos)

    @property
    def stage(self) -> int:
        """Place in the forward pass: input 0, layer l's attention 2l+1, its MLP 2l+2, logits last."""
        if self.kind == "input":
            return 0
        if self.kind == "logits":
            return _LAST
        return 2 * self.layer + (2 if self.kind == "mlp" else 1)

    def at(self, pos: Optional[int]) -> "Node":
        """The same node at position ``pos`` (None: not position-resolved)."""
        return dataclasses.replace(self, pos=pos)

    def __str__(self) -> str:
        return self.label


def _pos_suffix(pos: Optional[int]) -> str:
    return "" if pos is None else f"@{pos}"


@dataclass(frozen=True)
class Edge:
    """Sender -> one input of a receiver: ``Edge(sender, receiver, input)``, ``input`` q/k/v for heads, else None.

    Checked on construction for what holds in any model (the sender comes before the receiver, heads
    need q/k/v, both ends at one position); against a model's shape by :class:`GraphLayout`.

    >>> e = parse_edge("L0H2->L1H0.k")
    >>> e.sender.label, e.receiver.label, e.input, e.label
    ('L0H2', 'L1H0', 'k', 'L0H2->L1H0.k')
    >>> parse_edge("L1H0->L0.mlp")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mechpatch.circuit.components.CircuitError: L1H0->L0.mlp is not an edge: L1H0 comes after L0.mlp reads ...
    """

    sender: Node
    receiver: Node
    input: Optional[str] = None

    def __post_init__(self) -> None:
        s, r = self.sender, self.receiver
        name = f"{s.label}->{r.port_label(self.input)}"
        if s.kind not in ("input", "head", "mlp"):
            raise CircuitError(f"{name}: a {s.kind} node sends nothing; senders are 'input', heads 'L<layer>H<head>' "
                               "and MLPs 'L<layer>.mlp'")
        if r.kind == "input":
            raise CircuitError(f"{name}: the input receives nothing; receivers are {_RECEIVER_FORMS}")
        if r.kind in ("head", "group"):
            valid = INPUTS if r.kind == "head" else ("k", "v")
            if self.input not in valid:
                raise CircuitError(
                    f"{name}: an edge into {r.label} needs the input it reaches; valid: {choices(valid)}"
                )
        elif self.input is not None:
            raise CircuitError(f"{name}: {r.label} has one input; give input=None, not {self.input!r}")
        if s.stage >= r.stage:
            raise CircuitError(
                f"{name} is not an edge: {s.base_label} comes after {r.base_label} reads the residual stream "
                "(a head of layer l reads before layer l, an MLP after its layer's attention)"
            )
        if s.pos != r.pos:
            raise CircuitError(
                f"{name}: both ends of an edge are at one position (the residual stream is per position; "
                "attention moves information between positions inside a head)"
            )

    @property
    def receiver_label(self) -> str:
        return self.receiver.port_label(self.input)

    @property
    def label(self) -> str:
        return f"{self.sender.label}->{self.receiver_label}"

    @property
    def pos(self) -> Optional[int]:
        return self.sender.pos

    def at(self, pos: Optional[int]) -> "Edge":
        """The same edge at position ``pos`` (None: not position-resolved)."""
        return Edge(self.sender.at(pos), self.receiver.at(pos), self.input)

    def __str__(self) -> str:
        return self.label


NodeLike = Union[Node, str]
EdgeLike = Union[Edge, str, tuple[str, str], Mapping[str, str]]


def _parse(text: str, what: str, forms: str) -> tuple[Node, Optional[str]]:
    if not isinstance(text, str):
        raise TypeError(f"a {what} label must be a string, not {type(text).__name__} {text!r}")
    m = _LABEL_RE.match(text.strip())
    base, at, pos = text.strip().partition("@")
    if m is None and at and _LABEL_RE.match(base) and not pos.isdigit():
        raise UnknownSiteKindError(f"{text!r}: a position is '@' and a non-negative integer (e.g. 'L1H0.k@3')")
    if m is None:
        raise UnknownSiteKindError(f"cannot parse {what} {text!r}; valid forms: {forms}")
    pos = None if m["pos"] is None else int(m["pos"])
    if m["simple"]:
        return Node(m["simple"], pos=pos), None
    if m["ml"] is not None:
        return Node("mlp", int(m["ml"]), pos=pos), None
    kind = "head" if m["ch"] == "H" else "group"
    return Node(kind, int(m["hl"]), int(m["hu"]), pos), m["inp"]


def parse_node(text: str) -> Node:
    """A node from its label (``"input"``, ``"L3H0"``, ``"L3.mlp@2"``, ``"logits"``; ``"L3G1"`` a GQA group).

    >>> parse_node("L3H0@2")
    Node(kind='head', layer=3, unit=0, pos=2)
    """
    node, inp = _parse(text, "node", _NODE_FORMS)
    if inp is not None:
        raise UnknownSiteKindError(
            f"{text!r} is a receiver input, not a node; drop '.{inp}' (use parse_receiver for receiver labels)"
        )
    return node


def parse_receiver(text: str) -> tuple[Node, Optional[str]]:
    """A receiver label as (node, input): ``"L1H0.k"`` -> (head L1H0, ``"k"``), ``"logits"`` -> (logits, None).

    >>> node, inp = parse_receiver("L1G0.v@4")
    >>> node.label, inp
    ('L1G0@4', 'v')
    """
    node, inp = _parse(text, "receiver", _RECEIVER_FORMS)
    if node.kind in ("head", "group") and inp is None:
        raise UnknownSiteKindError(
            f"receiver {text!r} does not say which input of the head it reaches; add '.q', '.k' or '.v'"
        )
    return node, inp


def parse_edge(text: str) -> Edge:
    """An edge from its label ``"<sender>-><receiver>"`` (``"L0H2->L1H0.k"``, ``"input->L0.mlp"``)."""
    if not isinstance(text, str):
        raise TypeError(f"an edge label must be a string, not {type(text).__name__} {text!r}")
    parts = text.split("->")
    if len(parts) != 2:
        raise UnknownSiteKindError(
            f"cannot parse edge {text!r}; write '<sender>-><receiver>', e.g. 'L0H2->L1H0.k', 'input->L0.mlp', "
            "'L1.mlp->logits'"
        )
    return Edge(parse_node(parts[0]), *parse_receiver(parts[1]))


def as_node(node: NodeLike) -> Node:
    """A :class:`Node` from a node or its label."""
    return node if isinstance(node, Node) else parse_node(node)


def as_edge(edge: EdgeLike) -> Edge:
    """An :class:`Edge` from an edge, its label, a pair of labels, or the neutral dict ``{"sender", "receiver"}``.

    >>> as_edge({"sender": "L2.mlp", "receiver": "L3H0.q"}) == as_edge(("L2.mlp", "L3H0.q"))
    True
    >>> as_edge("L2.mlp->L3H0.q").receiver_label
    'L3H0.q'
    """
    if isinstance(edge, Edge):
        return edge
    if isinstance(edge, str):
        return parse_edge(edge)
    if isinstance(edge, Mapping):
        if "sender" not in edge or "receiver" not in edge:
            raise CircuitError(f"an edge dict needs 'sender' and 'receiver' keys; got {sorted(edge)}")
        return Edge(parse_node(edge["sender"]), *parse_receiver(edge["receiver"]))
    if isinstance(edge, tuple) and len(edge) == 2 and all(isinstance(x, str) for x in edge):
        return Edge(parse_node(edge[0]), *parse_receiver(edge[1]))
    raise TypeError(
        "an edge must be an Edge, a label 's->r', a pair (sender label, receiver label) or a dict with "
        f"sender/receiver; got {type(edge).__name__} {edge!r}"
    )


# ----------------------------------------------------------------------------- the dense layout


class GraphLayout:
    """Every sender, receiver and edge of one model shape, and their dense indices (see the module docstring).

    Use :func:`graph_layout` (cached). ``valid[s, r]`` says whether sender s reaches receiver r.

    >>> lay = graph_layout(ModelSpec(n_layers=2, n_heads=4, n_kv_heads=2, d_model=8, d_head=2, d_vocab=10, n_ctx=8))
    >>> lay.shape, lay.receiver_labels[4:8], lay.sender_index("L1H0"), lay.receiver_index("L1G1.v")
    ((11, 19), ('L0G0.k', 'L0G1.k', 'L0G0.v', 'L0G1.v'), 6, 16)
    """

    def __init__(self, spec: ModelSpec, n_pos: Optional[int] = None) -> None:
        if n_pos is not None:
            _index("n_pos", n_pos)
            if n_pos == 0:
                raise EmptyInputError("n_pos=0: a position-resolved graph needs at least one position")
        self.spec, self.n_pos = spec, n_pos
        L, H, G = spec.n_layers, spec.n_heads, spec.n_kv_heads
        if H % G:
            raise CircuitError(f"n_heads={H} is not a multiple of n_kv_heads={G}")
        kv_kind = "group" if spec.is_gqa else "head"
        senders, receivers = [Node("input")], []
        for layer in range(L):
            senders += [Node("head", layer, h) for h in range(H)]
            receivers += [(Node("head", layer, h), "q") for h in range(H)]
            for inp in ("k", "v"):
                receivers += [(Node(kv_kind, layer, g), inp) for g in range(G)]
            if spec.has_mlp:
                senders.append(Node("mlp", layer))
                receivers.append((Node("mlp", layer), None))
        receivers.append((Node("logits"), None))
        self.senders: tuple[Node, ...] = tuple(senders)
        self.receivers: tuple[tuple[Node, Optional[str]], ...] = tuple(receivers)
        self.sender_labels = tuple(n.label for n in senders)
        self.receiver_labels = tuple(n.port_label(i) for n, i in receivers)
        self._s_of = {n: i for i, n in enumerate(senders)}
        self._r_of = {p: i for i, p in enumerate(receivers)}
        self._s_label = {lab: i for i, lab in enumerate(self.sender_labels)}
        self._r_label = {lab: i for i, lab in enumerate(self.receiver_labels)}
        s_stage = torch.tensor([n.stage for n in senders])
        r_stage = torch.tensor([n.stage for n, _ in receivers])
        self.valid: Bool[Tensor, "sender receiver"] = s_stage[:, None] < r_stage[None, :]
        if spec.parallel and spec.has_mlp:  # a layer's MLP reads the residual stream its heads read, not their output
            for layer in range(L):
                heads = [self._s_of[Node("head", layer, h)] for h in range(H)]
                self.valid[heads, self._r_of[(Node("mlp", layer), None)]] = False
        r_idx, s_idx = torch.nonzero(self.valid.T, as_tuple=True)  # receiver-major, senders in order
        self.edge_senders, self.edge_receivers = s_idx, r_idx
        # which sender nodes each receiver input feeds: q and MLP inputs at their own position, k/v across positions
        S, R = len(senders), len(receivers)
        self.feeds_same = torch.zeros(R, S, dtype=torch.bool)
        self.feeds_kv = torch.zeros(R, S, dtype=torch.bool)
        for r, (node, inp) in enumerate(receivers):
            if node.kind == "head":
                (self.feeds_kv if inp in ("k", "v") else self.feeds_same)[r, self._s_of[node]] = True
            elif node.kind == "group":
                for h in range(node.unit * (H // G), (node.unit + 1) * (H // G)):
                    self.feeds_kv[r, self._s_of[Node("head", node.layer, h)]] = True
            elif node.kind == "mlp":
                self.feeds_same[r, self._s_of[node]] = True
        self.logits_index = R - 1
        #: layer of each sender (``input``: -1) and of each receiver input (``logits``: n_layers)
        self.sender_layer: tuple[int, ...] = tuple(-1 if n.layer is None else n.layer for n in senders)
        self.receiver_layer: tuple[int, ...] = tuple(L if n.layer is None else n.layer for n, _ in receivers)
        self._first_receiver = {(n.layer, inp or n.kind): i for i, (n, inp) in reversed(list(enumerate(receivers)))}
        #: [receiver]: whether a receiver input belongs to one head (a query, or k/v without GQA)
        self.head_port = torch.tensor([n.kind == "head" for n, _ in receivers])
        self._edges: Optional[tuple[Edge, ...]] = None

    def receiver_span(self, layer: int, input: str) -> slice:
        """The receiver indices of one layer's query (``"q"``), key (``"k"``) or value (``"v"``) inputs, its MLP
        (``"mlp"``), or the logits (``"logits"``, any layer)."""
        if input == "logits":
            return slice(self.logits_index, self.logits_index + 1)
        units = {"q": self.spec.n_heads, "k": self.spec.n_kv_heads, "v": self.spec.n_kv_heads, "mlp": 1}[input]
        first = self._first_receiver[(layer, input)]
        return slice(first, first + units)

    def sender_span(self, layer: int, kind: str) -> slice:
        """The sender indices of one layer's heads (``"head"``) or its MLP (``"mlp"``)."""
        first = self._s_of[Node("head", layer, 0)]
        return slice(first, first + self.spec.n_heads) if kind == "head" else slice(first + self.spec.n_heads,
                                                                                    first + self.spec.n_heads + 1)

    def locate(self, edge: EdgeLike) -> tuple[int, int, Optional[int]]:
        """(sender index, receiver index, position or None) of an edge given at any position, or at none; its
        nodes are checked against this model's shape (this layout's own ``n_pos`` aside)."""
        e = as_edge(edge)
        base = graph_layout(self.spec) if self.n_pos is not None else self
        s = base.sender_index(e.sender.at(None))
        r = base.receiver_index(e.receiver.at(None), e.input)
        if not bool(base.valid[s, r]):
            raise CircuitError(
                f"{e.label} is not an edge of {self.spec.architecture}: its attention and MLP run in parallel on the "
                "same residual stream, so a layer's heads do not reach its own MLP"
            )
        return s, r, e.pos

    @property
    def shape(self) -> tuple[int, ...]:
        """The dense shape: (sender, receiver), or (pos, sender, receiver) position-resolved."""
        base = (len(self.senders), len(self.receivers))
        return base if self.n_pos is None else (self.n_pos, *base)

    @property
    def n_edges(self) -> int:
        """Number of edges (all positions)."""
        return int(self.edge_senders.numel()) * (self.n_pos or 1)

    @property
    def edges(self) -> tuple[Edge, ...]:
        """Every edge, in the canonical order (built once, on first use)."""
        if self._edges is None:
            base = [Edge(self.senders[s], *self.receivers[r]) for s, r in zip(self.edge_senders.tolist(),
                                                                               self.edge_receivers.tolist())]
            self._edges = tuple(base) if self.n_pos is None else tuple(e.at(p) for p in range(self.n_pos) for e in base)
        return self._edges

    def edge_labels(self) -> list[str]:
        """Every edge's label in the canonical order (without building Edge objects)."""
        base = [f"{self.sender_labels[s]}->{self.receiver_labels[r]}"
                for s, r in zip(self.edge_senders.tolist(), self.edge_receivers.tolist())]
        if self.n_pos is None:
            return base
        out = []
        for p in range(self.n_pos):
            out += [f"{self.sender_labels[s]}@{p}->{self.receiver_labels[r]}@{p}"
                    for s, r in zip(self.edge_senders.tolist(), self.edge_receivers.tolist())]
        return out

    def flat_indices(self) -> Tensor:
        """Index of each edge (canonical order) into the flattened dense tensor of :attr:`shape`."""
        S, R = len(self.senders), len(self.receivers)
        base = self.edge_senders * R + self.edge_receivers
        if self.n_pos is None:
            return base
        return (torch.arange(self.n_pos)[:, None] * (S * R) + base[None, :]).reshape(-1)

    def flat(self, index: tuple[int, ...]) -> int:
        """A dense index (from :meth:`index`) as an index into the flattened dense tensor."""
        S, R = len(self.senders), len(self.receivers)
        return index[-2] * R + index[-1] + (index[0] * S * R if len(index) == 3 else 0)

    # ------------------------------------------------------------------ lookups with helpful errors

    def _check(self, node: Node) -> None:
        spec = self.spec
        if node.layer is not None and node.layer >= spec.n_layers:
            raise SiteOutOfRangeError(
                f"{node.label}: layer {node.layer} is out of range; the model has {spec.n_layers} layers "
                f"(valid: 0..{spec.n_layers - 1})"
            )
        if node.kind == "head" and node.unit >= spec.n_heads:
            raise SiteOutOfRangeError(
                f"{node.label}: head {node.unit} is out of range; the model has {spec.n_heads} heads per layer "
                f"(valid: 0..{spec.n_heads - 1})"
            )
        if node.kind == "group":
            if not spec.is_gqa:
                raise CircuitError(
                    f"{node.label}: this model has one key/value input per head (no GQA); use "
                    f"'L{node.layer}H<head>.k' / '.v'"
                )
            if node.unit >= spec.n_kv_heads:
                raise SiteOutOfRangeError(
                    f"{node.label}: group {node.unit} is out of range; the model has {spec.n_kv_heads} key/value "
                    f"groups per layer (valid: 0..{spec.n_kv_heads - 1})"
                )
        if node.kind == "mlp" and not spec.has_mlp:
            raise UnsupportedSiteError(
                f"{node.label}: this model ({spec.architecture}) is attention-only and has no MLP nodes"
            )
        if self.n_pos is None and node.pos is not None:
            raise CircuitError(f"{node.label}: this graph is not position-resolved; drop '@{node.pos}'")
        if self.n_pos is not None:
            if node.pos is None:
                raise CircuitError(
                    f"{node.label}: this graph is resolved over {self.n_pos} positions; add '@<pos>' "
                    f"(valid: 0..{self.n_pos - 1})"
                )
            if node.pos >= self.n_pos:
                raise SiteOutOfRangeError(
                    f"{node.label}: position {node.pos} is out of range (valid: 0..{self.n_pos - 1})"
                )

    def sender_index(self, node: NodeLike) -> int:
        """Dense index of a sender node (its position, if any, is checked but not part of the index)."""
        node = as_node(node)
        self._check(node)
        i = self._s_of.get(node.at(None))
        if i is None:
            raise CircuitError(f"{node.label} sends nothing; senders: {choices(self.sender_labels)}")
        return i

    def receiver_index(self, receiver: Union[str, Node], input: Optional[str] = None) -> int:
        """Dense index of a receiver input: a label (``"L1H0.k"``) or a node and its input."""
        if isinstance(receiver, str):
            if input is not None:
                raise CircuitError(f"give the input in the label ({receiver!r}.{input}) or as input=, not both")
            receiver, input = parse_receiver(receiver)
        self._check(receiver)
        if self.spec.is_gqa and receiver.kind == "head" and input in ("k", "v"):
            G = self.spec.n_kv_heads
            g = receiver.unit // (self.spec.n_heads // G)
            raise CircuitError(
                f"{receiver.port_label(input)}: keys and values are per group in this GQA model ({G} groups); "
                f"head {receiver.unit} reads group {g}: use 'L{receiver.layer}G{g}.{input}'"
            )
        i = self._r_of.get((receiver.at(None), input))
        if i is None:
            raise CircuitError(
                f"{receiver.port_label(input)} is not a receiver input; valid: {choices(self.receiver_labels)}"
            )
        return i

    def index(self, edge: EdgeLike) -> tuple[int, ...]:
        """Dense index of an edge: (sender, receiver), or (pos, sender, receiver) position-resolved."""
        e = as_edge(edge)
        s, r = self.sender_index(e.sender), self.receiver_index(e.receiver, e.input)
        if not bool(self.valid[s, r]):  # pragma: no cover - Edge's own check catches every such pair
            raise CircuitError(f"{e.label} is not an edge of this model")
        return (s, r) if self.n_pos is None else (e.pos, s, r)

    def mask(self, edges: Iterable[EdgeLike]) -> Bool[Tensor, "*pos sender receiver"]:
        """The boolean edge mask of ``edges`` (see :attr:`shape`)."""
        m = torch.zeros(self.shape, dtype=torch.bool)
        if isinstance(edges, (str, Edge)):
            edges = [edges]
        for e in edges:
            m[self.index(e)] = True
        return m

    def edges_of(self, mask: Bool[Tensor, "*pos sender receiver"]) -> list[Edge]:
        """The edges a mask marks, in the canonical order (the inverse of :meth:`mask`)."""
        if tuple(mask.shape) != self.shape:
            raise CircuitError(f"an edge mask of this graph is {list(self.shape)}; got {list(mask.shape)}")
        mask = mask.bool().cpu()
        if (mask & ~self.valid).any():
            bad = torch.nonzero(mask & ~self.valid)[0].tolist()
            raise CircuitError(
                f"the mask marks {self.sender_labels[bad[-2]]} -> {self.receiver_labels[bad[-1]]}, which is not an "
                "edge (the sender comes after the receiver reads the residual stream)"
            )
        keep = mask.reshape(-1)[self.flat_indices()]
        return [e for e, k in zip(self.edges, keep.tolist()) if k]

    def label_index(self, label: str) -> tuple[int, ...]:
        """Fast :meth:`index` for a canonical edge label (falls back to full parsing for the error message)."""
        sender, _, receiver = label.partition("->")
        pos = None
        if self.n_pos is not None and "@" in sender:
            sender, _, p = sender.partition("@")
            receiver, _, q = receiver.partition("@")
            pos = int(p) if p.isdigit() and p == q and int(p) < self.n_pos else None
        s, r = self._s_label.get(sender), self._r_label.get(receiver)
        if s is None or r is None or not bool(self.valid[s, r]) or (self.n_pos is not None and pos is None):
            return self.index(label)
        return (s, r) if self.n_pos is None else (pos, s, r)


@functools.lru_cache(maxsize=32)
def graph_layout(spec: ModelSpec, n_pos: Optional[int] = None) -> GraphLayout:
    """The (cached) :class:`GraphLayout` of a model shape, optionally resolved over ``n_pos`` positions."""
    return GraphLayout(spec, n_pos)


def all_edges(spec: ModelSpec, n_pos: Optional[int] = None) -> list[Edge]:
    """Every edge of a model of this shape, in topological order (see the module docstring).

    >>> spec = ModelSpec(n_layers=1, n_heads=1, d_model=4, d_head=4, d_vocab=5, n_ctx=4, attn_only=True)
    >>> [e.label for e in all_edges(spec)]
    ['input->L0H0.q', 'input->L0H0.k', 'input->L0H0.v', 'input->logits', 'L0H0->logits']
    """
    return list(graph_layout(spec, n_pos).edges)


def edge_mask(
    edges: Iterable[EdgeLike], spec: ModelSpec, n_pos: Optional[int] = None
) -> Bool[Tensor, "*pos sender receiver"]:
    """Bool mask ``[sender, receiver]`` (``[pos, sender, receiver]`` with ``n_pos``) marking ``edges``.

    >>> spec = ModelSpec(n_layers=2, n_heads=1, d_model=4, d_head=4, d_vocab=5, n_ctx=4)
    >>> m = edge_mask(["L0H0->L1H0.k", "L1.mlp->logits"], spec)
    >>> m.shape, int(m.sum()), [e.label for e in edges_from_mask(m, spec)]
    (torch.Size([5, 9]), 2, ['L0H0->L1H0.k', 'L1.mlp->logits'])
    """
    return graph_layout(spec, n_pos).mask(edges)


def edges_from_mask(mask: Bool[Tensor, "*pos sender receiver"], spec: ModelSpec) -> list[Edge]:
    """The edges a mask marks, in canonical order; a 3-d mask is position-resolved. The inverse of :func:`edge_mask`."""
    if mask.ndim not in (2, 3):
        raise CircuitError(f"an edge mask is [sender, receiver] or [pos, sender, receiver]; got {list(mask.shape)}")
    return graph_layout(spec, None if mask.ndim == 2 else int(mask.shape[0])).edges_of(mask)


__all__ = [
    "CircuitError",
    "Edge",
    "GraphLayout",
    "INPUTS",
    "NODE_KINDS",
    "Node",
    "all_edges",
    "as_edge",
    "as_node",
    "edge_mask",
    "edges_from_mask",
    "graph_layout",
    "parse_edge",
    "parse_node",
    "parse_receiver",
]
