"""The slow, obvious edge patching that the tests hold :func:`mechpatch.circuit.edges.edge_patch` to.

Per edge set, every receiver's input is rebuilt by hand as the sum of its senders' outputs (current or ablated, one
head at a time) plus the biases (behind a post-attention norm: the norm of each layer's heads, current or ablated,
plus b_O), and attention is computed head by head with its own softmax: this module is the
oracle, written independently of mechpatch's forward (it shares only the weights, norms, RoPE and MLP).
"""

from collections.abc import Sequence
from typing import Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechpatch.circuit.components import EdgeLike, graph_layout
from mechpatch.circuit.edges import _setup, locate
from mechpatch.model import HookedModel
from mechpatch.patching import fast
from mechpatch.patching import functional as F_
from mechpatch.patching.interventions import Intervention, Interpolate, Mean, Replace, Zero
from mechpatch.patching.metrics import Metric


def edge_patch_reference(
    model: HookedModel,
    base: Int[Tensor, "batch pos"],
    edge_sets: Sequence[Sequence[EdgeLike]],
    *,
    metric: Union[Metric, str],
    source: Optional[Int[Tensor, "batch pos"]] = None,
    intervention: Intervention = Replace(),
    answers: Optional[Int[Tensor, "batch answer"]] = None,
) -> Float[Tensor, "variant prompt"]:
    """Slow edge patching: per edge set, each receiver's input is the sum, built by hand, of every
    preceding sender's output (its ablated output where the edge is ablated, at the edge's position or
    everywhere) plus the biases; one head at a time. For testing :func:`edge_patch` (same arguments)."""
    base_t, src_t, ref_t, metric, positions = _setup(model, base, source, intervention, metric, answers)
    fm = fast.split_weights(model)
    lay = graph_layout(model.spec)
    n, seq = base_t.shape
    H, G = fm.n_heads, fm.n_kv_heads
    pos_t = torch.arange(seq)
    # heads whose layer normalises the attention output before it joins the residual stream: sender -> layer
    post = {f"L{layer}H{h}": layer for layer, lw in enumerate(fm.layers) if lw.ln1_post is not None for h in range(H)}

    def run(tokens: Tensor, ablated: dict, abl_out: Optional[dict]):
        outs: dict[str, Tensor] = {"input": F_.embed(fm, tokens, 0)}
        biases: list[tuple[int, bool, Tensor]] = []  # (layer, is_mlp_bias, bias)

        def rebuild(receiver: str, layer: int, for_mlp: bool) -> Tensor:
            x = torch.zeros_like(outs["input"])
            normed: dict[int, Tensor] = {}  # post-norm layer -> its heads' sum (+ b_O), normalised below
            for s, out in outs.items():
                at = ablated.get((s, receiver))  # the positions where this edge is ablated
                o = out if at is None else torch.where(at[None, :, None], abl_out[s], out)
                if s in post:
                    normed[post[s]] = normed.get(post[s], 0) + o
                else:
                    x = x + o
            for bl, _, b in biases:
                if bl < layer or (bl == layer and for_mlp):
                    if bl in normed:
                        normed[bl] = normed[bl] + b
                    else:
                        x = x + b
            for bl, a in normed.items():
                x = x + F_.apply_norm(fm.layers[bl].ln1_post, a)
            return x

        for layer in range(fm.n_layers):
            lw = fm.layers[layer]
            zs = []
            kv_unit = (lambda h: f"H{h}") if G == H else (lambda h: f"G{h // (H // G)}")
            for h in range(H):
                g = h // (H // G)
                xq = F_.apply_norm(lw.ln1, rebuild(f"L{layer}H{h}.q", layer, False))
                xk = F_.apply_norm(lw.ln1, rebuild(f"L{layer}{kv_unit(h)}.k", layer, False))
                xv = F_.apply_norm(lw.ln1, rebuild(f"L{layer}{kv_unit(h)}.v", layer, False))
                # every head's query (every key/value head's key) from this head's input: q/k norms over all heads
                # (OLMo 2) then read this head's own; RoPE; keep head h (its key/value head g)
                q = torch.einsum("npd,hde->nphe", xq, lw.W_Q)
                k = torch.einsum("npd,gde->npge", xk, lw.W_K)
                v = xv @ lw.W_V[g]
                if lw.b_Q is not None:
                    q, k, v = q + lw.b_Q, k + lw.b_K, v + lw.b_V[g]
                q, k = F_.finish_qk(fm, layer, q, k, pos_t)
                q, k = q[:, :, h], k[:, :, g]
                scores = q @ k.transpose(1, 2) * fm.attn_scale
                if fm.attn_softcap is not None:  # Gemma 2
                    scores = torch.tanh(scores / fm.attn_softcap) * fm.attn_softcap
                if fm.causal:
                    i, j = torch.meshgrid(pos_t, pos_t, indexing="ij")
                    hidden = (j > i) | ((i - j >= lw.window) if lw.window is not None else False)
                    scores = scores.masked_fill(hidden, float("-inf"))
                zs.append(scores.softmax(-1) @ v)
            if fm.parallel and not fm.attn_only:  # the MLP reads what the heads read
                x = F_.apply_norm(lw.ln2, rebuild(f"L{layer}.mlp", layer, False))
                outs[f"L{layer}.mlp"] = _mlp_out(fm, layer, x)
            for h in range(H):
                outs[f"L{layer}H{h}"] = zs[h] @ lw.W_O[h]
            if lw.b_O is not None:
                biases.append((layer, False, lw.b_O))
            if not fm.attn_only and not fm.parallel:
                x = F_.apply_norm(lw.ln2, rebuild(f"L{layer}.mlp", layer, True))
                outs[f"L{layer}.mlp"] = _mlp_out(fm, layer, x)
        final = rebuild("logits", fm.n_layers, False)
        logits = F_.unembed(fm, final if positions is None else final[:, positions])
        return logits, outs

    with torch.inference_mode():
        clean_logits, base_out = run(base_t, {}, None)
        src_out = None if src_t is None else run(src_t, {}, None)[1]
        ref_out = None if ref_t is None else run(ref_t, {}, None)[1]
        abl_out = _ablated_outputs(intervention, base_out, src_out, ref_out)
        metric = metric.bind(clean_logits=clean_logits)
        rows = []
        for es in edge_sets:
            ablated: dict[tuple[str, str], Tensor] = {}
            for s_i, r_i, pos in [locate(lay, e, seq) for e in es]:  # validates
                key = (lay.sender_labels[s_i], lay.receiver_labels[r_i])
                at = ablated.setdefault(key, torch.zeros(seq, dtype=torch.bool))
                if pos is None:
                    at[:] = True
                else:
                    at[pos] = True
            logits, _ = run(base_t, ablated, abl_out)
            rows.append(metric(logits, torch.arange(n)).cpu())
    return torch.stack(rows)


