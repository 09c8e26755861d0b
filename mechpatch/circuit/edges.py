"""Exact edge patching: many sets of ablated edges per forward pass, each a batch row.

An edge is sender -> receiver input: ``input`` (the embeddings), a head's output (``L3H1``) or an
MLP's output (``L3.mlp``) into a head's query, key or value input (``L5H2.q``, ``L5H2.k``; GQA models
have one key/value input per group: ``L5G0.k``), an MLP's input (``L5.mlp``) or the ``logits`` (the
final residual stream). Ablating an edge changes only that receiver's input: it sees the sender's
*ablated* output instead of its output in the current run, exactly as ACDC and MIB define it:

    input_r = resid_r - sum over ablated (s, r) of (out_s(current run) - out_s(ablated))

Where a norm sits between the attention's head sum and the residual stream (Gemma 2/3, OLMo 2), a head's output is
taken before that norm and the heads of one layer do not add into the stream; there, for each such layer, the
receiver reads the norm recomputed on the layer's heads with its ablated edges' heads swapped in:

    input_r = resid_r - post_L(sum_h out_h + b_O) + post_L(sum_h [out_h, or its ablated output if (h, r) is ablated] + b_O)

(an MLP's output is taken after its own post-norm, so MLP senders stay additive).

The ablated output is what the ``intervention`` (:mod:`mechpatch.patching.interventions`) makes of the sender's
output: ``Replace()`` its output on the ``source`` prompts (the corrupted run), ``Zero()``, ``Mean()`` its mean
over the base prompts (``Mean(reference=tokens)``: over those prompts), ``Resample(seed)`` a donor prompt's output
(drawn from the source run, or from the reference prompts), ``Interpolate(a)`` the current output moved ``a`` of
the way to its ``Replace`` value. :class:`EdgeRunner` holds the unablated base run and these ablated outputs; a
:func:`make_runner` prepares it once for many :func:`edge_patch` calls (``prepared=``).

The residual stream itself is not changed, so components downstream see every change through the
receivers they read from. Rows of one chunk start at the earliest layer any of their edges enters,
from the base run's cached residual stream and sender outputs (nothing before can change).

:func:`mechpatch.circuit.reference.edge_patch_reference` is the slow, obvious version for the tests: per edge set, every receiver's
input is rebuilt by hand as the sum of its senders' outputs (current or ablated, one head at a time)
plus the biases.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechpatch._progress import progress_bar
from mechpatch.cache import as_tokens
from mechpatch.circuit.components import CircuitError, EdgeLike, GraphLayout, as_edge, graph_layout
from mechpatch.errors import EmptyInputError, MechpatchError, ShapeMismatchError
from mechpatch.model import HookedModel
from mechpatch.patching import fast
from mechpatch.patching import functional as F_
from mechpatch.patching.interventions import Intervention, Replace, check_intervention, needs_source
from mechpatch.patching.metrics import Metric, Readout, as_metric, readout_positions
from mechpatch.prompts import bind_prompts


class EdgeError(CircuitError):
    """An unknown edge, a sender that does not precede its receiver, or a bad intervention setting."""


def locate(lay: GraphLayout, edge: EdgeLike, n_pos: Optional[int] = None) -> tuple[int, int, Optional[int]]:
    """(sender index, receiver index, position or None) of ``edge`` in ``lay``; a bad edge raises :class:`EdgeError`
    naming it (``n_pos``: the prompts' length, which a position must be below)."""
    try:
        e = as_edge(edge)
    except (MechpatchError, TypeError) as exc:
        raise EdgeError(str(exc)) from exc
    try:
        lay.sender_index(e.sender.at(None))
    except MechpatchError as exc:
        raise EdgeError(f"{e.label}: unknown sender {e.sender.base_label!r}: {exc}") from exc
    try:
        s, r, pos = lay.locate(e)
    except MechpatchError as exc:
        raise EdgeError(f"{e.label}: unknown receiver {e.receiver.port_label(e.input)!r}: {exc}") from exc
    if pos is not None and n_pos is not None and pos >= n_pos:
        raise EdgeError(f"{e.label}: position {pos} is out of range for prompts of {n_pos} tokens "
                        f"(valid: 0..{n_pos - 1})")
    return s, r, pos


def edge_masks(lay: GraphLayout, edge_sets: Sequence[Sequence[EdgeLike]], n_pos: int
               ) -> Union[Bool[Tensor, "variant sender receiver"], Bool[Tensor, "variant pos sender receiver"]]:
    """Sets of edges as masks [variant, sender, receiver] of ``lay``, or [variant, pos, sender, receiver] over prompts
    of ``n_pos`` tokens when any edge is position-resolved (marked at its position only; the others at every one)."""
    located = [[locate(lay, e, n_pos) for e in es] for es in edge_sets]
    resolved = any(pos is not None for es in located for _, _, pos in es)
    m = torch.zeros(len(located), *((n_pos,) if resolved else ()), *lay.valid.shape, dtype=torch.bool)
    for v, es in enumerate(located):
        for s, r, pos in es:
            if resolved:
                m[v, slice(None) if pos is None else pos, s, r] = True
            else:
                m[v, s, r] = True
    return m


@dataclass(frozen=True)
class EdgeRun:
    """Metric values per edge set and prompt, with the unablated baseline."""

    values: Float[Tensor, "variant prompt"]
    base_values: Float[Tensor, " prompt"]
    forwards: int  # batched forward passes run (chunks), not counting the unablated runs


# ----------------------------------------------------------------------------- the batched forward


class EdgeRunner:
    """The unablated base run and the ablated sender outputs of one edge-patching setting, prepared once.

    :func:`make_runner` builds it: one unablated forward of the base prompts (cached residual stream, sender outputs
    and logits) and, where the intervention reads them, one of the source or reference prompts; the ablated output
    of every sender follows (see the module docstring). :func:`edge_patch` and
    :func:`~mechpatch.circuit.faithfulness.circuit_metric` take it as ``prepared=`` to evaluate many sets of edges
    without running those forwards again (ACDC, EAP's verification and the faithfulness curve do).

    Attributes:
        base: the base prompts' tokens [prompt, pos]; ``n``: their count.
        intervention: what an ablated edge carries.
        metric: the metric, bound to its answers and to the unablated base run's logits.
        base_values: the metric on the unablated base run, per prompt.
        lay: the :class:`~mechpatch.circuit.components.GraphLayout` the masks are read in.
    """

    def __init__(self, model: HookedModel, lay: GraphLayout, base: Tensor, source: Optional[Tensor],
                 reference: Optional[Tensor], intervention: Intervention, metric: Metric, readout: Readout) -> None:
        self.fm = fast.split_weights(model)
        self.lay, self.base, self.metric, self.readout = lay, base, metric, readout
        self.intervention = intervention
        # per sender: the layer whose post-attention norm its output goes through (Gemma, OLMo 2 heads), else None
        self.renorm = [layer if s.kind == "head" and self.fm.layers[layer].ln1_post is not None else None
                       for s, layer in zip(lay.senders, lay.sender_layer)]
        n = base.shape[0]
        self.n = n
        rows = torch.arange(n, device=base.device)
        self.base_attn: dict[int, Tensor] = {}  # post-norm layers: the base run's sum of head outputs
        logits, base_out, resid = self.forward(base, rows, None, start=0, keep=True, attn_sums=self.base_attn)
        self.base_logits, self.base_out, self.base_resid = logits, base_out, resid
        self.base_values: Optional[Tensor] = None  # set by make_runner, once the metric is bound to the base run
        self.src_out = self._ablated(base_out, source, reference)  # per sender [prompt, pos, d_model]
        self._exact_sums()

    def _unablated(self, tokens: Tensor) -> list[Tensor]:
        """Every sender's output [prompt, pos, d_model] on an unablated run of ``tokens``."""
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        return self.forward(tokens, rows, None, start=0, keep=True)[1]

    def _ablated(self, base_out: list[Tensor], source: Optional[Tensor], reference: Optional[Tensor]) -> list[Tensor]:
        """Every sender's ablated output: the intervention's value from the base run's output, the source run's
        (``other``) and the reference run's, then moved ``alpha`` of the way there (Interpolate)."""
        iv = self.intervention
        other = None if source is None else self._unablated(source)
        ref = None if reference is None else self._unablated(reference)
        out = [iv.source(b if other is None else other[i], b, None if ref is None else ref[i]).to(b.dtype)
               for i, b in enumerate(base_out)]
        if iv.alpha != 1.0:  # partial ablation: the sender output moved alpha of the way to its ablated value
            out = [b + iv.alpha * (a - b) for b, a in zip(base_out, out)]
        return out

    def _exact_sums(self) -> None:
        """A receiver with every incoming edge ablated reads only ablated outputs (+ biases). Computing that as
        resid - sum(current - ablated) leaves rounding residue that a norm would blow up (LN/RMS of ~1e-7
        noise is O(1)); such receivers get the exact sum instead, prepared here per receiver stage."""
        fm, lay, src_out = self.fm, self.lay, self.src_out
        total = torch.zeros_like(src_out[0])
        self.src_sum: dict[tuple[int, bool], Tensor] = {}
        for layer in range(fm.n_layers + 1):
            for s_i, s_layer in enumerate(lay.sender_layer):
                if s_layer == layer - 1 and lay.senders[s_i].kind == "mlp" or (layer == 0 and s_i == 0):
                    total = total + src_out[s_i]
            self.src_sum[(layer, False)] = total.clone()  # receivers of layer `layer`'s heads (or logits)
            if layer < fm.n_layers:
                heads = sum(src_out[i] for i, sl in enumerate(lay.sender_layer)
                            if sl == layer and lay.senders[i].kind == "head")
                before = total
                total = total + F_.post_attention(fm, layer, heads)
                # the same layer's MLP input (in a parallel block, the heads' input)
                self.src_sum[(layer, True)] = (before if fm.parallel else total).clone()
        self.n_in = lay.valid.sum(0)  # senders per receiver

    def forward(self, tokens: Tensor, rows_prompt: Tensor, mask: Optional[Tensor], start: int, keep: bool = False,
                attn_sums: Optional[dict[int, Tensor]] = None):
        """Logits (readout) of rows ``mask[row, sender, receiver]`` starting at layer ``start``.

        With ``keep``, also every sender's output and each layer's input residual (unablated runs only); ``attn_sums``
        collects the sum of the heads' outputs of each post-norm layer.
        """
        fm, lay = self.fm, self.lay
        n_s = len(lay.senders)
        cur: list[Optional[Tensor]] = [None] * n_s
        attn = {} if attn_sums is None else attn_sums  # post-norm layer -> current sum of its heads' outputs
        if start == 0:
            resid = F_.embed(fm, tokens[rows_prompt], 0)
            cur[0] = resid
        else:
            resid = self.base_resid[start][rows_prompt]
            for s in range(n_s):
                if lay.sender_layer[s] < start:
                    cur[s] = self.base_out[s][rows_prompt]
            attn.update({layer: a[rows_prompt] for layer, a in self.base_attn.items() if layer < start})

        def inputs(r_slice: slice, stage: tuple[int, bool], x: Tensor) -> Optional[Tensor]:
            """Receiver inputs [R, unit, pos, D] for receivers ``r_slice`` from the residual ``x`` [R, unit, pos, D]:
            minus (current - ablated) output of every ablated sender (None: no edge into them is ablated)."""
            m = mask[..., r_slice]  # R sender unit, or R pos sender unit (position-resolved)
            per_pos = m.ndim == 4
            active = torch.nonzero(m.reshape(-1, *m.shape[-2:]).any(0).any(-1)).flatten().tolist()
            if not active:
                return None
            groups: dict[Optional[int], list[int]] = {}  # None: senders that add into the stream; else post-norm layer
            for s in active:
                groups.setdefault(self.renorm[s], []).append(s)
            for layer, ids in groups.items():
                diff = torch.stack([cur[s] - self.src_out[s][rows_prompt] for s in ids], 1)  # R A pos D
                ms = m[:, :, ids] if per_pos else m[:, ids]
                d = torch.einsum("rapd,rpac->rcpd" if per_pos else "rapd,rac->rcpd", diff, ms.to(diff.dtype))
                x = x - d if layer is None else x + self._renormed_change(layer, attn[layer], d, ms)
            if per_pos:
                full = (m.sum(2) == self.n_in[r_slice].to(m.device)).transpose(1, 2)[..., None]  # R unit pos 1
            else:
                full = (m.sum(1) == self.n_in[r_slice].to(m.device))[:, :, None, None]  # R unit: all ablated
            if full.any():
                exact = self.src_sum[stage][rows_prompt][:, None].expand_as(x)
                x = torch.where(full, exact, x)
            return x

        def read(layer: int, kind: str, x: Tensor) -> Optional[Tensor]:
            return inputs(lay.receiver_span(layer, kind), (layer, kind == "mlp"), x)

        def write(layer: int, kind: str, out: Tensor) -> Tensor:
            if kind == "heads":
                for h, s in enumerate(range(*lay.sender_span(layer, "head").indices(n_s))):
                    cur[s] = out[:, :, h]
                if fm.layers[layer].ln1_post is not None:
                    attn[layer] = out.sum(2)
            else:
                cur[lay.sender_span(layer, "mlp").start] = out
            return out

        resid_keep: Optional[list[Tensor]] = [] if keep else None
        final = F_.run_split(fm, resid, start=start, read=None if mask is None else read, write=write,
                             trace=resid_keep)
        pos = self.readout.positions
        logits = F_.unembed(fm, final if pos is None else final[:, pos], self.readout.columns)
        if keep:
            return logits, [c.detach() for c in cur], resid_keep
        return logits, None, None


    def _renormed_change(self, layer: int, heads: Tensor, d: Tensor, ms: Tensor) -> Tensor:
        """How a receiver's input changes when the heads of post-norm ``layer`` whose edges into it are ablated
        carry their ablated outputs: the attention's contribution recomputed through the norm, minus the current
        one. ``heads`` [R, pos, D]: the current sum of the layer's head outputs; ``d`` [R, unit, pos, D]: per
        receiver unit, the sum of (current - ablated) outputs of its ablated heads; ``ms``: their masks (units with
        no ablated head of the layer change by exactly 0)."""
        a = heads[:, None].expand_as(d)
        both = F_.post_attention(self.fm, layer, torch.stack([a, a - d]))  # one norm call: same rounding for both
        change = both[1] - both[0]
        hit = ms.any(2).transpose(1, 2)[..., None] if ms.ndim == 4 else ms.any(1)[:, :, None, None]
        return torch.where(hit, change, torch.zeros((), dtype=change.dtype, device=change.device))


def _as_masks(lay: GraphLayout, edge_sets, n_pos: int) -> Union[Bool[Tensor, "variant sender receiver"],
                                                                Bool[Tensor, "variant pos sender receiver"]]:
    """Edge sets as masks: [variant, sender, receiver], or [variant, pos, sender, receiver] when any edge is
    position-resolved (labels with ``@p``, or 4-d tensors)."""
    S, R = lay.valid.shape
    if isinstance(edge_sets, Tensor):
        m = edge_sets.bool()
        if m.ndim not in (3, 4) or m.shape[-2:] != (S, R) or (m.ndim == 4 and m.shape[1] != n_pos):
            raise ShapeMismatchError(
                f"edge masks must be [variant, {S}, {R}] or, position-resolved, [variant, {n_pos} (prompt "
                f"length), {S}, {R}]; got {tuple(m.shape)}")
        if (m & ~lay.valid).any():
            raise EdgeError("the masks mark sender/receiver pairs that are not edges (sender after receiver)")
        return m
    sets = [list(s) for s in edge_sets]
    if not sets:
        return torch.zeros(0, S, R, dtype=torch.bool)
    return edge_masks(lay, sets, n_pos)


def _setup(model: HookedModel, base: object, source: object, intervention: object, metric: object, answers: object,
           error: type[MechpatchError] = EdgeError
           ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor], Metric, Optional[list[int]]]:
    """Tokens of the base, source and reference runs (None where the intervention reads none), the bound metric and
    the positions it reads; bad arguments raise ``error`` (the caller's error type)."""
    intervention = check_intervention(intervention, error)
    base_t = as_tokens(model, base)
    src_t = ref_t = None
    if needs_source(intervention):
        if source is None:
            raise error(f"intervention {intervention!r} needs source tokens (source=: the corrupted prompts); "
                        "Zero() and Mean() need none")
        src_t = as_tokens(model, source)
        if src_t.shape != base_t.shape:
            raise ShapeMismatchError(f"source tokens {tuple(src_t.shape)} and base {tuple(base_t.shape)} must align")
    if getattr(intervention, "reference", None) is not None:
        ref_t = as_tokens(model, intervention.reference)
        if ref_t.shape[1] != base_t.shape[1]:
            raise ShapeMismatchError(
                f"{type(intervention).__name__} reference prompts have {ref_t.shape[1]} tokens; the base prompts have "
                f"{base_t.shape[1]}: positions must align")
    metric = as_metric(metric)
    positions = readout_positions(metric, base_t.shape[1])
    metric = bind_prompts(model, metric, answers, base_t)
    return base_t, src_t, ref_t, metric, positions


