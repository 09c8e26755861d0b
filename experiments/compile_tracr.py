"""Compile ACDC's two tracr programs with tracr and convert them to TransformerBridge weights (mechpatch/zoo/tracr.py).

    .venv/bin/pip install -c constraints.txt -e '.[tracr]'    # tracr-pypi, jax, dm-haiku
    .venv/bin/python experiments/compile_tracr.py configs/compile_tracr.yaml

For each model in the config:

1. Build the RASP program exactly as ACDC does (``acdc/tracr_task/utils.py``,
   ``get_tracr_model_input_and_tl_model``): reverse written out inline (ACDC does not use
   ``tracr.compiler.lib.make_reverse``; that one compiles to the same weights up to a permutation
   of the residual stream, checked below), proportion as ``lib.make_frac_prevs(tokens == "x")``.
   Compile with vocab / ``max_seq_len=5`` / ``compiler_bos="BOS"``.
2. Convert: embeddings, Q/K/V/O and MLP weights copied (nn.Linear layout), biases (all zero in
   tracr) copied, no LayerNorm, ReLU, bidirectional attention; the unembedding is the projection
   onto the program's output subspace, found by residual label (for reverse this is ACDC's
   ``eye(d_model, 3)``, which it equals because tracr sorts the output ``aggregate`` first; for the
   numerical xproportion, one logit: the ``frac_prevs`` dimension, ACDC's output dim 0). For reverse
   the weights are also checked against TransformerLens's own converter
   (``transformer_lens.utilities.tracr``; it handles categorical outputs only).
3. Check, on every input (all sequences over the vocabulary of 1..5 tokens after BOS), that every
   layer's attention and MLP output and the final residual stream equal tracr's, that the decoded
   outputs are equal (categorical) or within ``numerical_atol`` (numerical), and that they are the
   program's output computed in plain Python.
4. Ground truth: ACDC's edges (``get_tracr_reverse_edges`` / ``get_tracr_proportion_edges``), mapped
   to mechpatch's neutral format, and re-derived from the weights: the edges the weights allow (a
   sender writes a residual dimension its receiver reads), each zero-ablated alone on every input.
5. Write ``<out_dir>/tracr_<task>.safetensors`` (tensors only, so the sha256 is reproducible) and a
   JSON record next to it.
"""

import argparse
import json
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from typing import Any

import numpy as np
import torch

from mechpatch.config import load_config
from mechpatch.model import HookedModel, load_model
from mechpatch.zoo import tracr as zoo
from mechpatch._files import file_sha256
from mechpatch.zoo.induction import record_path

ACDC_SOURCE = (
    "github:ArthurConmy/Automatic-Circuit-Discovery acdc/tracr_task/utils.py, get_tracr_reverse_edges and "
    "get_tracr_proportion_edges (identical in the stored copies at commits 14dd478 and e160e37; the reference "
    "pins bc99ace8). Their docstring: 'Set of edges generated from ACDC run with threshold epsilon, metric l2 "
    "and zero ablation (commit e612e50)'."
)

