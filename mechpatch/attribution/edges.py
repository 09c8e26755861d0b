"""Edge attribution: EAP and EAP-IG scores for every edge of the circuit module's graph, in a few passes.

Ablating an edge (sender s -> receiver r, :mod:`mechpatch.circuit.edges`) changes only r's input, by
``out_s(ablated) - out_s(base run)``. **EAP** (Syed et al. 2023) estimates the metric change by the first-order term

    score(s, r) = sum over positions of  (out_s(ablated) - out_s(base)) . d metric / d input_r

with the gradient on the base run, averaged over prompts: the estimate of ``edge_patch(...) - base`` for that
one edge. The first factor is the change of ``input_r`` when that one edge is ablated; behind a post-attention norm
(Gemma 2/3, OLMo 2), where edge patching recomputes the norm (:mod:`mechpatch.circuit.edges`), it is
``post(heads(base) + out_s(ablated) - out_s(base)) - post(heads(base))``. All gradients come from one backward of a *split-input* forward: every receiver (each head's
query, key and value input, per key/value group in GQA models, each MLP and the logits) reads its own copy
of the residual stream, exactly as edge patching computes it, with a zero probe added whose gradient is
``d metric / d input_r``. Scores form a dense [sender, receiver] tensor in the edge layout's order, ready for
:class:`~mechpatch.circuit.graph.ComponentGraph`.

**EAP-IG** (Hanna et al. 2024) replaces the gradient by its average along a path from the base run to the
ablated one (``steps`` points ``k / steps``, k = 1..steps, as hannamw/EAP-IG uses them):

- ``ig="inputs"``: the input embeddings move from the base prompts' towards the ablated ones (what the
  ``intervention`` makes of them: the corrupted prompts', zero, the mean, ...) and every receiver's gradient is
  averaged over those points;
- ``ig="activations"``: for each sender stage (the embeddings, each layer's attention heads, each MLP) that
  stage's outputs move from base to ablated, and its edges use the receivers' gradient averaged along its own
  path (one batched pass per stage).

An example (a tiny random model; the estimate and the exact effect of the best-ranked edge):

>>> import torch
>>> from transformer_lens.config import TransformerBridgeConfig
>>> from mechpatch import load_model
>>> from mechpatch.circuit import edge_patch
>>> cfg = TransformerBridgeConfig(d_model=16, d_head=4, n_heads=2, n_layers=2, n_ctx=8, d_vocab=20,
...                               attn_only=True, seed=0)
>>> model = load_model(cfg, device="cpu")
>>> base, src, answers = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 5, 3, 6]]), torch.tensor([[7, 8]])
>>> eap = edge_attribution(model, base, metric="logit_diff", source=src, answers=answers)
>>> eap.scores.shape, eap.layout.n_edges  # 5 senders (input, 4 heads) x 13 receivers (12 q/k/v, logits)
(torch.Size([5, 13]), 29)
>>> edge = eap.ranked()[0]
>>> run = edge_patch(model, base, [[edge]], metric="logit_diff", source=src, answers=answers)
>>> est, exact = eap.edge_scores()[edge], float(run.values.mean() - run.base_values.mean())
>>> est * exact > 0  # the first-order estimate and the exact effect of the best-ranked edge agree in sign
True
"""

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechpatch.attribution.base import AttributionError, check_flag
from mechpatch.attribution.nodes import grad_ready
from mechpatch.cache import DEFAULT_MEMORY_BUDGET, GRADIENT_BUDGET_SHARE, parse_bytes
from mechpatch.circuit.components import Edge, GraphLayout, graph_layout
from mechpatch.circuit.edges import _setup as edge_setup
from mechpatch.errors import choices
from mechpatch.model import HookedModel
from mechpatch.patching import fast
from mechpatch.patching import functional as F_
from mechpatch.patching.interventions import Intervention, Mean, Replace, Resample, Zero, check_intervention, describe
from mechpatch.patching.metrics import KLDivergence, Metric, Readout, value_dtype

IG_MODES = ("inputs", "activations")