def edge_patch(
    model: HookedModel,
    base: Union[Int[Tensor, "batch pos"], Sequence[str]],
    edge_sets: Union[Sequence[Sequence[EdgeLike]], Bool[Tensor, "variant sender receiver"],
                     Bool[Tensor, "variant pos sender receiver"]],
    *,
    metric: Union[Metric, str],
    source: Union[Int[Tensor, "batch pos"], Sequence[str], None] = None,
    intervention: Intervention = Replace(),
    answers: Optional[Int[Tensor, "batch answer"]] = None,
    batch_size: int = 32,
    progress: Optional[bool] = None,
    prepared: Optional[EdgeRunner] = None,
) -> EdgeRun:
    """The metric with each set of edges ablated (one set per row), on the ``base`` prompts.

    Args:
        model: a model the fast path supports (``fast.VERIFIED_ARCHITECTURES``: every dtype it checks).
        base: the prompts run (the clean ones, for circuit discovery).
        edge_sets: per variant, the ablated edges: :class:`~mechpatch.circuit.components.Edge` values, labels
            ``"s->r"`` or (sender, receiver) label pairs; or boolean masks [variant, sender, receiver] in
            ``graph_layout(model.spec)`` order. Position-resolved edges (``"L0H2@3->L1H0.k@3"``, or masks
            [variant, pos, sender, receiver] over the prompt's positions) are ablated at that position only: the
            receiver reads the sender's ablated output there and its current output elsewhere. An edge without
            positions is ablated at every position.
        metric: a Metric or name; KL divergence compares with the unablated base run.
        source: the corrupted prompts (for ``Replace()``, ``Interpolate(a)`` and ``Resample()`` without reference).
        intervention: what an ablated edge carries (see the module docstring): ``Replace()`` (the sender's output
            on ``source``), ``Zero()``, ``Mean()`` (over the base prompts, or ``Mean(reference=tokens)``),
            ``Resample(seed)``, or ``Interpolate(a)`` (the sender's output moved ``a`` of the way towards its
            ``source`` value: small ``a`` gives the first-order regime that edge attribution approximates;
            ``Interpolate(a, extrapolate=True)`` for ``a`` outside [0, 1]).
        batch_size: edge sets per forward pass (each with every prompt).
        prepared: an :class:`EdgeRunner` from :func:`make_runner` (its base run and intervention apply; the other
            run arguments are ignored).

    Returns:
        :class:`EdgeRun` with ``values[variant, prompt]``.
    """
    check_intervention(intervention, EdgeError)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EdgeError(f"batch_size must be a positive int; got {batch_size!r}")
    if prepared is not None and not isinstance(prepared, EdgeRunner):
        raise EdgeError(f"prepared must be an EdgeRunner from make_runner; got {type(prepared).__name__}")
    if (edge_sets.shape[0] if isinstance(edge_sets, Tensor) else len(edge_sets)) == 0:
        raise EmptyInputError("no edge sets given: give at least one set of edges to ablate (an empty set, [[]], "
                              "is the unablated run)")
    lay = graph_layout(model.spec)
    # check the edge sets against the prompts before running anything
    n_pos = prepared.base.shape[1] if prepared is not None else as_tokens(model, base).shape[1]
    masks = _as_masks(lay, edge_sets, n_pos)
    runner = prepared if prepared is not None else make_runner(model, base, metric=metric, source=source,
                                                               intervention=intervention, answers=answers)
    masks = masks.to(runner.base.device)
    n = runner.n
    values = torch.empty(masks.shape[0], n, dtype=runner.base_values.dtype)  # the model's precision
    # rows start at the earliest layer any of their edges enters; order chunks by it
    rl = torch.tensor(lay.receiver_layer)
    starts = [int(rl[m.reshape(-1, m.shape[-1]).any(0).cpu()].min()) if m.any() else model.spec.n_layers
              for m in masks]
    order = sorted(range(len(masks)), key=lambda v: starts[v])
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    prompt = torch.arange(n, device=runner.base.device)
    for chunk in progress_bar(chunks, desc="edge patching", unit="chunk",
                              enabled=progress if progress is not None else len(chunks) > 1):
        k = len(chunk)
        rows_prompt = prompt.repeat(k)
        m = masks[chunk].repeat_interleave(n, dim=0)
        start = min(min(starts[v] for v in chunk), model.spec.n_layers - 1)
        with torch.inference_mode():
            logits, _, _ = runner.forward(runner.base, rows_prompt, m, start)
            values[chunk] = runner.metric(logits, rows_prompt).reshape(k, n).cpu()
    return EdgeRun(values, runner.base_values, len(chunks))


