"""Path patching (Wang et al. 2023): a sender's effect through chosen receivers only, everything else frozen.

For a sender set S (heads and MLPs) and receivers R (head queries, keys or values, or the logits):

1. run the base and the source prompts once and keep every sender's output;
2. each receiver's input becomes the base run's residual stream plus the senders' change from the senders
   *before* the receiver's layer: ``out_s(source) - out_s(base)`` for an MLP (its output is taken after any
   post-norm) and, per layer L, ``W_O`` applied to the change of that layer's sender heads' ``z``. With every
   other component frozen at its base value, this is exactly the residual stream that "patch S, freeze the rest"
   produces; normalisation is recomputed on it;
3. the receiver's query/key/value computed from that input is patched into the base run, and the
   layers after it run normally; for the logits receiver, the final normalisation and unembedding
   read the changed final residual stream directly.

Post-norm layers (Gemma 2 and 3, OLMo 2): the attention block adds ``post_L(A_L)`` to the residual stream, with
``A_L = sum_h z_h W_O[h] + b_O`` the sum of the head outputs before the norm. A head's change is then not additive:
with layer L's sender heads at source and the rest frozen at base, the residual stream changes by
``post_L(A_L(base) + sum_{h in S} (z_h(source) - z_h(base)) W_O[h]) - post_L(A_L(base))``, the norm
recomputed on the mixed sum, one term per layer (heads of different layers pass different norms, so their
terms add).

Step 2 needs one truncated forward per sender row (it stops after the last receiver layer) and step 3
one forward, each batched over many sender sets. :func:`path_patch_reference` does the same by literally
freezing every head's ``z`` and MLP's output in a separate forward per sender set (the attention output
projection and the post-norms are then recomputed by the model itself); the tests hold the two equal.

The IOI paper's direct effect of a head is ``path_patch(..., receivers="logits")``; its S-inhibition
search is path patching into the name movers' queries at END.
"""

from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from mechpatch._progress import progress_bar
from mechpatch.cache import as_tokens
from mechpatch.errors import (
    EmptyInputError, InvalidArgumentError, InvalidTypeError, ShapeMismatchError, UnknownSiteKindError, UnsupportedSiteError,
    choices,
)
from mechpatch.model import HookedModel
from mechpatch.patching import fast
from mechpatch.patching import functional as F_
from mechpatch.patching.engine import METHODS as ENGINE_METHODS, check_batch_size
from mechpatch.patching.metrics import Metric, Readout, as_metric, readout_positions
from mechpatch.prompts import bind_prompts
from mechpatch.sites import Head, Key, Mlp, ModelSpec, Query, Site, SiteSets, Sites, Value, select, site_sets

Sender = Union[Head, Mlp]
RECEIVER_KINDS = ("query", "key", "value")
#: the engine's methods but "reference": path patching's slow reference is the separate :func:`path_patch_reference`
METHODS = tuple(m for m in ENGINE_METHODS if m != "reference")


class _Stop(Exception):
    """Raised inside a hook to end a forward early once every needed activation is captured."""


@dataclass(frozen=True)
class PathRun:
    """Values of a path-patching run: ``values[sender_set, prompt]`` and the unpatched baselines."""

    values: Float[Tensor, "variant prompt"]
    base_values: Float[Tensor, " prompt"]
    senders: tuple[tuple[Sender, ...], ...]
    receivers: Union[str, tuple[Site, ...]]
    noop: torch.Tensor  # [variant] bool: the sender set precedes no receiver, so nothing changed

    @property
    def effect(self) -> Float[Tensor, "variant prompt"]:
        """Patched minus unpatched metric, per sender set and prompt."""
        return self.values - self.base_values


def _as_sets(spec: ModelSpec, senders: SiteSets) -> tuple[tuple[Sender, ...], ...]:
    if not isinstance(senders, (Site, str)) and isinstance(senders, Sized) and len(senders) == 0:
        raise EmptyInputError("no sender sets given: give at least one Head/Mlp or set of them")
    out = []
    for group in site_sets(spec, senders, "senders"):
        for x in group:
            if not isinstance(x, (Head, Mlp)) or x.pos is not None:
                raise UnsupportedSiteError(
                    f"path-patching senders are whole heads or MLPs (Head(l, h), Mlp(l), no positions); got {x!r}"
                )
        out.append(group)
    if not out:
        raise EmptyInputError("no sender sets given: give at least one Head/Mlp or set of them")
    return tuple(out)


