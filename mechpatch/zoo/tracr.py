"""Two models with known circuits, compiled from RASP programs by tracr: ``tracr-reverse`` and ``tracr-xproportion``.

These are the two tracr tasks of ACDC (Conmy et al. 2023, App. I), compiled by
``experiments/compile_tracr.py`` (which needs the ``tracr`` extra: jax, dm-haiku) and converted once to
TransformerLens-native ``TransformerBridge`` weights, so loading them here needs neither tracr nor jax:

- ``tracr-reverse`` reverses a sequence over {1, 2, 3}: ``length = SelectorWidth(Select(tokens, tokens,
  TRUE)); opp = length - indices - 1; reverse = Aggregate(Select(indices, opp, EQ), tokens)`` (4 layers,
  1 head, d_model 41). Output: categorical, 3 logits (one per value), one-hot at every position.
- ``tracr-xproportion`` computes, at each position, the fraction of the tokens so far that are ``"x"``
  (``frac_prevs(tokens == "x")`` over {w, x, y, z}; 2 layers, 1 head, d_model 14). Output: numerical,
  one logit (index 0) holding the fraction.

Both take at most 5 tokens after the compiler's ``"BOS"`` token, attend bidirectionally (tracr compiles
non-causal models) and have no LayerNorm. Position 0 (BOS) carries no output.

Each model's weights ship in ``mechpatch/zoo/weights/`` with a JSON record: the program, the token
encodings, the residual-stream labels, the conversion checks, versions, sha256, and the **ground-truth
edges** in mechpatch's neutral format (``{"sender": ..., "receiver": ...}``; nodes ``"input"``,
``"L{l}H{h}"``, ``"L{l}.mlp"``; receivers ``"L{l}H{h}.q"``/``.k``/``.v``, ``"L{l}.mlp"``, ``"logits"``),
taken from ACDC's code and re-derived from the weights (:func:`structural_edges`, :func:`zero_ablated`).

TransformerLens 4.3 notes: the native bridge honours ``attention_dir="bidirectional"`` and
``normalization_type=None`` (outputs equal tracr's exactly), but it refuses ``use_split_qkv_input`` and
``use_attn_result`` (NotImplementedError for its plain ``AttentionBridge``). With one head per layer and
no LayerNorm neither is needed: a head's output is ``hook_attn_out`` (tracr's ``b_O`` is zero), and an
edge into a head's q/k/v can be removed at ``hook_q``/``hook_k``/``hook_v`` by subtracting the sender's
output times ``W_Q``/``W_K``/``W_V`` (the projection is linear). ``hook_mlp_in`` works.

>>> model = load_tracr("tracr-reverse")
>>> decode("tracr-reverse", model(encode("tracr-reverse", [[1, 2, 3], [3, 3, 1]])))
[[3, 2, 1], [1, 3, 3]]
>>> xprop = load_tracr("tracr-xproportion")
>>> [round(x, 3) for x in decode("tracr-xproportion", xprop(encode("tracr-xproportion", ["xwxy"])))[0]]
[1.0, 0.5, 0.667, 0.5]
"""

import contextlib
import itertools
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechpatch.errors import (
    EmptyInputError,
    ModelLoadError,
    ShapeMismatchError,
    SiteOutOfRangeError,
    TokenizerError,
    UnknownSiteKindError,
    choices,
)
from mechpatch.model import HookedModel, load_model
from mechpatch._files import file_sha256
from mechpatch.zoo.induction import record_path

#: A token of a tracr program's input vocabulary (ints for reverse, one-letter strings for xproportion).
Token = Union[int, str]
#: A value of a program's output: a token (categorical) or a float (numerical).
OutputValue = Union[int, str, float]

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
BOS = "BOS"  # tracr's compiler_bos: prepended to every input by :func:`encode`
PAD = "compiler_pad"  # tracr's compiler_pad: has an embedding row, never used here