def _mlp_out(fm: F_.FunctionalModel, layer: int, x: Tensor) -> Tensor:
    """An MLP's output as it joins the residual stream (after its post-norm, where the model has one)."""
    out = F_.mlp(fm, layer, x)
    post = fm.layers[layer].ln2_post
    return out if post is None else F_.apply_norm(post, out)


def _ablated_outputs(iv: Intervention, base_out: dict[str, Tensor], src_out: Optional[dict[str, Tensor]],
                     ref_out: Optional[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Each sender's ablated output, written out per kind of intervention."""
    if isinstance(iv, Replace):
        return src_out
    if isinstance(iv, Zero):
        return {s: torch.zeros_like(o) for s, o in base_out.items()}
    if isinstance(iv, Mean):
        over = base_out if ref_out is None else ref_out
        return {s: over[s].mean(0, keepdim=True).expand_as(o) for s, o in base_out.items()}
    if isinstance(iv, Interpolate):
        return {s: o + iv.alpha * (src_out[s] - o) for s, o in base_out.items()}
    pool = src_out if ref_out is None else ref_out  # Resample (the one kind left): a donor prompt's output
    n, n_pool = next(iter(base_out.values())).shape[0], next(iter(pool.values())).shape[0]
    donors = iv.donors(n, n_pool, same_pool=ref_out is None)
    return {s: pool[s][donors] for s in base_out}


__all__ = ["edge_patch_reference"]