# ACDC's ground-truth edges, as (receiver hook, sender hook); every head index there is 0 (one head per
# layer) and every other index None. They are on HookedTransformer hook names with use_attn_result,
# use_split_qkv_input and use_hook_mlp_in set.
ACDC_EDGES: dict[str, list[tuple[str, str]]] = {
    "tracr-reverse": [
        ("blocks.3.hook_resid_post", "blocks.3.attn.hook_result"),
        ("blocks.3.attn.hook_result", "blocks.3.attn.hook_q"),
        ("blocks.3.attn.hook_result", "blocks.3.attn.hook_k"),
        ("blocks.3.attn.hook_result", "blocks.3.attn.hook_v"),
        ("blocks.3.attn.hook_q", "blocks.3.hook_q_input"),
        ("blocks.3.attn.hook_k", "blocks.3.hook_k_input"),
        ("blocks.3.attn.hook_v", "blocks.3.hook_v_input"),
        ("blocks.3.hook_q_input", "blocks.2.hook_mlp_out"),
        ("blocks.3.hook_k_input", "hook_pos_embed"),
        ("blocks.3.hook_v_input", "hook_embed"),
        ("blocks.2.hook_mlp_out", "blocks.2.hook_mlp_in"),
        ("blocks.2.hook_mlp_in", "blocks.1.hook_mlp_out"),
        ("blocks.1.hook_mlp_out", "blocks.1.hook_mlp_in"),
        ("blocks.1.hook_mlp_in", "blocks.0.hook_mlp_out"),
        ("blocks.1.hook_mlp_in", "hook_embed"),
        ("blocks.1.hook_mlp_in", "hook_pos_embed"),
        ("blocks.0.hook_mlp_out", "blocks.0.hook_mlp_in"),
        ("blocks.0.hook_mlp_in", "blocks.0.attn.hook_result"),
        ("blocks.0.hook_mlp_in", "hook_embed"),
        ("blocks.0.attn.hook_result", "blocks.0.attn.hook_q"),
        ("blocks.0.attn.hook_result", "blocks.0.attn.hook_k"),
        ("blocks.0.attn.hook_result", "blocks.0.attn.hook_v"),
        ("blocks.0.attn.hook_v", "blocks.0.hook_v_input"),
        ("blocks.0.hook_v_input", "hook_embed"),
    ],
    "tracr-xproportion": [
        ("blocks.1.hook_resid_post", "blocks.1.attn.hook_result"),
        ("blocks.1.attn.hook_result", "blocks.1.attn.hook_q"),
        ("blocks.1.attn.hook_result", "blocks.1.attn.hook_k"),
        ("blocks.1.attn.hook_result", "blocks.1.attn.hook_v"),
        ("blocks.1.attn.hook_q", "blocks.1.hook_q_input"),
        ("blocks.1.attn.hook_k", "blocks.1.hook_k_input"),
        ("blocks.1.attn.hook_v", "blocks.1.hook_v_input"),
        ("blocks.1.hook_q_input", "hook_embed"),
        ("blocks.1.hook_q_input", "hook_pos_embed"),
        ("blocks.1.hook_k_input", "hook_embed"),
        ("blocks.1.hook_k_input", "hook_pos_embed"),
        ("blocks.1.hook_v_input", "blocks.0.hook_mlp_out"),
        ("blocks.0.hook_mlp_out", "blocks.0.hook_mlp_in"),
        ("blocks.0.hook_mlp_in", "hook_embed"),
    ],
}

EDGE_FORMAT = (
    "Each edge is {'sender': S, 'receiver': R}. Senders: 'input' (token + position embeddings), 'L{l}H{h}' (a "
    "head's output), 'L{l}.mlp' (an MLP's output). Receivers: 'L{l}H{h}.q' / '.k' / '.v' (the residual stream "
    "as read by that head's query / key / value), 'L{l}.mlp' (an MLP's input), 'logits' (the unembedding's "
    "input). Mapping from ACDC's (receiver hook, sender hook) pairs on HookedTransformer names: sender "
    "hook_embed and hook_pos_embed -> 'input' (both merge into one edge); blocks.l.attn.hook_result[:, :, h] "
    "-> 'L{l}H{h}'; blocks.l.hook_mlp_out -> 'L{l}.mlp'; receiver blocks.l.hook_q_input / hook_k_input / "
    "hook_v_input[:, :, h] -> 'L{l}H{h}.q' / '.k' / '.v'; blocks.l.hook_mlp_in -> 'L{l}.mlp'; "
    "blocks.{last}.hook_resid_post -> 'logits'. ACDC's edges inside one node (hook_q/k/v_input -> hook_q/k/v "
    "-> hook_result, hook_mlp_in -> hook_mlp_out) have no counterpart: a node's inside is always kept."
)

# What each model computes, in terms of the residual subspaces (tracr labels) its components read and write;
# the 'writes', 'reads' and per-edge 'via' lists in the record are computed from the weights, this is their reading.
EXPLANATIONS = {
    "tracr-reverse": (
        "L0H0 is SelectorWidth's attention for Select(tokens, tokens, TRUE): every non-BOS query attends uniformly "
        "to all positions including BOS, and its value reads only tokens:BOS (input -> L0H0.v), so it writes "
        "1/(length+1) to selector_width_selector_width_attn_output. L0.mlp reads that dim (L0H0 -> L0.mlp) with "
        "'one' and tokens:BOS (input -> L0.mlp) and writes length one-hot to selector_width:0..5. L1.mlp computes "
        "opp_idx = length - indices (sequence_map:-4..5) from selector_width (L0.mlp -> L1.mlp) and indices and "
        "'one' (input -> L1.mlp). L2.mlp computes opp_idx - 1 (map:-5..4) from sequence_map (L1.mlp -> L2.mlp). "
        "L3H0 is Aggregate(Select(indices, opp_idx-1, EQ), tokens): its query reads map:0..4 (L2.mlp -> L3H0.q), "
        "its key indices and tokens:BOS (input -> L3H0.k), its value tokens:1..3 (input -> L3H0.v); it writes "
        "aggregate:1..3, which the unembedding reads (L3H0 -> logits). L1H0, L2H0 and L3.mlp have all-zero "
        "weights: tracr's layer allocation leaves them empty."
    ),
    "tracr-xproportion": (
        "L0.mlp computes numerical(tokens == 'x') from tokens:x (input -> L0.mlp) into the one-dimensional 'map'. "
        "L1H0 is the numerical Aggregate(Select(indices, indices, LEQ), map): its query reads indices and 'one' "
        "(input -> L1H0.q), its key indices and tokens:BOS (input -> L1H0.k), so position p attends uniformly "
        "to positions 1..p ('one' x tokens:BOS is tracr's attend-to-BOS default for a query that matches no key; "
        "under LEQ every query matches itself, and removing only that term changes no logit); its value reads "
        "'map' (L0.mlp -> L1H0.v), and it writes the running mean to frac_prevs, which the unembedding reads "
        "(L1H0 -> logits). L0H0 and L1.mlp have all-zero weights."
    ),
}