@dataclass(frozen=True)
class TracrModel:
    """What is fixed about one compiled model: its program, vocabulary and architecture.

    ``encoding`` lists (token, id) as tracr's input encoder assigns them (sorted as strings: tracr sorts
    its basis directions); ``decoding`` lists (logit index, value) of a categorical output. The compile
    script checks both against tracr. Residual labels and edges come from the JSON record.
    """

    name: str
    program: str
    vocab: tuple[Token, ...]
    max_seq_len: int
    output: str  # "categorical" or "numerical"
    weights_file: str
    architecture: Mapping[str, Any]
    encoding: tuple[tuple[Token, int], ...]
    decoding: tuple[tuple[int, OutputValue], ...] = ()

    @property
    def weights_path(self) -> str:
        return os.path.join(WEIGHTS_DIR, self.weights_file)


def _architecture(n_layers: int, d_model: int, d_head: int, d_mlp: int, d_vocab: int, d_vocab_out: int) -> dict:
    return {
        "n_layers": n_layers,
        "n_heads": 1,
        "d_model": d_model,
        "d_head": d_head,
        "d_mlp": d_mlp,
        "d_vocab": d_vocab,
        "d_vocab_out": d_vocab_out,
        "n_ctx": 6,  # BOS + max_seq_len 5
        "act_fn": "relu",
        "normalization_type": None,
        "attention_dir": "bidirectional",
        "positional_embedding_type": "standard",
    }


MODELS: dict[str, TracrModel] = {
    "tracr-reverse": TracrModel(
        "tracr-reverse",
        "length = SelectorWidth(Select(tokens, tokens, TRUE)); opp = length - indices - 1; "
        "reverse = Aggregate(Select(indices, opp, EQ), tokens)",
        (1, 2, 3),
        5,
        "categorical",
        "tracr_reverse.safetensors",
        _architecture(n_layers=4, d_model=41, d_head=12, d_mlp=30, d_vocab=5, d_vocab_out=3),
        ((1, 0), (2, 1), (3, 2), (BOS, 3), (PAD, 4)),
        ((0, 1), (1, 2), (2, 3)),
    ),
    "tracr-xproportion": TracrModel(
        "tracr-xproportion",
        "frac_prevs(tokens == 'x') = numerical(Aggregate(Select(indices, indices, LEQ), "
        "numerical(Map(tokens == 'x')), default=0))",
        ("w", "x", "y", "z"),
        5,
        "numerical",
        "tracr_xproportion.safetensors",
        _architecture(n_layers=2, d_model=14, d_head=7, d_mlp=1, d_vocab=6, d_vocab_out=1),
        ((BOS, 0), (PAD, 1), ("w", 2), ("x", 3), ("y", 4), ("z", 5)),
    ),
}


def get(name: str) -> TracrModel:
    """The fixed facts of a tracr model, by name; ModelLoadError listing the valid names otherwise."""
    if name not in MODELS:
        raise ModelLoadError(f"unknown tracr model {name!r}; valid: {choices(MODELS)}")
    return MODELS[name]


def native_config(name: str) -> Any:
    """The model's ``TransformerBridgeConfig`` (weights are loaded over the random initialisation)."""
    from transformer_lens.config import TransformerBridgeConfig

    return TransformerBridgeConfig(**get(name).architecture, seed=0)