@dataclass(frozen=True)
class EdgeAttribution:
    """Estimated effect of ablating each edge: ``scores[sender, receiver]`` (prompt mean, metric units; 0 off-graph).

    A score estimates ``edge_patch(model, base, [[edge]], ...).values.mean() - base value``: negative where
    ablating the edge lowers the metric.
    """

    scores: Float[Tensor, "*pos sender receiver"]  # [pos, sender, receiver] with per_position
    layout: GraphLayout
    base_values: Float[Tensor, " prompt"]
    method: str  # "eap", "eap-ig-inputs", "eap-ig-activations"
    metric: str
    ablation: str  # the intervention, as :func:`~mechpatch.patching.interventions.describe` names it ("corrupted", ...)
    steps: int
    passes: int  # batched forward+backward passes
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_pos(self) -> Optional[int]:
        """Positions of position-resolved scores (``per_position=True``), else None."""
        return int(self.scores.shape[0]) if self.scores.ndim == 3 else None

    def edge_scores(self) -> dict[Edge, float]:
        """Every edge -> its score, in the layout's edge order (position-resolved: edges at each position,
        position-major as :class:`~mechpatch.circuit.components.GraphLayout` orders them)."""
        lay = graph_layout(self.layout.spec, self.n_pos)
        return dict(zip(lay.edges, self.scores.reshape(-1)[lay.flat_indices()].tolist()))

    def ranked(self, absolute: bool = True) -> list[Edge]:
        """Edges best first (by |score|, or by signed score with ``absolute=False``)."""
        scores = self.edge_scores()
        return sorted(scores, key=lambda e: abs(scores[e]) if absolute else scores[e], reverse=True)

    def graph(self, spec: Any, top_n: Optional[int] = None, model: str = "") -> Any:
        """A :class:`~mechpatch.circuit.graph.ComponentGraph` of these scores (circuit: the ``top_n`` best)."""
        from mechpatch.circuit.graph import ComponentGraph

        dense = self.scores.to(torch.float64).clone()
        dense[..., ~self.layout.valid] = math.nan
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
            raise AttributionError(f"top_n must be a non-negative int or None (every edge scored, none kept); "
                                   f"got {top_n!r}")
        circuit = None if top_n is None else self.ranked()[:top_n]
        meta = {"method": self.method, "metric": self.metric, "ablation": self.ablation, "steps": self.steps,
                **self.meta}
        return ComponentGraph(spec, dense, in_circuit=circuit, meta=meta, model=model, n_pos=self.n_pos)

    def __repr__(self) -> str:
        return (f"EdgeAttribution({self.method}: {self.layout.n_edges} edges, {self.metric}, ablation={self.ablation}, "
                f"{self.passes} passes, {self.seconds:.2f} s)")


# ----------------------------------------------------------------------------- the split-input forward


def _stages(fm: F_.FunctionalModel) -> list[tuple[str, int]]:
    """Sender stages in order: ("input", -1), then per layer ("attn", l) and ("mlp", l)."""
    out = [("input", -1)]
    for layer in range(fm.n_layers):
        out.append(("attn", layer))
        if not fm.attn_only:
            out.append(("mlp", layer))
    return out