# How ACDC's own experiments feed each model (acdc/tracr_task/utils.py, get_all_tracr_things), for comparisons.
ACDC_DATA = {
    "tracr-reverse": (
        "6 inputs: BOS + each permutation of (1, 2, 3), as ids [3, a, b, c] (tracr's encoding); corrupted = the "
        "batch permuted with no fixed point; metric L2 between outputs at positions 1..; zero ablation for the "
        "ground truth."
    ),
    "tracr-xproportion": (
        "length-4 strings over {w, x, y, z}, but encoded as ord(c) - ord('w') (w=0, x=1, y=2, z=3) with no BOS, "
        "while tracr's encoding is BOS=0, compiler_pad=1, w=2, x=3, y=4, z=5: ACDC's model sees sequences over "
        "{BOS, pad, w, x} and no leading BOS. mechpatch.zoo.tracr.encode uses tracr's encoding. The edges ACDC "
        "found (zero ablation, L2 on output dim 0 at positions 1..) are nevertheless exactly the functional ones "
        "on the correctly encoded inputs (derivation below)."
    ),
}

# Edges the weights allow but ACDC (and zero ablation here) finds unnecessary, and why.
NOT_IN_ACDC = {
    ("tracr-reverse", "input", "L0H0.q"): (
        "Select(tokens, tokens, TRUE) gives every key the same score, so a zero query (uniform attention over all "
        "positions, BOS included) gives non-BOS queries the same pattern; only the BOS query's pattern changes, "
        "and no later component reads BOS's attention output. Zero ablation changes no logit at all."
    ),
    ("tracr-reverse", "input", "L0H0.k"): (
        "As for L0H0.q: with zero keys every score is equal, which is the TRUE selector's pattern for non-BOS "
        "queries. Zero ablation changes no logit at all."
    ),
    ("tracr-reverse", "input", "L3H0.q"): (
        "It carries only 'one', tracr's always-attend-to-BOS default, which matters when a query matches no key; "
        "in reverse every query matches exactly one key (opp_idx-1 is in 0..length-1), so the BOS share of the "
        "softmax is already ~0 and removing it moves logits by < 1e-6."
    ),
}


@dataclass(frozen=True)
class CompileConfig:
    models: tuple[str, ...] = ("tracr-reverse", "tracr-xproportion")
    out_dir: str = "mechpatch/zoo/weights"
    threads: int = 1
    #: tolerance of the numerical (xproportion) output against tracr's
    numerical_atol: float = 1e-5
    #: an edge counts as functional when zero-ablating it alone moves some output logit by more than this
    ablation_atol: float = 1e-4

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in zoo.MODELS]
        if unknown or not self.models:
            raise ValueError(f"models must be a non-empty list of {sorted(zoo.MODELS)}; got {list(self.models)}")
        if self.threads < 1 or self.numerical_atol <= 0 or self.ablation_atol <= 0:
            raise ValueError("need threads >= 1, numerical_atol > 0, ablation_atol > 0")


# --------------------------------------------------------------------- programs


def program(name: str) -> Any:
    """The RASP program of ``name``, built as ACDC builds it."""
    from tracr.compiler import lib
    from tracr.rasp import rasp

    if name == "tracr-reverse":
        all_true = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE)
        length = rasp.SelectorWidth(all_true)
        opp_index = length - rasp.indices - 1
        flip = rasp.Select(rasp.indices, opp_index, rasp.Comparison.EQ)
        return rasp.Aggregate(flip, rasp.tokens)
    return lib.make_frac_prevs(rasp.tokens == "x")