def make_runner(
    model: HookedModel,
    base: Union[Int[Tensor, "batch pos"], Sequence[str]],
    *,
    metric: Union[Metric, str],
    source: Union[Int[Tensor, "batch pos"], Sequence[str], None] = None,
    intervention: Intervention = Replace(),
    answers: Optional[Int[Tensor, "batch answer"]] = None,
) -> EdgeRunner:
    """Run the unablated base run and the ablated sender outputs once, for many :func:`edge_patch` and
    :func:`~mechpatch.circuit.faithfulness.circuit_metric` calls (their ``prepared=``); arguments as
    :func:`edge_patch`.

    >>> import torch
    >>> from mechpatch import zoo
    >>> from mechpatch.patching import Zero
    >>> model = zoo.load("induction-2l")
    >>> base = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(0))
    >>> prepared = make_runner(model, base, metric="loss", intervention=Zero())
    >>> edges = ("L0H0->logits", "L1H1->logits")
    >>> runs = [edge_patch(model, base, [[e]], metric="loss", prepared=prepared) for e in edges]
    >>> [tuple(r.values.shape) for r in runs], runs[0].base_values is prepared.base_values  # one base run for both
    ([(1, 2), (1, 2)], True)
    """
    base_t, src_t, ref_t, metric, positions = _setup(model, base, source, intervention, metric, answers)
    readout = Readout(positions, None)
    with torch.inference_mode():
        runner = EdgeRunner(model, graph_layout(model.spec), base_t, src_t, ref_t, intervention, metric, readout)
        prompt = torch.arange(base_t.shape[0], device=base_t.device)
        runner.metric = metric.bind(clean_logits=runner.base_logits)
        runner.base_values = runner.metric(runner.base_logits, prompt).cpu()
    return runner


__all__ = ["EdgeError", "EdgeRun", "EdgeRunner", "edge_masks", "edge_patch", "locate", "make_runner"]