def _as_receivers(model: HookedModel, receivers: Sites, seq_len: int):
    if isinstance(receivers, str) and receivers == "logits":
        return "logits"
    if not isinstance(receivers, (Site, str)) and isinstance(receivers, Sized) and len(receivers) == 0:
        raise EmptyInputError("no receivers given: give 'logits' or at least one Query/Key/Value site")
    if not isinstance(receivers, (Site, str, Iterable)):
        raise InvalidTypeError(f"receivers must be 'logits', a Query/Key/Value site or a list of them; got "
                               f"{type(receivers).__name__} {receivers!r}")
    try:
        recs = tuple(r.validate(model.spec, seq_len) for r in select(model.spec, receivers))
    except UnknownSiteKindError as exc:
        raise UnsupportedSiteError(f"receivers must be 'logits' or Query/Key/Value sites: {exc}") from None
    for r in recs:
        if not isinstance(r, (Query, Key, Value)):
            raise UnsupportedSiteError(
                f"path-patching receivers are 'logits' or Query/Key/Value sites; got {r!r} ({r.hook_kind}); "
                f"valid kinds: {choices(RECEIVER_KINDS)}"
            )
    if not recs:
        raise EmptyInputError("no receivers given: give 'logits' or at least one Query/Key/Value site")
    return recs


def _sender_outputs(model: HookedModel, tokens: Tensor, layers: set[int], mlp_layers: set[int],
                    extra: Sequence[str]) -> dict[str, Tensor]:
    names = [f"blocks.{l}.attn.hook_z" for l in sorted(layers)]
    names += [f"blocks.{l}.hook_mlp_out" for l in sorted(mlp_layers)] + list(extra)
    store: dict[str, Tensor] = {}

    def keeper(name):  # keyed by the name asked for (the bridge may report an alias as hook.name)
        def keep(act, hook):
            store[name] = act.detach().clone()
        return keep

    with torch.inference_mode():
        model.bridge.run_with_hooks(tokens, fwd_hooks=[(n, keeper(n)) for n in dict.fromkeys(names)])
    return store


#: the attention block's output before its post-norm (``A_L``), cached from the base run on post-norm layers
_ATTN_SUM = "blocks.{}.ln1_post.hook_in"


def _heads_by_layer(group: tuple[Sender, ...], before: int) -> dict[int, list[int]]:
    """The heads of ``group`` in layers < ``before``, by layer (each head once)."""
    out: dict[int, list[int]] = {}
    for s in dict.fromkeys(group):
        if isinstance(s, Head) and s.layer < before:
            out.setdefault(s.layer, []).append(s.head)
    return out


def _sender_change(group: tuple[Sender, ...], before: int, base: dict, src: dict, w_o: Callable[[int], Tensor],
                   post_norm: Callable[[int], Optional[Callable[[Tensor], Tensor]]], p0: int = 0) -> Optional[Tensor]:
    """The residual stream's change, from position ``p0``, when the senders of ``group`` in layers < ``before`` take
    their source outputs and everything else is frozen at base (None if there are no such senders).

    ``w_o(L)`` is layer L's ``W_O`` [head, d_head, d_model]; ``post_norm(L)`` its attention post-norm or None. On a
    post-norm layer the norm is recomputed on the base run's pre-norm sum ``base[_ATTN_SUM]`` plus the heads' change.
    """
    total = None
    for L, heads in _heads_by_layer(group, before).items():
        name = f"blocks.{L}.attn.hook_z"
        dz = src[name][:, p0:, heads] - base[name][:, p0:, heads]
        d = torch.einsum("bshd,hdm->bsm", dz, w_o(L)[heads].to(dz.dtype))
        norm = post_norm(L)
        if norm is not None:
            a = base[_ATTN_SUM.format(L)][:, p0:]
            d = norm(a + d) - norm(a)
        total = d if total is None else total + d
    for L in sorted({s.layer for s in group if isinstance(s, Mlp) and s.layer < before}):
        name = f"blocks.{L}.hook_mlp_out"  # after the MLP's post-norm, where there is one
        d = src[name][:, p0:] - base[name][:, p0:]
        total = d if total is None else total + d
    return total


def _bridge_post_norm(model: HookedModel, layer: int) -> Optional[torch.nn.Module]:
    """The bridge's norm of layer ``layer``'s attention output before it joins the residual stream, if any."""
    return model.bridge.blocks[layer]._modules.get("ln1_post")