def compile_program(name: str, rasp_program: Any) -> Any:
    from tracr.compiler import compiling

    spec = zoo.get(name)
    return compiling.compile_rasp_to_model(
        rasp_program, vocab=set(spec.vocab), max_seq_len=spec.max_seq_len, compiler_bos=zoo.BOS,
        compiler_pad=zoo.PAD,
    )


def canonical_label(label: str) -> str:
    """A residual label without tracr's expression id, which counts expressions process-wide
    (``"aggregate_1:3"`` -> ``"aggregate:3"``, ``"selector_width_5_selector_width_attn_output"`` ->
    ``"selector_width_selector_width_attn_output"``)."""
    name, sep, value = label.partition(":")
    return re.sub(r"_\d+(?=_|$)", "", name) + sep + value


def reference_output(name: str, inp: tuple) -> list:
    """The program's output on ``inp``, in plain Python."""
    if name == "tracr-reverse":
        return list(reversed(inp))
    return [sum(t == "x" for t in inp[: i + 1]) / (i + 1) for i in range(len(inp))]


# --------------------------------------------------------------------- conversion


def convert(
    name: str, assembled: Any, output_label: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """tracr's assembled model -> (native architecture, bridge state dict, output description).

    ``output_label`` is the program's output expression, as named in the residual labels (no id).
    """
    spec = zoo.get(name)
    cfg = assembled.model_config
    params = {k: {p: np.asarray(v) for p, v in d.items()} for k, d in assembled.params.items()}
    labels = [canonical_label(x) for x in assembled.residual_labels]
    if len(set(labels)) != len(labels):
        raise RuntimeError(f"{name}: residual labels are not unique without their ids: {labels}")
    tok = params["token_embed"]["embeddings"]
    d_vocab, d_model = tok.shape
    n_ctx, n_heads, d_head = params["pos_embed"]["embeddings"].shape[0], cfg.num_heads, cfg.key_size

    if output_label not in {label.partition(":")[0] for label in labels}:
        raise RuntimeError(f"{name}: the program's output {output_label!r} is not in the residual stream {labels}")
    if assembled.input_encoder.encoding_map != zoo.input_encoding(name):
        raise RuntimeError(f"{name}: tracr encodes inputs as {assembled.input_encoder.encoding_map}, not as zoo says")
    if spec.output == "categorical":
        decoding = {i: v for v, i in assembled.output_encoder.encoding_map.items()}
        if decoding != zoo.output_decoding(name):
            raise RuntimeError(f"{name}: tracr decodes outputs as {decoding}, not as zoo says")
        columns = [labels.index(f"{output_label}:{decoding[i]}") for i in range(len(decoding))]
        pairs = [[i, decoding[i]] for i in range(len(decoding))]
        output = {"kind": "categorical", "subspace": output_label, "decoding": pairs}
    else:
        columns = [labels.index(output_label)]
        output = {"kind": "numerical", "subspace": output_label, "logit_index": 0}
    unembed = np.zeros((len(columns), d_model), dtype=np.float32)
    for i, col in enumerate(columns):
        unembed[i, col] = 1.0
    output["unembed"] = f"projection onto residual dims {columns} ({[labels[c] for c in columns]})"

    architecture = {
        "n_layers": cfg.num_layers,
        "n_heads": n_heads,
        "d_model": int(d_model),
        "d_head": d_head,
        "d_mlp": cfg.mlp_hidden_size,
        "d_vocab": int(d_vocab),
        "d_vocab_out": len(columns),
        "n_ctx": int(n_ctx),
        "act_fn": "relu",
        "normalization_type": "LN" if cfg.layer_norm else None,
        "attention_dir": "causal" if cfg.causal else "bidirectional",
        "positional_embedding_type": "standard",
    }
    if architecture != dict(spec.architecture):
        raise RuntimeError(
            f"{name}: tracr compiled {architecture}, but mechpatch.zoo.tracr expects {dict(spec.architecture)}"
        )

    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    state = {
        "embed.weight": t(tok),
        "pos_embed.weight": t(params["pos_embed"]["embeddings"]),
        "unembed.weight": t(unembed),
        "unembed.bias": torch.zeros(len(columns)),
    }
    for layer in range(cfg.num_layers):
        p = f"transformer/layer_{layer}"
        for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "linear")):
            state[f"blocks.{layer}.attn.{ours}.weight"] = t(params[f"{p}/attn/{theirs}"]["w"]).T.contiguous()
            state[f"blocks.{layer}.attn.{ours}.bias"] = t(params[f"{p}/attn/{theirs}"]["b"])
        for ours, theirs in (("in", "linear_1"), ("out", "linear_2")):
            state[f"blocks.{layer}.mlp.{ours}.weight"] = t(params[f"{p}/mlp/{theirs}"]["w"]).T.contiguous()
            state[f"blocks.{layer}.mlp.{ours}.bias"] = t(params[f"{p}/mlp/{theirs}"]["b"])
    return architecture, state, output