def record(name: str, weights: Optional[Union[str, os.PathLike]] = None) -> dict[str, Any]:
    """The JSON record next to the model's weights (or next to ``weights``)."""
    path = record_path(os.fspath(weights) if weights is not None else get(name).weights_path)
    if not os.path.exists(path):
        raise ModelLoadError(
            f"missing {path!r}; compile the tracr models with `.venv/bin/python experiments/compile_tracr.py "
            "configs/compile_tracr.yaml` (needs `pip install -e '.[tracr]'`)"
        )
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def load_tracr(
    name: str,
    device: Union[str, torch.device, None] = "cpu",
    dtype: Union[str, torch.dtype, None] = torch.float32,
    weights: Optional[Union[str, os.PathLike]] = None,
) -> HookedModel:
    """Load a compiled tracr model as a TransformerBridge (no tracr or jax needed).

    Args:
        name: ``"tracr-reverse"`` or ``"tracr-xproportion"``.
        device: ``"cpu"`` (default), ``"cuda"``, ``"auto"``, ...
        dtype: ``torch.float32`` (the weights' dtype), ``"float64"``, ...
        weights: a safetensors file written by ``experiments/compile_tracr.py`` (default: the shipped
            one); its JSON record must sit next to it.

    Returns:
        A :class:`~mechpatch.model.HookedModel` named ``name`` in eval mode, without a tokenizer: make
        its input with :func:`encode` and read its output with :func:`decode`.

    Raises:
        ModelLoadError: unknown name; weights or record missing; sha256 of the weights differs from
            the record's; tensors that do not fit the architecture.

    >>> load_tracr("tracr-xproportion")
    HookedModel('tracr-xproportion', TransformerLensNative, layers=2, heads=1, d_model=14, d_mlp=1, cpu, torch.float32)
    """
    from safetensors.torch import load_file

    spec = get(name)
    path = os.fspath(weights) if weights is not None else spec.weights_path
    rec = record(name, path)
    if not os.path.exists(path):
        raise ModelLoadError(f"missing {path!r}; re-run experiments/compile_tracr.py, or restore it with its record")
    expected, actual = rec.get("weights_sha256"), file_sha256(path)
    if expected != actual:
        raise ModelLoadError(
            f"{path!r} has sha256 {actual}, but its record {record_path(path)!r} says {expected}; the weights "
            "were changed after compilation: re-run experiments/compile_tracr.py, or restore both files together"
        )
    if rec.get("name") != name:
        raise ModelLoadError(f"{record_path(path)!r} is the record of {rec.get('name')!r}, not of {name!r}")
    model = load_model(native_config(name), device=device, dtype=dtype, name=name)
    try:
        model.bridge.load_state_dict(load_file(path), strict=True)
    except RuntimeError as err:
        raise ModelLoadError(f"{path!r} does not fit the {name} architecture {dict(spec.architecture)}: {err}") from err
    return model


def load_tracr_reverse(**kwargs: Any) -> HookedModel:
    """:func:`load_tracr` for ``"tracr-reverse"`` (the zoo's loader entry)."""
    return load_tracr("tracr-reverse", **kwargs)


def load_tracr_xproportion(**kwargs: Any) -> HookedModel:
    """:func:`load_tracr` for ``"tracr-xproportion"`` (the zoo's loader entry)."""
    return load_tracr("tracr-xproportion", **kwargs)


# --------------------------------------------------------------------- inputs and outputs


def input_encoding(name: str) -> dict[Token, int]:
    """Token -> id, as tracr's input encoder assigns them (vocabulary sorted, then BOS, then the pad).

    >>> input_encoding("tracr-reverse")
    {1: 0, 2: 1, 3: 2, 'BOS': 3, 'compiler_pad': 4}
    """
    return dict(get(name).encoding)


def output_decoding(name: str) -> dict[int, OutputValue]:
    """Output id (logit index) -> value for a categorical model; ``{}`` for a numerical one.

    >>> output_decoding("tracr-reverse")
    {0: 1, 1: 2, 2: 3}
    """
    return dict(get(name).decoding)


def all_inputs(name: str, length: Optional[int] = None) -> list[tuple[Token, ...]]:
    """Every input of the task: all sequences over the vocabulary of ``length`` tokens (default: 1..5).

    >>> len(all_inputs("tracr-reverse")), len(all_inputs("tracr-xproportion")), all_inputs("tracr-reverse", 1)
    (363, 1364, [(1,), (2,), (3,)])
    """
    spec = get(name)
    lengths = range(1, spec.max_seq_len + 1) if length is None else [length]
    if length is not None and not 1 <= length <= spec.max_seq_len:
        raise TokenizerError(f"{name} inputs have 1..{spec.max_seq_len} tokens; got length={length}")
    return [seq for n in lengths for seq in itertools.product(spec.vocab, repeat=n)]


def acdc_inputs(name: str) -> list[tuple[Token, ...]]:
    """The inputs ACDC's tracr experiments draw from (``acdc/tracr_task/utils.py``).

    Reverse: the 6 permutations of (1, 2, 3). Proportion: all 256 strings of length 4 over {w, x, y, z}
    (ACDC draws its examples from these). Note that ACDC encodes them as ``ord(c) - ord("w")`` without
    BOS, which is not tracr's encoding (w is id 2, BOS id 0); :func:`encode` uses tracr's.

    >>> acdc_inputs("tracr-reverse")[:2]
    [(1, 2, 3), (1, 3, 2)]
    """
    spec = get(name)
    if name == "tracr-reverse":
        return list(itertools.permutations(spec.vocab))
    return list(itertools.product(spec.vocab, repeat=4))