def _delta(model: HookedModel, group: tuple[Sender, ...], before: int, base: dict, src: dict) -> Optional[Tensor]:
    """:func:`_sender_change` on the bridge's weights and post-norms."""
    return _sender_change(group, before, base, src, lambda L: model.bridge.blocks[L].attn.W_O,
                          lambda L: _bridge_post_norm(model, L))


def path_patch(
    model: HookedModel,
    base: Union[Int[Tensor, "batch pos"], Sequence[str]],
    senders: SiteSets,
    *,
    receivers: Sites,
    metric: Union[Metric, str],
    source: Union[Int[Tensor, "batch pos"], Sequence[str]],
    answers: Optional[Int[Tensor, "batch answer"]] = None,
    method: str = "auto",
    batch_size: int = 16,
    progress: Optional[bool] = None,
) -> PathRun:
    """The metric when each sender set's source output reaches only ``receivers`` (the rest frozen at base).

    Args:
        model: the model.
        base: the run being patched (the IOI paper's p_IOI, for noising).
        senders: one entry per row: a Head/Mlp or a set of them patched together.
        receivers: ``"logits"`` (the senders' direct effect) or Query/Key/Value sites, optionally at
            positions (e.g. ``Query(9, 9, pos=END)``).
        metric: as in :func:`~mechpatch.patching.engine.run_patches`; KL divergence compares with the base run.
        source: the run the senders' outputs come from (p_ABC); path patching always replaces (no intervention).
        method: "fast" (mechpatch's functional forward: the receivers' inputs are computed from the cached
            residual stream at the receiver layer only, and the patched run resumes at the first receiver
            layer from the first patched position, with cached keys/values), "hooks" (bridge forwards:
            any architecture), or "auto" (fast where the model supports it).
        batch_size: sender sets per forward pass.

    Returns:
        :class:`PathRun`; sender sets with no sender before any receiver are flagged ``noop``.
    """
    base_t, src_t, sets, recs = _check_path_args(model, base, source, senders, receivers, method, batch_size)
    seq = base_t.shape[1]
    metric = as_metric(metric)
    positions = readout_positions(metric, seq)
    metric = bind_prompts(model, metric, answers, base_t)
    readout = Readout(positions, None)

    fm = None
    if method in ("auto", "fast"):
        reason, fm = fast.resolve(model)
        if reason is not None and method == "fast":
            raise fast.FastPathUnavailable(f"method='fast' is not available: {reason}; use method='hooks' or 'auto'")
    if fm is not None:
        return _path_patch_fast(fm, model, base_t, src_t, sets, recs, metric, readout, batch_size, progress)
    return _path_patch_hooks(model, base_t, src_t, sets, recs, metric, readout, batch_size, progress)


def _check_path_args(
    model: HookedModel,
    base: Union[Tensor, Sequence[str]],
    source: Union[Tensor, Sequence[str]],
    senders: SiteSets,
    receivers: Sites,
    method: str,
    batch_size: object,
) -> tuple[Tensor, Tensor, tuple[tuple[Sender, ...], ...], Union[str, tuple[Site, ...]]]:
    """:func:`path_patch`'s argument checks; returns the base and source tokens, the sender sets and the receivers."""
    check_batch_size(batch_size)
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}; valid: {choices(METHODS)}")
    if source is None:
        raise InvalidArgumentError("path patching needs source= (the run the senders' outputs come from, e.g. the "
                                   "corrupted prompts)")
    base_t, src_t = as_tokens(model, base), as_tokens(model, source)
    if base_t.shape != src_t.shape:
        raise ShapeMismatchError(f"base tokens {tuple(base_t.shape)} and source {tuple(src_t.shape)} must align")
    seq = base_t.shape[1]
    sets = _as_sets(model.spec, senders)
    for g in sets:
        for s in g:
            s.validate(model.spec, seq)
    return base_t, src_t, sets, _as_receivers(model, receivers, seq)