def _split_forward(fm: F_.FunctionalModel, resid: Tensor, readout: Readout, probe: bool,
                   replace: Optional[dict[int, Tensor]] = None) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Readout logits, sender outputs [rows, pos, d_model] (layout order) and receiver-input probes.

    ``resid`` is the embedding (the ``input`` sender's output). With ``probe``, each receiver reads the residual
    stream plus its own zero probe [rows, unit, pos, d_model] (logits and MLPs: unit 1), so that the gradient
    of a probe is d metric / d that receiver's input. ``replace[stage]`` replaces a stage's outputs (heads:
    [rows, pos, head, d_model]; MLP: [rows, pos, d_model]) by given values.
    """
    R, S, D = resid.shape
    replace = replace or {}
    outs: list[Tensor] = [resid]
    probes: list[Tensor] = []

    def read(layer: int, kind: str, x: Tensor) -> Tensor:
        p = torch.zeros(x.shape, dtype=x.dtype, device=x.device, requires_grad=True)
        probes.append(p)
        return x + p

    def write(layer: int, kind: str, out: Tensor) -> Tensor:
        stage = 1 + (layer if fm.attn_only else 2 * layer + (kind == "mlp"))
        out = replace.get(stage, out)
        outs.extend([out[:, :, h] for h in range(fm.n_heads)] if kind == "heads" else [out])
        return out

    final = F_.run_split(fm, resid, read=read if probe else None, write=write)
    pos = readout.positions
    logits = F_.unembed(fm, final if pos is None else final[:, pos], readout.columns)
    return logits, outs, probes


def _stage_of_sender(lay: GraphLayout, fm: F_.FunctionalModel) -> list[int]:
    """Stage index (see :func:`_stages`) of each sender."""
    out = []
    for s, layer in zip(lay.senders, lay.sender_layer):
        if layer < 0:
            out.append(0)
        elif s.kind == "mlp":
            out.append(2 + 2 * layer)
        else:
            out.append(1 + (layer if fm.attn_only else 2 * layer))
    return out


def _setup(model: HookedModel, base: Any, source: Any, intervention: Any, metric: Any, answers: Any
           ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor], Metric, Readout]:
    base_t, src_t, ref_t, metric, positions = edge_setup(model, base, source, intervention, metric, answers,
                                                         AttributionError)
    return base_t, src_t, ref_t, metric, Readout(positions, metric.columns())


def edge_attribution(
    model: HookedModel,
    base: Union[Int[Tensor, "batch pos"], Sequence[str]],
    *,
    metric: Union[Metric, str, Callable],
    source: Union[Int[Tensor, "batch pos"], Sequence[str], None] = None,
    intervention: Intervention = Replace(),
    answers: Optional[Int[Tensor, "batch answer"]] = None,
    ig: Optional[str] = None,
    steps: int = 5,
    batch_size: Optional[int] = None,
    memory_budget: Union[int, str, None] = None,
    per_position: bool = False,
) -> EdgeAttribution:
    """EAP (``ig=None``) or EAP-IG (``ig="inputs"`` / ``"activations"``) scores of every edge.

    Args:
        model: a model the functional forward supports (``fast.VERIFIED_ARCHITECTURES``), as for edge patching.
        base: the prompts run (the clean ones, for circuit discovery).
        metric: a Metric or name; KL divergence compares with the unablated base run (as edge patching does).
        source, intervention, answers: as :func:`~mechpatch.circuit.edges.edge_patch` (the scores estimate
            ablating an edge with ``intervention``; ``Interpolate(a)`` scales them by ``a``).
        ig: None (plain EAP: gradient on the base run), "inputs" or "activations" (see the module docstring).
        steps: points of the integrated-gradient path (EAP-IG only).
        batch_size: rows per forward+backward (a row is one prompt at one path point); default from ``memory_budget``.
        memory_budget: transient memory for one pass (bytes or e.g. ``"1GiB"``; default
            :data:`~mechpatch.cache.DEFAULT_MEMORY_BUDGET` x :data:`~mechpatch.cache.GRADIENT_BUDGET_SHARE`).
        per_position: score each edge at each token position (scores ``[pos, sender, receiver]``, edges
            ``L0H2@3->L1H0.k@3``: the estimate of ablating the edge at that position only); the sum over
            positions is the unresolved score.

    Returns:
        :class:`EdgeAttribution`.
    """
    start = time.time()
    check_flag(per_position, "per_position")
    prepared = PreparedAttribution(model, base, metric=metric, source=source, intervention=intervention,
                                   answers=answers, ig=ig, steps=steps, batch_size=batch_size,
                                   memory_budget=memory_budget, per_position=per_position)
    return prepared.result([prepared.prompt_sums(0, prepared.n_prompts)], time.time() - start)


class PreparedAttribution:
    """An edge attribution ready to score any range of its prompts: what :func:`edge_attribution` computes in one go,
    cut by prompts so that several workers can each take a shard (:mod:`mechpatch.runs.discover`).

    Preparing checks the arguments and runs the base model once over every prompt (the base values that bind the
    metric, and the mean sender outputs for mean ablation); :meth:`prompt_sums` then scores prompts ``lo:hi`` (float64
    sums, not yet averaged) and :meth:`result` adds the shards' sums in the order given and averages. The same shards
    in the same order give the same scores bitwise, wherever each was computed; one shard of all prompts is
    :func:`edge_attribution` itself.
    """

    def __init__(self, model: HookedModel, base: Any, *, metric: Any, source: Any = None,
                 intervention: Intervention = Replace(), answers: Any = None, ig: Optional[str] = None,
                 steps: int = 5, batch_size: Optional[int] = None, memory_budget: Union[int, str, None] = None,
                 per_position: bool = False) -> None:
        _check_args(intervention, ig, steps, batch_size)
        reason, fm = fast.resolve(model)
        if reason is not None:
            raise AttributionError(
                f"edge attribution runs mechpatch's functional forward, which cannot run this model "
                f"({model.spec.architecture}): {reason}")
        base_t, src_t, ref_t, metric, readout = _setup(model, base, source, intervention, metric, answers)
        if ig is None and isinstance(metric, KLDivergence):
            raise AttributionError(
                "KL divergence to the base run is at its minimum there: its gradient is zero, so plain EAP scores "
                "every edge 0; use EAP-IG (ig='inputs' or 'activations'), or a task metric such as logit_diff")
        self.model, self.lay, self.ig, self.steps, self.per_position = model, graph_layout(model.spec), ig, steps, \
            per_position
        self.intervention, self.base_t = intervention, base_t
        self.n_prompts = base_t.shape[0]
        if batch_size is None:
            budget = parse_bytes(memory_budget) or int(DEFAULT_MEMORY_BUDGET * GRADIENT_BUDGET_SHARE)
            batch_size = max(1, budget // _row_bytes(model, self.lay, base_t.shape[1]))
        self.run = _Passes(grad_ready(fm), self.lay, readout, metric, batch_size, model.dtype)
        # prompts go a chunk at a time (memory does not grow with them); the base run's logits first (what KL
        # divergence compares with) and, for mean ablation, the mean sender outputs
        self.chunk = max(1, batch_size // (1 if ig is None else steps))
        self.base_values, out_mean = self.run.base_run(base_t, self.chunk,
                                                       mean=isinstance(intervention, Mean) and ref_t is None)
        self.ablated = _Ablated(self.run, intervention, src_t, ref_t, out_mean, self.n_prompts, self.chunk)

    def prompt_sums(self, lo: int, hi: int) -> dict[str, Tensor]:
        """Prompts ``lo:hi``'s scores summed over the prompts, float64 ``[pos, sender, receiver]`` with
        ``per_position``, else summed over positions too (``"scores"``), and the forward+backward passes they took
        (``"passes"``), on the CPU."""
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo < hi <= self.n_prompts):
            raise AttributionError(f"prompt range {lo}:{hi} is not a non-empty range of the {self.n_prompts} prompts")
        run, ig, dev = self.run, self.ig, self.base_t.device
        passes = run.passes
        alphas = [k / self.steps for k in range(1, self.steps + 1)]
        scores = torch.zeros(self.base_t.shape[1], len(self.lay.senders), len(self.lay.receivers), dtype=torch.float64,
                             device=dev)
        for start in range(lo, hi, self.chunk):
            idx = torch.arange(start, min(hi, start + self.chunk), device=dev)
            emb, base_out, _ = run.outputs(self.base_t[idx])
            delta = self.ablated.delta(idx, base_out)
            d = run.input_change(base_out, delta).to(torch.float64)
            if ig != "activations":
                g = run.grads(idx, emb, base_out, delta, None if ig is None else alphas, None if ig is None else 0)
                scores += torch.einsum("nspd,nrpd->psr", d, g)
            else:
                for st in range(len(_stages(run.fm))):
                    ids = torch.nonzero(run.stage_of == st).flatten()
                    g = run.grads(idx, emb, base_out, delta, alphas, st)
                    scores[:, ids] += torch.einsum("nspd,nrpd->psr", d[:, ids], g)
        scores = scores if self.per_position else scores.sum(0)
        return {"scores": scores.cpu(), "passes": torch.tensor([run.passes - passes])}

    def result(self, parts: Sequence[dict[str, Tensor]], seconds: float) -> EdgeAttribution:
        """The attribution from :meth:`prompt_sums` of shards covering every prompt once (added in the order
        given), its time ``seconds``."""
        total = parts[0]["scores"].clone()
        for part in parts[1:]:
            total += part["scores"]
        # float64 sums, reported in the model's precision (float64 stays float64; see metrics.value_dtype)
        scores = (total / self.n_prompts).to(value_dtype(self.model.dtype)) * self.lay.valid
        method = "eap" if self.ig is None else f"eap-ig-{self.ig}"
        return EdgeAttribution(scores, self.lay, self.base_values, method, self.run.metric.name,
                               describe(self.intervention), 1 if self.ig is None else self.steps,
                               sum(int(p["passes"][0]) for p in parts), seconds)


def _check_args(intervention: object, ig: Optional[str], steps: Any, batch_size: Any) -> None:
    check_intervention(intervention, AttributionError)
    if ig is not None and ig not in IG_MODES:
        raise AttributionError(f"unknown ig mode {ig!r}; valid: None (plain EAP), {choices(IG_MODES)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise AttributionError(f"steps must be a positive int; got {steps!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise AttributionError(f"batch_size must be a positive int or None; got {batch_size!r}")


def _row_bytes(model: HookedModel, lay: GraphLayout, seq: int) -> int:
    """Transient memory of one row (a prompt at one path point) of a forward+backward pass."""
    s = model.spec
    elem = torch.tensor([], dtype=model.dtype).element_size()
    n_s, n_r = len(lay.senders), len(lay.receivers)
    return seq * s.d_model * elem * (4 * n_r + 2 * n_s + 6 * s.n_layers * (s.n_heads + 2 * s.n_kv_heads)) \
        + seq * seq * s.n_heads * s.n_layers * elem * 4 + seq * s.d_vocab * elem * 2


class _Passes:
    """The forwards and backwards of one edge attribution, counted."""

    def __init__(self, fm: F_.FunctionalModel, lay: GraphLayout, readout: Readout, metric: Metric, batch_size: int,
                 dtype: torch.dtype) -> None:
        self.fm, self.lay, self.readout, self.metric = fm, lay, readout, metric
        self.batch_size, self.dtype, self.passes = batch_size, dtype, 0
        self.stage_of = torch.tensor(_stage_of_sender(lay, fm))
        self.layer_heads = {1 + (l if fm.attn_only else 2 * l) for l in range(fm.n_layers)}
        # per layer, the sender indices of its heads
        self.layer_ids = {l: torch.tensor([i for i, (s, sl) in enumerate(zip(lay.senders, lay.sender_layer))
                                           if sl == l and s.kind == "head"]) for l in range(fm.n_layers)}

    def outputs(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Embeddings, sender outputs [rows, sender, pos, d_model] and readout logits of an unablated run."""
        with torch.no_grad():
            e = F_.embed(self.fm, tokens, 0)
            logits, outs, _ = _split_forward(self.fm, e, self.readout, probe=False)
        return e, torch.stack(outs, 1), logits

    def input_change(self, base_out: Tensor, delta: Tensor) -> Tensor:
        """Per sender, how its receivers' inputs change when it alone is ablated [prompt, sender, pos, d_model]: its
        output's change ``delta``, except behind a post-attention norm (Gemma, OLMo 2), where a head's change goes
        through the norm with the rest of its layer's heads at their base outputs."""
        out = delta.clone()
        for layer, lw in enumerate(self.fm.layers):
            if lw.ln1_post is None:
                continue
            ids = self.layer_ids[layer]
            heads = base_out[:, ids].sum(1, keepdim=True)  # [prompt, 1, pos, d_model]
            both = F_.post_attention(self.fm, layer, torch.stack([heads.expand_as(delta[:, ids]),
                                                                  heads + delta[:, ids]]))
            out[:, ids] = both[1] - both[0]
        return out

    def base_run(self, base_t: Tensor, chunk: int, mean: bool) -> tuple[Tensor, Optional[Tensor]]:
        """The base values (binding the metric to the base logits) and, with ``mean``, the mean sender outputs."""
        n = base_t.shape[0]
        logit_parts, out_sum = [], None
        for lo in range(0, n, chunk):
            _, outs, logits = self.outputs(base_t[lo:lo + chunk])
            logit_parts.append(logits)
            if mean:
                part = outs.sum(0, keepdim=True)
                out_sum = part if out_sum is None else out_sum + part
        base_logits = torch.cat(logit_parts)
        self.metric = self.metric.bind(clean_logits=base_logits)
        if self.readout.columns is not None:
            self.metric = self.metric.restrict(self.readout.columns)
        base_values = self.metric(base_logits, torch.arange(n, device=base_t.device)).cpu()
        return base_values, (None if out_sum is None else out_sum / n)

    def grads(self, idx: Tensor, emb: Tensor, base_out: Tensor, delta: Tensor, alpha: Optional[list[float]],
              stage: Optional[int]) -> Tensor:
        """Receiver-input gradients [len(idx), receiver, pos, d_model] of the prompts ``idx`` (whose embeddings,
        sender outputs and output changes are given), averaged over the path points ``alpha`` (None: the base run
        itself), with ``stage``'s outputs on the path."""
        points = [None] if alpha is None else alpha
        n_r, seq, D = len(self.lay.receivers), emb.shape[1], self.fm.d_model
        total = torch.zeros(len(idx), n_r, seq, D, dtype=torch.float64, device=emb.device)
        per_pass = max(1, self.batch_size // len(idx))
        for lo in range(0, len(points), per_pass):
            pts = points[lo:lo + per_pass]
            rows_prompt = idx.repeat(len(pts))
            local = torch.arange(len(idx), device=emb.device).repeat(len(pts))
            a = torch.tensor([0.0 if p is None else p for p in pts], dtype=self.dtype,
                             device=emb.device).repeat_interleave(len(idx))
            resid = emb[local]
            replace: dict[int, Tensor] = {}
            if stage == 0:
                resid = resid + a[:, None, None] * delta[local, 0]
            elif stage is not None:
                ids = torch.nonzero(self.stage_of == stage).flatten()
                vals = base_out[local][:, ids] + a[:, None, None, None] * delta[local][:, ids]
                replace[stage] = vals.permute(0, 2, 1, 3) if stage in self.layer_heads else vals[:, 0]
            with torch.enable_grad():
                logits, _, probes = _split_forward(self.fm, resid, self.readout, probe=True, replace=replace)
                value = self.metric(logits, rows_prompt).sum()
                grads = torch.autograd.grad(value, probes, allow_unused=True)
            self.passes += 1
            g = torch.cat([torch.zeros_like(p) if gr is None else gr for p, gr in zip(probes, grads)], 1)
            total += g.reshape(len(pts), len(idx), n_r, seq, D).to(torch.float64).sum(0)
        return total / len(points)


class _Ablated:
    """What ``intervention`` makes of the sender outputs, per chunk of prompts: ``delta(idx, base_out)`` is the
    ablated minus the base run's outputs [prompt, sender, pos, d_model] of prompts ``idx``."""

    def __init__(self, run: "_Passes", intervention: Intervention, src_t: Optional[Tensor], ref_t: Optional[Tensor],
                 out_mean: Optional[Tensor], n: int, chunk: int) -> None:
        self.run, self.iv, self.src_t, self.out_mean = run, intervention, src_t, out_mean
        self.pool, self.donors = src_t, None
        if isinstance(intervention, Mean) and ref_t is not None:  # the mean over the reference prompts
            self.out_mean = sum(run.outputs(ref_t[lo:lo + chunk])[1].sum(0, keepdim=True)
                                for lo in range(0, ref_t.shape[0], chunk)) / ref_t.shape[0]
        if isinstance(intervention, Resample):  # each prompt's donor, from the source run or the reference prompts
            self.pool = src_t if ref_t is None else ref_t
            self.donors = intervention.donors(n, self.pool.shape[0], same_pool=ref_t is None).to(self.pool.device)

    def delta(self, idx: Tensor, base_out: Tensor) -> Tensor:
        iv = self.iv
        if isinstance(iv, Zero):
            src_out = torch.zeros_like(base_out)
        elif isinstance(iv, Mean):
            src_out = self.out_mean.expand_as(base_out)
        elif isinstance(iv, Resample):
            src_out = self.run.outputs(self.pool[self.donors[idx]])[1]
        else:  # Replace, Interpolate: the source run's
            src_out = self.run.outputs(self.src_t[idx])[1]
        return src_out - base_out if iv.alpha == 1.0 else iv.alpha * (src_out - base_out)


__all__ = ["IG_MODES", "EdgeAttribution", "PreparedAttribution", "edge_attribution"]