def build(name: str, state: dict[str, torch.Tensor]) -> HookedModel:
    model = load_model(zoo.native_config(name), device="cpu", dtype="float32", name=name)
    model.bridge.load_state_dict(state, strict=True)
    return model


def check_against_transformer_lens(name: str, assembled: Any, model: HookedModel) -> str:
    """For the categorical model, TransformerLens's own converter must give the same weights."""
    if zoo.get(name).output != "categorical":
        return "not applicable: TransformerLens's converter handles categorical outputs only"
    from transformer_lens.utilities import tracr as tl_tracr

    reference = load_model(tl_tracr.make_tracr_transformer_bridge_config(assembled), device="cpu", name="tl")
    reference.bridge.load_state_dict(tl_tracr.make_tracr_transformer_bridge_state_dict(assembled), strict=False)
    ours, theirs = model.bridge.state_dict(), reference.bridge.state_dict()
    if ours.keys() != theirs.keys():
        raise RuntimeError(f"{name}: state-dict keys differ from TransformerLens's converter")
    worst = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    if worst > 0:
        raise RuntimeError(f"{name}: weights differ from TransformerLens's converter by up to {worst}")
    return "equal to transformer_lens.utilities.tracr.make_tracr_transformer_bridge_state_dict (all tensors, exactly)"


def check_lib_reverse(assembled: Any) -> str:
    """tracr.compiler.lib.make_reverse compiles to ACDC's reverse up to a permutation of the residual stream."""
    from tracr.compiler import lib
    from tracr.rasp import rasp

    other = compile_program("tracr-reverse", lib.make_reverse(rasp.tokens))
    rename = {"reverse": "aggregate", "opp_idx-1": "map", "opp_idx": "sequence_map", "length": "selector_width"}

    def relabel(label: str) -> str:
        name, sep, value = canonical_label(label).partition(":")
        for theirs, ours in rename.items():
            if name == theirs or name.startswith(theirs + "_"):
                name = ours + name[len(theirs) :]
                break
        return name + sep + value

    ours = [canonical_label(x) for x in assembled.residual_labels]
    theirs = [relabel(x) for x in other.residual_labels]
    if sorted(ours) != sorted(theirs):
        raise RuntimeError(f"lib.make_reverse has other residual dims: {sorted(set(ours) ^ set(theirs))}")
    perm = np.array([theirs.index(label) for label in ours])  # our dim i is their dim perm[i]
    d_model = len(ours)
    for module, ps in assembled.params.items():
        for p, value in ps.items():
            a, b = np.asarray(value), np.asarray(other.params[module][p])
            for axis, size in enumerate(b.shape):  # the residual axis is the one of size d_model (41; no other is)
                if size == d_model:
                    b = np.take(b, perm, axis=axis)
            if a.shape != b.shape or not np.array_equal(a, b):
                raise RuntimeError(f"lib.make_reverse differs from ACDC's reverse in {module}/{p}")
    return (
        "tracr.compiler.lib.make_reverse(tokens) compiles to exactly these weights after permuting the residual "
        "stream (its ops are named length / opp_idx / opp_idx-1 / reverse instead of selector_width / sequence_map "
        "/ map / aggregate, which sort differently; with its order, ACDC's eye(d_model, 3) unembedding would read "
        "indices:0..2 instead of the output)"
    )


# --------------------------------------------------------------------- checks on every input