def _path_patch_hooks(model, base_t, src_t, sets, recs, metric, readout, batch_size, progress) -> PathRun:
    """path_patch on the bridge's hooks (see :func:`path_patch`, method "hooks")."""
    n = base_t.shape[0]
    head_layers = {s.layer for g in sets for s in g if isinstance(s, Head)}
    mlp_layers = {s.layer for g in sets for s in g if isinstance(s, Mlp)}
    last = model.spec.n_layers - 1
    if recs == "logits":
        extra = [f"blocks.{last}.hook_resid_post"]
        rec_layers: list[int] = [model.spec.n_layers]
    else:
        rec_layers = sorted({r.layer for r in recs})
        extra = [f"blocks.{l}.hook_resid_pre" for l in rec_layers]
    extra += [_ATTN_SUM.format(l) for l in sorted(head_layers) if _bridge_post_norm(model, l) is not None]
    base_store = _sender_outputs(model, base_t, head_layers, mlp_layers, extra)
    src_store = _sender_outputs(model, src_t, head_layers, mlp_layers, ())
    with torch.inference_mode():
        base_logits = model.bridge(base_t)
    prompt = torch.arange(n, device=base_t.device)
    metric = metric.bind(clean_logits=readout.select(base_logits))  # KL compares with the base (clean) run
    base_values = metric(readout.select(base_logits), prompt).cpu()
    noop = torch.tensor([all(s.layer >= max(rec_layers) for s in g) for g in sets])

    values = torch.empty(len(sets), n, dtype=base_values.dtype)  # the model's precision (metrics.value_dtype)
    chunks = [list(range(i, min(i + batch_size, len(sets)))) for i in range(0, len(sets), batch_size)]
    for chunk in progress_bar(chunks, desc="path patching", enabled=progress if progress is not None else len(chunks) > 1,
                              unit="chunk"):
        rows_prompt = prompt.repeat(len(chunk))
        with torch.inference_mode():
            if recs == "logits":
                resid = base_store[extra[0]].repeat(len(chunk), 1, 1)
                for j, v in enumerate(chunk):
                    d = _delta(model, sets[v], model.spec.n_layers, base_store, src_store)
                    if d is not None:
                        resid[j * n:(j + 1) * n] += d
                logits = _unembed(model, resid, readout.positions)
            else:
                captured = _receiver_inputs(model, recs, rec_layers, [sets[v] for v in chunk], base_store, src_store,
                                            base_t, n)
                logits = _run_with_receivers(model, recs, captured, base_t[rows_prompt], readout.positions)
        values[chunk] = metric(logits, rows_prompt).reshape(len(chunk), n).cpu()
    values[noop] = base_values  # nothing changed (batched forwards differ from the base only by rounding)
    return PathRun(values, base_values, sets, recs, noop)


def _hook_name(r: Site) -> str:
    return {"query": "blocks.{l}.attn.hook_q", "key": "blocks.{l}.attn.hook_k",
            "value": "blocks.{l}.attn.hook_v"}[r.hook_kind].format(l=r.layer)


def _receiver_inputs(model, recs, rec_layers, groups, base_store, src_store, base_t, n) -> dict[str, Tensor]:
    """Run the truncated forward whose receiver-layer inputs are base + senders' change; keep q/k/v."""
    k = len(groups)
    hooks: list[Any] = []
    for L in rec_layers:
        resid = base_store[f"blocks.{L}.hook_resid_pre"].repeat(k, 1, 1)
        for j, g in enumerate(groups):
            d = _delta(model, g, L, base_store, src_store)
            if d is not None:
                resid[j * n:(j + 1) * n] += d
        hooks.append((f"blocks.{L}.hook_resid_pre", lambda act, hook, resid=resid: resid))
    captured: dict[str, Tensor] = {}
    names = sorted({_hook_name(r) for r in recs})
    stop_at = _hook_name(max(recs, key=lambda r: (r.layer, RECEIVER_KINDS.index(r.hook_kind))))

    def keeper(name):
        def keep(act, hook):
            captured[name] = act.detach().clone()
            if len(captured) == len(names):
                raise _Stop
        return keep

    hooks += [(nm, keeper(nm)) for nm in names]
    try:
        model.bridge.run_with_hooks(base_t.repeat(k, 1), fwd_hooks=hooks)
    except _Stop:
        pass
    missing = set(names) - set(captured)
    if missing:  # pragma: no cover - a hook the bridge did not fire
        raise UnsupportedSiteError(f"hooks {sorted(missing)} did not fire (stop at {stop_at})")
    return captured


def _unembed(model: HookedModel, resid: Tensor, positions: Optional[list[int]]) -> Tensor:
    """Final normalisation and unembedding of the last residual stream, only at ``positions``."""
    if positions is not None:
        resid = resid[:, positions]
    return _logits(model, resid)