def encode(name: str, inputs: Sequence[Any]) -> Int[Tensor, "batch pos"]:
    """Token ids for a batch of inputs: BOS, then each token's id.

    Args:
        inputs: a list of inputs of equal length (1..5 tokens), each a sequence of vocabulary tokens:
            ``[[1, 2, 3]]`` for reverse, ``["wxxy", "yyzx"]`` or ``[["w", "x"]]`` for xproportion. Do not
            include BOS. A single input must be wrapped in a list.

    Returns:
        A long tensor [batch, 1 + length] on the CPU.

    Raises:
        EmptyInputError: no inputs.
        TokenizerError: a token outside the vocabulary (the valid ones are listed), an input of the
            wrong length, inputs of different lengths.

    >>> encode("tracr-xproportion", ["xw", "zz"])
    tensor([[0, 3, 2],
            [0, 5, 5]])
    """
    spec = get(name)
    enc = input_encoding(name)
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence):
        raise TokenizerError(
            f"inputs must be a list of inputs, each a sequence of tokens; got {type(inputs).__name__} {inputs!r} "
            f"(wrap a single input in a list: [{inputs!r}])"
        )
    if len(inputs) == 0:
        raise EmptyInputError(f"no inputs given to encode for {name}")
    rows = []
    for i, inp in enumerate(inputs):
        if not isinstance(inp, Sequence):
            raise TokenizerError(
                f"input #{i} is {inp!r}, not a sequence of tokens; inputs must be a list of inputs (wrap a "
                f"single input in a list: [{list(inputs)!r}])"
            )
        if not 1 <= len(inp) <= spec.max_seq_len:
            raise TokenizerError(f"input #{i} has {len(inp)} tokens; {name} takes 1..{spec.max_seq_len} (BOS is added)")
        for tok in inp:
            if tok not in spec.vocab or isinstance(tok, bool):
                raise TokenizerError(
                    f"input #{i} has token {tok!r}, which is not in the {name} vocabulary; valid tokens: "
                    f"{choices(spec.vocab)} (BOS is added by encode)"
                )
        rows.append([enc[BOS]] + [enc[tok] for tok in inp])
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        raise TokenizerError(
            f"inputs have different lengths ({sorted(n - 1 for n in lengths)}); batch inputs of one length "
            "together (mechpatch does not pad)"
        )
    return torch.tensor(rows, dtype=torch.long)


def decode(name: str, logits: Float[Tensor, "batch pos d_vocab"]) -> list[list[OutputValue]]:
    """The program's output for each input, read from the model's logits (position 0, BOS, is dropped).

    Categorical (reverse): the value of the largest logit at each position. Numerical
    (xproportion): logit 0 at each position, as a float.
    """
    spec = get(name)
    width = int(spec.architecture["d_vocab_out"])
    if logits.ndim != 3 or logits.shape[-1] != width:
        raise ShapeMismatchError(f"{name} logits must be [batch, pos, {width}]; got {tuple(logits.shape)}")
    out = logits[:, 1:].detach().float().cpu()
    if spec.output == "numerical":
        return [[float(x) for x in row] for row in out[..., 0]]
    values = output_decoding(name)
    return [[values[int(i)] for i in row] for row in out.argmax(dim=-1)]


# --------------------------------------------------------------------- ground truth


def residual_labels(name: str) -> list[str]:
    """tracr's label of each residual-stream dimension (``"tokens:1"``, ``"indices:0"``, ``"one"``, ...)."""
    return list(record(name)["residual_labels"])


def ground_truth_edges(name: str) -> list[dict[str, str]]:
    """The task's ground-truth circuit: ACDC's edges in mechpatch's neutral format.

    >>> len(ground_truth_edges("tracr-reverse")), len(ground_truth_edges("tracr-xproportion"))
    (10, 5)
    >>> ground_truth_edges("tracr-xproportion")[0]
    {'sender': 'L1H0', 'receiver': 'logits'}
    """
    return [dict(edge) for edge in record(name)["ground_truth"]["edges"]]


def senders(n_layers: int, n_heads: int) -> list[str]:
    """Sender nodes in forward order: ``input``, then per layer its heads and its MLP."""
    out = ["input"]
    for layer in range(n_layers):
        out += [f"L{layer}H{h}" for h in range(n_heads)] + [f"L{layer}.mlp"]
    return out