def verify(name: str, assembled: Any, model: HookedModel, atol: float) -> dict[str, Any]:
    """Compare the converted model with tracr's on every input, layer by layer and at the output."""
    import jax.numpy as jnp

    spec = zoo.get(name)
    worst = {"attn_out": 0.0, "mlp_out": 0.0, "resid_final": 0.0, "numerical_output": 0.0, "reference": 0.0}
    mismatches, n_inputs = 0, 0
    for length in range(1, spec.max_seq_len + 1):
        inputs = zoo.all_inputs(name, length)
        tokens = zoo.encode(name, inputs)
        out = assembled.forward(assembled.params, jnp.asarray(tokens.numpy()))
        layer_outputs = [np.asarray(x) for x in out.transformer_output.layer_outputs]
        with torch.no_grad():
            logits, cache = model.bridge.run_with_cache(tokens)
        for layer in range(model.spec.n_layers):
            for i, kind in enumerate(("attn_out", "mlp_out")):
                ours = cache[f"blocks.{layer}.hook_{kind}"].numpy()
                worst[kind] = max(worst[kind], float(np.abs(ours - layer_outputs[2 * layer + i]).max()))
        final = cache[f"blocks.{model.spec.n_layers - 1}.hook_resid_post"].numpy()
        final_diff = float(np.abs(final - np.asarray(out.transformer_output.output)).max())
        worst["resid_final"] = max(worst["resid_final"], final_diff)
        ours = zoo.decode(name, logits)
        unembedded = np.asarray(out.unembedded_output)
        for row, inp in enumerate(inputs):
            expected = reference_output(name, inp)
            if spec.output == "categorical":
                theirs = assembled.output_encoder.decode(unembedded[row].tolist())[1:]
                mismatches += int(ours[row] != theirs or ours[row] != expected)
            else:
                theirs = unembedded[row, 1:].reshape(-1).tolist()
                diff = max(abs(a - b) for a, b in zip(ours[row], theirs))
                worst["numerical_output"] = max(worst["numerical_output"], diff)
                worst["reference"] = max(worst["reference"], max(abs(a - b) for a, b in zip(ours[row], expected)))
        n_inputs += len(inputs)
    # apply() (tracr's own entry point, one input at a time) on ACDC's inputs, against the batched forward
    for inp in zoo.acdc_inputs(name)[:8]:
        decoded = assembled.apply([zoo.BOS, *inp]).decoded[1:]
        ours = zoo.decode(name, model(zoo.encode(name, [inp])))[0]
        if spec.output == "categorical":
            mismatches += int(decoded != ours)
        else:
            worst["numerical_output"] = max(worst["numerical_output"], max(abs(a - b) for a, b in zip(ours, decoded)))
    if mismatches or worst["numerical_output"] > atol or worst["reference"] > atol or worst["resid_final"] > atol:
        raise RuntimeError(f"{name}: the converted model differs from tracr: {mismatches} mismatches, {worst}")
    result: dict[str, Any] = {"inputs": n_inputs, "max_abs_diff_vs_tracr": worst}
    if spec.output == "categorical":
        result["decoded_equal_to_tracr_and_reference"] = n_inputs
    return result


def check_gates(name: str, model: HookedModel) -> dict[str, str]:
    """Which TransformerLens gated hooks the converted bridge supports (and that they leave outputs alone)."""
    tokens = zoo.encode(name, zoo.all_inputs(name, zoo.get(name).max_seq_len))
    base = model(tokens)
    result = {}
    for flag in ("use_hook_mlp_in", "use_split_qkv_input", "use_attn_result", "use_attn_in"):
        try:
            with model.gates(flags=[flag]):
                diff = float((model(tokens) - base).abs().max())
            result[flag] = f"supported; outputs unchanged (max diff {diff})"
        except Exception as err:  # GatedHookError from mechpatch, wrapping TransformerLens's NotImplementedError
            result[flag] = f"unsupported: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return result


# --------------------------------------------------------------------- ground truth


def acdc_to_neutral(receiver: str, sender: str, last_layer: int) -> dict[str, str] | None:
    """One ACDC edge in the neutral format, or None for an edge inside a node."""

    def send(hook: str) -> str:
        if hook in ("hook_embed", "hook_pos_embed"):
            return "input"
        m = re.fullmatch(r"blocks\.(\d+)\.(attn\.hook_result|hook_mlp_out)", hook)
        if m is None:
            raise ValueError(f"unexpected ACDC sender {hook!r}")
        return f"L{m.group(1)}H0" if m.group(2) == "attn.hook_result" else f"L{m.group(1)}.mlp"

    if re.fullmatch(r"blocks\.\d+\.attn\.hook_(result|[qkv])", receiver):
        return None  # head internals
    if re.fullmatch(r"blocks\.\d+\.hook_mlp_out", receiver):
        return None  # MLP internals
    if receiver == f"blocks.{last_layer}.hook_resid_post":
        return {"sender": send(sender), "receiver": "logits"}
    m = re.fullmatch(r"blocks\.(\d+)\.hook_([qkv])_input", receiver)
    if m is not None:
        return {"sender": send(sender), "receiver": f"L{m.group(1)}H0.{m.group(2)}"}
    m = re.fullmatch(r"blocks\.(\d+)\.hook_mlp_in", receiver)
    if m is not None:
        return {"sender": send(sender), "receiver": f"L{m.group(1)}.mlp"}
    raise ValueError(f"unexpected ACDC receiver {receiver!r}")