def _logits(model: HookedModel, resid: Tensor) -> Tensor:
    """The bridge's final norm and unembedding, and the final-logit soft-cap the Hugging Face head applies after
    them (Gemma 2), which ``bridge.unembed`` leaves out."""
    logits = model.bridge.unembed(model.bridge.ln_final(resid))
    cap = float(getattr(model.bridge.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    return torch.tanh(logits / cap) * cap if cap > 0 else logits


def _final_resid(model: HookedModel, tokens: Tensor, hooks: list) -> Tensor:
    """The last block's output under ``hooks``; the forward stops there (the unembedding is done on
    the positions a metric reads only)."""
    name = f"blocks.{model.spec.n_layers - 1}.hook_resid_post"
    out: dict[str, Tensor] = {}

    def keep(act, hook):
        out["resid"] = act.detach()
        raise _Stop

    try:
        model.bridge.run_with_hooks(tokens, fwd_hooks=hooks + [(name, keep)])
    except _Stop:
        pass
    if "resid" not in out:  # pragma: no cover - the bridge did not fire the hook
        raise UnsupportedSiteError(f"hook {name} did not fire")
    return out["resid"]


def _run_with_receivers(model, recs, captured, tokens, positions) -> Tensor:
    hooks = []
    by_name: dict[str, list[Site]] = {}
    for r in recs:
        by_name.setdefault(_hook_name(r), []).append(r)
    for nm, rs in by_name.items():
        mask = torch.zeros(captured[nm].shape, dtype=torch.bool, device=tokens.device)
        for r in rs:
            pos = slice(None) if r.pos is None else list(r.pos)
            mask[:, pos, r.unit] = True

        def patch(act, hook, mask=mask, val=captured[nm]):
            return torch.where(mask, val.to(act.dtype), act)

        hooks.append((nm, patch))
    return _unembed(model, _final_resid(model, tokens, hooks), positions)


@dataclass(frozen=True)
class _FastPaths:
    """What the fast path-patching loop reads: the base and source runs' caches, and where the patched run
    resumes (the first receiver layer, from position ``p0``; before it the base run's keys/values)."""

    fm: Any
    sets: tuple[tuple[Sender, ...], ...]
    recs: Union[str, tuple[Site, ...]]
    readout: Readout
    base_c: dict[str, Tensor]  # base run: residual stream, head and MLP outputs, the last block's output
    src_c: dict[str, Tensor]  # source run: head and MLP outputs
    kv: Any  # base run's keys/values per layer
    state: fast.FastState
    rec_layers: list[int]
    p0: int
    metric_pos: list[int]

    def delta(self, group: tuple[Sender, ...], before: int) -> Optional[Tensor]:
        """:func:`_sender_change` on the functional weights and post-norms, from ``p0``."""
        layers = self.fm.layers

        def post_norm(L: int) -> Optional[Callable[[Tensor], Tensor]]:
            n = layers[L].ln1_post
            return None if n is None else (lambda x: F_.apply_norm(n, x))

        return _sender_change(group, before, self.base_c, self.src_c, lambda L: layers[L].W_O, post_norm, self.p0)

    def rows_resid(self, layer_name: str, before: int, chunk: list[int]) -> Tensor:
        """The base run's ``layer_name`` from ``p0``, one row group per sender set of ``chunk``, plus its change."""
        n = self.state.tokens.shape[0]
        resid = self.base_c[layer_name][:, self.p0:].repeat(len(chunk), 1, 1)
        for j, v in enumerate(chunk):
            d = self.delta(self.sets[v], before)
            if d is not None:
                resid[j * n:(j + 1) * n] += d
        return resid

    def receiver_values(self, chunk: list[int], rows_prompt: Tensor) -> dict[str, Tensor]:
        """The receivers' q/k/v computed from the changed inputs: each receiver layer run on its own."""
        p0, kv = self.p0, self.kv
        positions = torch.arange(p0, self.state.tokens.shape[1], device=rows_prompt.device)
        captured: dict[str, Tensor] = {}
        for L in self.rec_layers:
            wanted = {_hook_name(r) for r in self.recs if r.layer == L}

            def keeper(name, wanted=wanted):
                def keep(t):
                    captured[name] = t.detach().clone()
                    if wanted <= set(captured):
                        raise _Stop
                return keep

            past = None if p0 == 0 else (kv[L][0][rows_prompt, :, :p0], kv[L][1][rows_prompt, :, :p0])
            hk = F_.Hooks({nm: keeper(nm) for nm in wanted}, None)
            try:
                F_.block(self.fm, L, self.rows_resid(f"blocks.{L}.hook_resid_pre", L, chunk), positions, past, hk,
                         False)
            except _Stop:
                pass
        return captured

    def logits(self, chunk: list[int], rows_prompt: Tensor) -> Tensor:
        """Readout logits of the rows of ``chunk`` (one row group of prompts per sender set)."""
        fm, p0, L_n = self.fm, self.p0, self.fm.n_layers
        if self.recs == "logits":
            resid = self.rows_resid(f"blocks.{L_n - 1}.hook_resid_post", L_n, chunk)
            return F_.unembed(fm, resid[:, [p - p0 for p in self.metric_pos]], self.readout.columns)
        captured = self.receiver_values(chunk, rows_prompt)
        hooks = {}
        for nm in captured:
            mask = torch.zeros(captured[nm].shape[:3], dtype=torch.bool, device=rows_prompt.device)
            for r in self.recs:
                if _hook_name(r) == nm:
                    pos = slice(None) if r.pos is None else [p - p0 for p in r.pos]
                    mask[:, pos, r.unit] = True

            def put(t, mask=mask[..., None], val=captured[nm]):
                return torch.where(mask, val, t)

            hooks[nm] = put
        return fast.forward_rows(self.state, rows_prompt, [self.rec_layers[0]] * len(rows_prompt), p0, hooks,
                                 self.readout)


def _fast_paths(fm, base_t, src_t, sets, recs, readout) -> _FastPaths:
    """The base run (keeping every residual stream, head and MLP output, and keys/values) and the source run
    (head and MLP outputs) on the functional forward, and where the patched run resumes."""
    seq = base_t.shape[1]
    L_n = fm.n_layers
    names = {f"blocks.{l}.hook_resid_pre" for l in range(L_n)} | {f"blocks.{l}.attn.hook_z" for l in range(L_n)}
    if not fm.attn_only:
        names |= {f"blocks.{l}.hook_mlp_out" for l in range(L_n)}
    base_c, base_logits, kv = fast._forward_caching(fm, base_t, names, readout, return_kv=True)
    src_c, _, _ = fast._forward_caching(fm, src_t, {x for x in names if "resid" not in x}, readout)
    with torch.inference_mode():
        base_c[f"blocks.{L_n - 1}.hook_resid_post"] = F_.run_blocks(
            fm, base_c[f"blocks.{L_n - 1}.hook_resid_pre"], L_n - 1, L_n, 0, [None] * L_n,
        )
        for l in sorted({s.layer for g in sets for s in g if isinstance(s, Head)}):
            lw = fm.layers[l]
            if lw.ln1_post is not None:  # A_L, as the forward computes it before the post-norm
                base_c[_ATTN_SUM.format(l)] = F.linear(base_c[f"blocks.{l}.attn.hook_z"].flatten(-2), lw.Wo, lw.b_O)
    metric_pos = list(range(seq)) if readout.positions is None else readout.positions
    if recs == "logits":
        rec_layers, p0 = [L_n], min(metric_pos)
    else:
        rec_layers = sorted({r.layer for r in recs})
        p0 = min([min(r.pos) if r.pos is not None else 0 for r in recs] + [min(metric_pos)])
    if not fm.causal:  # bidirectional attention: a receiver change reaches every position
        p0 = 0
    state = fast.FastState(fm=fm, tokens=base_t, resid_pre=[base_c[f"blocks.{l}.hook_resid_pre"] for l in range(L_n)],
                           kv=kv, hook_cache={}, logits=base_logits, order=torch.arange(0), starts=[])
    return _FastPaths(fm, sets, recs, readout, base_c, src_c, kv, state, rec_layers, p0, metric_pos)


def _path_patch_fast(fm, model, base_t, src_t, sets, recs, metric, readout, batch_size, progress) -> PathRun:
    """path_patch on mechpatch's functional forward (see :func:`path_patch`, method "fast")."""
    n = base_t.shape[0]
    # unembed only the vocabulary entries the metric reads (e.g. two answer columns of 49k)
    if readout.columns is None and metric.columns() is not None:
        readout = Readout(readout.positions, metric.columns())
        metric = metric.restrict(readout.columns)
    run = _fast_paths(fm, base_t, src_t, sets, recs, readout)
    prompt = torch.arange(n, device=base_t.device)
    metric = metric.bind(clean_logits=run.state.logits)
    base_values = metric(run.state.logits, prompt).cpu()
    noop = torch.tensor([all(s.layer >= max(run.rec_layers) for s in g) for g in sets])
    values = torch.empty(len(sets), n, dtype=base_values.dtype)  # the model's precision (metrics.value_dtype)
    chunks = [list(range(i, min(i + batch_size, len(sets)))) for i in range(0, len(sets), batch_size)]
    for chunk in progress_bar(chunks, desc="path patching (fast)", unit="chunk",
                              enabled=progress if progress is not None else len(chunks) > 1):
        rows_prompt = prompt.repeat(len(chunk))
        with torch.inference_mode():
            logits = run.logits(chunk, rows_prompt)
        values[chunk] = metric(logits, rows_prompt).reshape(len(chunk), n).cpu()
    # a sender set that precedes no receiver changes nothing: report the base values exactly (the resumed
    # run differs from the full base forward only by float rounding, ~1e-8)
    values[noop] = base_values
    return PathRun(values, base_values, sets, recs, noop)


def path_patch_reference(
    model: HookedModel,
    base: Int[Tensor, "batch pos"],
    senders: SiteSets,
    *,
    receivers: Sites,
    metric: Union[Metric, str],
    source: Int[Tensor, "batch pos"],
    answers: Optional[Int[Tensor, "batch answer"]] = None,
) -> Float[Tensor, "variant prompt"]:
    """Slow, literal path patching: per sender set, one forward with every head's z and every MLP's output
    frozen at base except the senders (at source), keeping the receivers' q/k/v (or final residual), then
    one base forward with those receivers patched. For testing :func:`path_patch`."""
    base_t, src_t = as_tokens(model, base), as_tokens(model, source)
    n, seq = base_t.shape
    sets = _as_sets(model.spec, senders)
    recs = _as_receivers(model, receivers, seq)
    metric = bind_prompts(model, as_metric(metric), answers, base_t)
    readout = Readout(readout_positions(metric, seq), None)
    L_all = range(model.spec.n_layers)
    has_mlp = not model.spec.attn_only
    outs = [f"blocks.{l}.attn.hook_z" for l in L_all] + ([f"blocks.{l}.hook_mlp_out" for l in L_all] if has_mlp else [])
    base_store = _sender_outputs(model, base_t, set(L_all), set(L_all) if has_mlp else set(), ())
    src_store = _sender_outputs(model, src_t, set(L_all), set(L_all) if has_mlp else set(), ())
    prompt = torch.arange(n)
    with torch.inference_mode():
        metric = metric.bind(clean_logits=readout.select(model.bridge(base_t)))
    last = model.spec.n_layers - 1
    rows = []
    for g in sets:
        hooks = []
        for name in outs:
            val = base_store[name].clone()
            for s in g:
                if isinstance(s, Head) and name == f"blocks.{s.layer}.attn.hook_z":
                    val[:, :, s.head] = src_store[name][:, :, s.head]
                if isinstance(s, Mlp) and name == f"blocks.{s.layer}.hook_mlp_out":
                    val = src_store[name].clone()
            hooks.append((name, lambda act, hook, val=val: val))
        keep: dict[str, Tensor] = {}
        wanted = [f"blocks.{last}.hook_resid_post"] if recs == "logits" else [_hook_name(r) for r in recs]

        def grabber(name, keep=keep):
            def grab(act, hook):
                keep[name] = act.detach().clone()
            return grab

        with torch.inference_mode():
            model.bridge.run_with_hooks(base_t, fwd_hooks=hooks + [(w, grabber(w)) for w in dict.fromkeys(wanted)])
            if recs == "logits":
                logits = _logits(model, keep[wanted[0]])
            else:
                patch_hooks = []
                for r in recs:
                    nm = _hook_name(r)
                    pos = list(range(seq)) if r.pos is None else list(r.pos)

                    def put(act, hook, nm=nm, r=r, pos=pos, keep=keep):
                        act = act.clone()
                        act[:, pos, r.unit] = keep[nm][:, pos, r.unit]
                        return act

                    patch_hooks.append((nm, put))
                logits = model.bridge.run_with_hooks(base_t, fwd_hooks=patch_hooks)
        rows.append(metric(readout.select(logits), prompt).cpu())
    return torch.stack(rows)


__all__ = ["PathRun", "path_patch", "path_patch_reference"]