def receivers(n_layers: int, n_heads: int) -> list[str]:
    """Receiver nodes in forward order: per layer its heads' q, k, v and its MLP, then ``logits``."""
    out = []
    for layer in range(n_layers):
        out += [f"L{layer}H{h}.{x}" for h in range(n_heads) for x in "qkv"] + [f"L{layer}.mlp"]
    return out + ["logits"]


@dataclass(frozen=True)
class Node:
    """A node of the edge format, parsed from its name once: ``input``, ``logits``, ``L3.mlp``, ``L3H0``, ``L3H0.q``."""

    kind: str  # "input", "head", "mlp" or "logits"
    layer: int = -1
    head: int = -1
    part: str = ""  # "q", "k" or "v" for a head as receiver

    @property
    def order(self) -> tuple[int, int]:
        """Position in the forward pass: (layer, 0 for heads / 1 for the MLP); input first, logits last."""
        if self.kind == "input":
            return (-1, 0)
        if self.kind == "logits":
            return (1 << 30, 0)
        return (self.layer, 1 if self.kind == "mlp" else 0)


_NODE = re.compile(r"^(?:input|logits|L(\d+)\.mlp|L(\d+)H(\d+)(?:\.([qkv]))?)$")


def parse_node(name: str) -> Node:
    """Parse a node name of the edge format.

    >>> parse_node("L3H0.q")
    Node(kind='head', layer=3, head=0, part='q')
    """
    m = _NODE.match(name)
    if m is None:
        raise UnknownSiteKindError(
            f"bad node name {name!r}; valid forms: 'input', 'logits', 'L<layer>.mlp', 'L<layer>H<head>' "
            "(sender), 'L<layer>H<head>.q' / '.k' / '.v' (receiver)"
        )
    if name in ("input", "logits"):
        return Node(name)
    if m.group(1) is not None:
        return Node("mlp", int(m.group(1)))
    return Node("head", int(m.group(2)), int(m.group(3)), m.group(4) or "")


def _precedes(sender: str, receiver: str) -> bool:
    """Whether ``sender``'s output reaches ``receiver``'s input: heads read the residual stream before
    their layer, an MLP reads it after its layer's attention."""
    s, r = parse_node(sender), parse_node(receiver)
    return s.order < r.order


def _read_rows(node: Node, d_head: int) -> slice:
    return slice(node.head * d_head, (node.head + 1) * d_head) if node.kind == "head" else slice(None)


def _read_param(receiver: str) -> str:
    """The parameter through which ``receiver`` reads the residual stream (columns: residual dims)."""
    node = parse_node(receiver)
    if node.kind == "logits":
        return "unembed.weight"
    if node.kind == "mlp":
        return f"blocks.{node.layer}.mlp.in.weight"
    if node.kind == "head" and node.part:
        return f"blocks.{node.layer}.attn.{node.part}.weight"
    raise UnknownSiteKindError(
        f"{receiver!r} is not a receiver; receivers are 'L<l>H<h>.q/.k/.v', 'L<l>.mlp', 'logits'"
    )


def _write_matrices(state: Mapping[str, Tensor], sender: str, d_head: int) -> list[Tensor]:
    """Tensors whose first axis is the residual dims that ``sender`` writes."""
    node = parse_node(sender)
    if node.kind == "input":
        return [state["embed.weight"].T, state["pos_embed.weight"].T]
    if node.kind == "mlp":
        return [state[f"blocks.{node.layer}.mlp.out.weight"], state[f"blocks.{node.layer}.mlp.out.bias"][:, None]]
    if node.kind == "head" and not node.part:
        return [state[f"blocks.{node.layer}.attn.o.weight"][:, node.head * d_head : (node.head + 1) * d_head]]
    raise UnknownSiteKindError(f"{sender!r} is not a sender; senders are 'input', 'L<l>H<h>', 'L<l>.mlp'")