def ground_truth(name: str, model: HookedModel, labels: list[str], atol: float) -> dict[str, Any]:
    """ACDC's edges in the neutral format, explained by the weights and by zero-ablating every allowed edge."""
    last = model.spec.n_layers - 1
    acdc = []
    edges: list[dict[str, str]] = []
    for receiver, sender in ACDC_EDGES[name]:
        neutral = acdc_to_neutral(receiver, sender, last)
        acdc.append({"receiver_hook": receiver, "sender_hook": sender, "neutral": neutral})
        if neutral is not None and neutral not in edges:
            edges.append(neutral)

    batches = [zoo.encode(name, zoo.all_inputs(name, n)) for n in range(1, zoo.get(name).max_seq_len + 1)]
    base = [model(tokens)[:, 1:] for tokens in batches]
    decoded = [zoo.decode(name, model(tokens)) for tokens in batches]

    def effect(edge: dict[str, str]) -> tuple[float, int]:
        change, changed = 0.0, 0
        with zoo.zero_ablated(model, labels, [edge]):
            for tokens, b, d in zip(batches, base, decoded):
                logits = model(tokens)
                change = max(change, float((logits[:, 1:] - b).abs().max()))
                changed += sum(int(x != y) for x, y in zip(zoo.decode(name, logits), d))
        return change, changed

    writes, reads = zoo.subspaces(model, labels)
    structural = []
    for edge in zoo.structural_edges(model, labels):
        pair = {"sender": edge["sender"], "receiver": edge["receiver"]}
        change, changed = effect(pair)
        structural.append({
            **pair, "via": edge["via"], "max_abs_logit_change": change,
            **({"inputs_with_changed_output": changed} if zoo.get(name).output == "categorical" else {}),
            "functional": change > atol, "in_acdc": pair in edges,
        })
    functional = [{"sender": e["sender"], "receiver": e["receiver"]} for e in structural if e["functional"]]
    missing = [e for e in edges if e not in [{"sender": s["sender"], "receiver": s["receiver"]} for s in structural]]
    if missing:
        raise RuntimeError(f"{name}: ACDC edges the weights do not allow: {missing}")
    extra = [e for e in structural if not e["in_acdc"]]
    agree = sorted(map(str, functional)) == sorted(map(str, edges))
    return {
        "edges": edges,
        "count": len(edges),
        "acdc_edge_count": len(acdc),
        "source": ACDC_SOURCE,
        "acdc_data": ACDC_DATA[name],
        "format": EDGE_FORMAT,
        "acdc_edges": acdc,
        "derivation": {
            "method": (
                "writes: residual dims where a sender's output weights (token/position embeddings, W_O, W_out, "
                "b_out) are nonzero; reads: dims where a receiver's input weights (W_Q/W_K/W_V, W_in, W_U) have a "
                "nonzero column. tracr builds every weight as a projection onto the named subspaces of the RASP "
                "operations, and every dim has exactly one writer. An edge is allowed ('structural') when the "
                "sender comes first and writes a dim the receiver reads ('via'); it is removed by zeroing the "
                "receiver's input weights at the sender's dims (exact zero ablation of that edge alone). "
                f"'functional': removing it alone moves some output logit by more than {atol} on some of the "
                f"{sum(len(b) for b in batches)} inputs (all sequences of 1..5 tokens)."
            ),
            "writes": writes,
            "reads": reads,
            "structural_edges": structural,
            "functional_edges": functional,
            "acdc_equals_functional": agree,
            "explanation": EXPLANATIONS[name],
            "allowed_but_not_in_acdc": [
                {
                    "sender": e["sender"], "receiver": e["receiver"], "via": e["via"],
                    "max_abs_logit_change": e["max_abs_logit_change"],
                    "why": NOT_IN_ACDC.get((name, e["sender"], e["receiver"]), "not explained"),
                }
                for e in extra
            ],
        },
    }


# --------------------------------------------------------------------- main

VERSIONED = ("torch", "transformer-lens", "safetensors", "tracr-pypi", "jax", "jaxlib", "dm-haiku", "numpy")


def save(state: dict[str, torch.Tensor], path: str) -> None:
    """Tensors only (no metadata), sorted keys: the file's sha256 is a function of the weights."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: state[k].detach().cpu().contiguous() for k in sorted(state)}, path + ".tmp")
    os.replace(path + ".tmp", path)
    os.chmod(path, 0o644)  # safetensors creates the file private


def compile_one(name: str, cfg: CompileConfig, config_path: str) -> dict[str, Any]:
    spec = zoo.get(name)
    start = time.time()
    rasp_program = program(name)
    assembled = compile_program(name, rasp_program)
    compile_seconds = time.time() - start
    architecture, state, output = convert(name, assembled, canonical_label(rasp_program.label))
    model = build(name, state)
    labels = [canonical_label(x) for x in assembled.residual_labels]

    start = time.time()
    checks: dict[str, Any] = {"on_every_input": verify(name, assembled, model, cfg.numerical_atol)}
    checks["transformer_lens_converter"] = check_against_transformer_lens(name, assembled, model)
    if name == "tracr-reverse":
        checks["lib_make_reverse"] = check_lib_reverse(assembled)
    checks["gated_hooks"] = check_gates(name, model)
    biases = [k for k, v in state.items() if k.endswith(".bias") and bool(v.any())]
    checks["nonzero_biases"] = biases
    verify_seconds = time.time() - start
    start = time.time()
    truth = ground_truth(name, model, labels, cfg.ablation_atol)
    edge_seconds = time.time() - start

    weights = os.path.join(cfg.out_dir, spec.weights_file)
    save(model.bridge.state_dict(), weights)
    enc = assembled.input_encoder.encoding_map
    rec = {
        "name": name,
        "what": (
            f"tracr compilation of ACDC's {name.split('-')[1]} task, converted to a TransformerLens-native "
            "TransformerBridge (bidirectional attention, no LayerNorm, ReLU MLPs)"
        ),
        "program": spec.program,
        "compile": {
            "vocab": list(spec.vocab), "max_seq_len": spec.max_seq_len,
            "compiler_bos": zoo.BOS, "compiler_pad": zoo.PAD,
        },
        "script": "experiments/compile_tracr.py",
        "command": f".venv/bin/python experiments/compile_tracr.py {config_path}",
        "config": asdict(cfg),
        "architecture": architecture,
        "input_encoding": [[tok, int(i)] for tok, i in sorted(enc.items(), key=lambda kv: kv[1])],
        "output": output,
        "residual_labels": labels,
        "residual_labels_note": (
            "tracr's labels with its process-wide expression ids removed ('aggregate_1:3' -> 'aggregate:3')"
        ),
        "positions": (
            "position 0 holds BOS and has an all-zero position embedding (tracr's); position p >= 1 embeds indices:p-1"
        ),
        "checks": checks,
        "ground_truth": truth,
        "seconds": {
            "compile": round(compile_seconds, 1), "verify": round(verify_seconds, 1), "edges": round(edge_seconds, 1),
        },
        "threads": cfg.threads,
        "versions": {"python": platform.python_version(), **{pkg: version(pkg) for pkg in VERSIONED}},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights_file": spec.weights_file,
        "weights_sha256": file_sha256(weights),
    }
    path = record_path(weights)
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(rec, fh, indent=2)
        fh.write("\n")
    os.replace(path + ".tmp", path)
    d = truth["derivation"]
    print(
        f"{name}: {architecture['n_layers']} layers, d_model {architecture['d_model']}, "
        f"d_head {architecture['d_head']}, d_mlp {architecture['d_mlp']}; "
        f"{checks['on_every_input']['inputs']} inputs equal tracr's "
        f"(max diffs {checks['on_every_input']['max_abs_diff_vs_tracr']}); edges: {truth['count']} neutral from "
        f"{truth['acdc_edge_count']} ACDC, {len(d['structural_edges'])} allowed by the weights, "
        f"{len(d['functional_edges'])} functional, ACDC == functional: {d['acdc_equals_functional']}; "
        f"compile {compile_seconds:.1f}s verify {verify_seconds:.1f}s edges {edge_seconds:.1f}s -> {weights}",
        flush=True,
    )
    return rec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config, e.g. configs/compile_tracr.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(CompileConfig, args.config)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        for name in cfg.models:
            compile_one(name, cfg, args.config)
    finally:
        torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