def subspaces(model: HookedModel, labels: Sequence[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Which residual dimensions (by tracr label) each sender writes and each receiver reads.

    A sender writes a dimension when its output weights (embeddings, ``W_O``, ``W_out``, ``b_out``) are
    nonzero there; a receiver reads it when its input weights (``W_Q``/``W_K``/``W_V`` of the head,
    ``W_in``, ``W_U``) have a nonzero column there. tracr builds every weight as a projection onto
    named subspaces, so these sets are the subspaces of the RASP operations each component implements.

    Returns:
        ``(writes, reads)``: sender -> labels, receiver -> labels (in residual order).
    """
    s = model.spec
    if len(labels) != s.d_model:
        raise ModelLoadError(f"{len(labels)} residual labels for a model with d_model {s.d_model}")
    state = {k: v.detach().float().cpu() for k, v in model.bridge.state_dict().items()}

    def pick(mask: Tensor) -> list[str]:
        return [labels[i] for i in torch.nonzero(mask).flatten().tolist()]

    writes = {
        node: pick(torch.stack([(m != 0).any(dim=-1) for m in _write_matrices(state, node, s.d_head)]).any(dim=0))
        for node in senders(s.n_layers, s.n_heads)
    }
    reads = {
        node: pick((state[_read_param(node)][_read_rows(parse_node(node), s.d_head)] != 0).any(dim=0))
        for node in receivers(s.n_layers, s.n_heads)
    }
    return writes, reads


def structural_edges(model: HookedModel, labels: Sequence[str]) -> list[dict[str, Any]]:
    """Every edge the weights allow: the sender comes first and writes a dimension the receiver reads.

    Returns:
        ``{"sender", "receiver", "via": [shared labels]}`` in forward order of receivers, then senders.
    """
    writes, reads = subspaces(model, labels)
    edges = []
    for receiver in receivers(model.spec.n_layers, model.spec.n_heads):
        for sender in senders(model.spec.n_layers, model.spec.n_heads):
            via = [label for label in reads[receiver] if label in writes[sender]]
            if via and _precedes(sender, receiver):
                edges.append({"sender": sender, "receiver": receiver, "via": via})
    return edges


@contextlib.contextmanager
def zero_ablated(model: HookedModel, labels: Sequence[str], edges: Sequence[Mapping[str, str]]) -> Iterator[None]:
    """Remove ``edges`` from the model (zero ablation of each edge alone) while in the context.

    In a tracr model each residual dimension that a receiver sees has one writer before it (the one
    exception, tracr's selector-width MLP, writes the dimension its own layer's head wrote, after
    reading it), so removing the edge S -> R is zeroing the columns of R's input weights at the
    dimensions S writes and R reads: R then sees everything but S's output. The weights are restored
    on exit.

    Raises:
        ModelLoadError: a dimension that an edge needs has more than one writer (not a tracr layout).
    """
    writes, reads = subspaces(model, labels)
    for edge in edges:
        if edge["sender"] not in writes or edge["receiver"] not in reads:
            raise SiteOutOfRangeError(
                f"no edge {edge['sender']} -> {edge['receiver']} in this model; senders: {choices(writes)}; "
                f"receivers: {choices(reads)}"
            )
    writers: dict[str, set[str]] = {}
    for sender, dims in writes.items():
        for label in dims:
            writers.setdefault(label, set()).add(sender)
    index = {label: i for i, label in enumerate(labels)}
    params = model.bridge.state_dict(keep_vars=True)  # state-dict names (the bridge's), the live parameters
    saved: dict[str, Tensor] = {}
    try:
        for edge in edges:
            sender, receiver = edge["sender"], edge["receiver"]
            via = [label for label in reads[receiver] if label in writes[sender]]
            # another writer of those dims that the receiver also sees would make this no edge ablation
            shared = [label for label in via if any(w != sender and _precedes(w, receiver) for w in writers[label])]
            if shared:
                raise ModelLoadError(
                    f"cannot ablate {sender} -> {receiver} by weights: {receiver} reads {shared}, which other "
                    "components before it write too"
                )
            cols = torch.tensor([index[label] for label in via], dtype=torch.long)
            key, rows = _read_param(receiver), _read_rows(parse_node(receiver), model.spec.d_head)
            if key not in saved:
                saved[key] = params[key].detach().clone()
            with torch.no_grad():
                params[key][rows, cols] = 0
        yield
    finally:
        with torch.no_grad():
            for key, value in saved.items():
                params[key].copy_(value)
