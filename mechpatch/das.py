"""Distributed alignment search (DAS; Geiger et al. 2023): find the subspace of a site's activation through which a
hypothesised causal variable acts.

A variable need not sit in one neuron or head: it can be spread over a subspace. DAS learns a ``k``-dimensional
subspace (an orthonormal basis, parametrised to stay orthonormal) such that the *interchange intervention* on it —
the base run's activation with its subspace component taken from a source run,
``h_base + (h_source - h_base) Q Q^T`` — makes the model output what the causal hypothesis predicts for that
swap (the ``targets``: the output the base input would have if the variable took the source input's value). The
model's weights stay frozen; only the basis is trained, by gradient descent through the model.

The measure is **interchange-intervention accuracy (IIA)** on held-out pairs: the share of pairs where the
intervened output matches the target (the argmax token for ``loss="ce"``; within ``tolerance`` of a numerical
readout for ``loss="mse"``). The learned subspace is an intervention of the engine:
:attr:`DASResult.intervention` is a :class:`~mechpatch.patching.interventions.Subspace` (``of=Replace()``) that
:func:`~mechpatch.patching.run_patches`, sweeps and AtP run as rows of one forward.

A probe can be accurate where DAS finds nothing causal (the variable is still written in the residual stream after
the model has read it): put the two side by side (:mod:`mechpatch.probes`).
"""

import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechpatch.cache import as_tokens
from mechpatch.errors import EmptyInputError, InvalidArgumentError, ShapeMismatchError, choices
from mechpatch.model import hook_shape
from mechpatch.patching.engine import check_batch_size
from mechpatch.sites import Site, resolve_positions, select

#: the training losses: cross-entropy on a target token, or squared error on a numerical readout column
LOSSES = ("ce", "mse")
#: the training forward: "fast" runs mechpatch's functional forward from the site's layer and first position (the
#: base run's residual stream and keys/values cached), "hooks" the bridge's whole forward with a hook; "auto" takes
#: "fast" where the fast path reproduces the bridge (``patching.fast.resolve``), else "hooks"
DAS_METHODS = ("auto", "fast", "hooks")


@dataclass(frozen=True)
class DASResult:
    """A learned subspace, its held-out interchange-intervention accuracy, and how training went."""

    site: str
    basis: Float[Tensor, "k d"]  # orthonormal rows
    iia: float  # held-out
    train_iia: float
    losses: list[float] = field(repr=False)
    n_train: int = 0
    n_test: int = 0
    seconds: float = 0.0

    @property
    def intervention(self) -> Any:
        """The learned interchange intervention, for the engine: ``Subspace(basis, of=Replace())``."""
        from mechpatch.patching.interventions import Replace, Subspace

        return Subspace(self.basis, of=Replace())

    def __repr__(self) -> str:
        return (f"DASResult({self.site}: k={self.basis.shape[0]} of {self.basis.shape[1]}, held-out IIA {self.iia:.3f}"
                f" (train {self.train_iia:.3f}), {self.n_train} train / {self.n_test} test pairs, {self.seconds:.1f} s)")


def _as_site(model: Any, site: object) -> Any:
    """``site`` as one Site: a Site as given, or a label such as ``"L1.resid_pre@2"`` parsed as the rest of the API
    parses it (it must name exactly one site)."""
    if isinstance(site, Site):
        return site
    if not isinstance(site, str):
        raise InvalidArgumentError(f"site must be one Site (e.g. Resid(1, 'pre', pos=2)) or its label (e.g. "
                                   f"'L1.resid_pre@2'); got {type(site).__name__} {site!r:.80}")
    sites = select(model.spec, site)
    if len(sites) != 1:
        raise InvalidArgumentError(f"site {site!r} names {len(sites)} sites ({choices([s.label for s in sites], 6)}); "
                                   "DAS learns a subspace of one site: name one")
    return sites[0]


def _tokens(model: Any, base: object, source: object) -> tuple[Tensor, Tensor]:
    """``base`` and ``source`` as token ids of one shape [pair, pos] within the vocabulary (checked by as_tokens)."""
    for name, value in (("base", base), ("source", source)):
        if isinstance(value, (list, tuple)) and value and not all(isinstance(v, str) for v in value):
            raise ShapeMismatchError(f"{name} must be token ids (an integer tensor [pair, pos]) or prompt strings; "
                                     f"got a {type(value).__name__} of {type(value[0]).__name__}: pass "
                                     f"torch.tensor({name})")
    base_t, source_t = as_tokens(model, base), as_tokens(model, source)
    if base_t.shape != source_t.shape:
        raise ShapeMismatchError(f"base {tuple(base_t.shape)} and source {tuple(source_t.shape)} must be token ids of "
                                 "one shape [pair, pos]")
    return base_t, source_t


def _out_vocab(model: Any) -> int:
    """The width of the model's logits (a compiled tracr model's output vocabulary differs from its input's)."""
    n = getattr(getattr(model.bridge, "cfg", None), "d_vocab_out", None)
    return n if isinstance(n, int) and n > 0 else model.spec.d_vocab


def _check_ids(name: str, ids: Tensor, vocab: int) -> None:
    """Refuse token ids outside ``0..vocab-1`` (they would index past the logits, or wrap around)."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise InvalidArgumentError(f"{name} must be token ids in 0..{vocab - 1} (the model's output vocabulary); got "
                                   f"{int(ids.min())}..{int(ids.max())}")


def _check_targets(model: Any, n: int, targets: object, candidates: object, loss: str,
                   column: object) -> tuple[Tensor, Optional[Tensor]]:
    """The targets (token ids for "ce", finite values for "mse") and candidates, checked against ``n`` pairs and the
    output vocabulary; the logit ``column`` an "mse" readout reads. With candidates, a target becomes its index among
    them (the readout is over the candidates)."""
    if loss not in LOSSES:
        raise InvalidArgumentError(f"unknown DAS loss {loss!r}; valid: {choices(LOSSES)}")
    vocab = _out_vocab(model)
    if isinstance(column, bool) or not isinstance(column, int) or not 0 <= column < vocab:
        raise InvalidArgumentError(f"column must be an int in 0..{vocab - 1} (a logit index; no wrap-around); got "
                                   f"{column!r}")
    if not isinstance(targets, Tensor) or targets.ndim != 1 or targets.shape[0] != n:
        got = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ShapeMismatchError(f"targets must be a tensor holding one value per pair ({n}); got {got}")
    targets = targets.cpu()
    if targets.dtype == torch.bool or targets.dtype.is_complex:
        raise InvalidArgumentError(f"targets must be token ids (loss 'ce') or real values (loss 'mse'); got "
                                   f"{targets.dtype}")
    if loss == "ce":
        if targets.dtype.is_floating_point:
            raise InvalidArgumentError("loss 'ce' takes target token ids (an integer tensor); for values use loss "
                                       "'mse'")
        _check_ids("targets", targets, vocab)
        targets = targets.long()
    elif not torch.isfinite(targets.double()).all():
        bad = ~torch.isfinite(targets.double())
        raise InvalidArgumentError(f"targets must be finite for loss 'mse'; {int(bad.sum())} are NaN or infinite "
                                   f"(first: pair {int(bad.nonzero()[0])})")
    if candidates is None:
        return targets, None
    if loss != "ce":
        raise InvalidArgumentError("candidates restrict the readout to token ids: they go with loss 'ce'")
    if not isinstance(candidates, Tensor) or candidates.ndim != 2 or candidates.shape[0] != n or \
            candidates.shape[1] < 2 or candidates.dtype.is_floating_point or candidates.dtype == torch.bool:
        got = f"{tuple(candidates.shape)} of {candidates.dtype}" if isinstance(candidates, Tensor) else \
            type(candidates).__name__
        raise ShapeMismatchError(f"candidates must be token ids [pair, c] with c >= 2 ({n} pairs); got {got}")
    candidates = candidates.cpu()
    _check_ids("candidates", candidates, vocab)
    missing = ~(candidates == targets[:, None]).any(-1)
    if missing.any():
        raise InvalidArgumentError(f"each pair's target must be one of its candidates; {int(missing.sum())} are "
                                   f"not (first: pair {int(missing.nonzero()[0])})")
    return (candidates == targets[:, None]).int().argmax(-1), candidates.long()  # the target's index among them


def _number(name: str, value: object, valid: str, ok: Callable[[float], bool]) -> None:
    """Refuse ``value`` unless it is a real number (not a bool) for which ``ok`` holds; ``valid`` says what is."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(float(value)):
        raise InvalidArgumentError(f"{name} must be {valid}; got {value!r}")


def _check_options(n: int, k: object, test_fraction: object, steps: object, method: object, lr: object,
                   tolerance: object, batch_size: object, seed: object) -> int:
    """Check the training options against ``n`` pairs; returns the number of held-out pairs."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidArgumentError(f"k must be a positive int (the subspace's dimension); got {k!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidArgumentError(f"steps must be a positive int; got {steps!r}")
    if method not in DAS_METHODS:
        raise InvalidArgumentError(f"unknown DAS method {method!r}; valid: {choices(DAS_METHODS)}")
    _number("lr", lr, "a positive finite number (Adam's learning rate)", lambda v: math.isfinite(v) and v > 0)
    _number("tolerance", tolerance, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)
    check_batch_size(batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int) or not -2 ** 63 <= seed < 2 ** 64:
        raise InvalidArgumentError(f"seed must be an int (in -2**63..2**64-1); got {seed!r}")
    _number("test_fraction", test_fraction, "a number in (0, 1)", lambda v: 0.0 < v < 1.0)
    if n < 2:
        raise EmptyInputError(f"DAS needs at least 2 pairs (one to train on, one held out); got {n}")
    n_test = max(1, round(n * float(test_fraction)))
    if n_test >= n:
        raise InvalidArgumentError(f"test_fraction {test_fraction!r} of {n} pairs holds out {n_test}, leaving no "
                                   f"pair to train on; valid: a test_fraction in (0, 1) that keeps one (with {n} "
                                   f"pairs, {(n - 1) / n:.4g} holds out {n - 1})")
    return n_test


def _check(model: Any, base: object, source: object, site: object, targets: object, k: object, loss: str,
           test_fraction: object, steps: object, candidates: object, method: object, position: object,
           column: object, options: dict[str, object]
           ) -> tuple[Any, str, Tensor, Tensor, Tensor, Optional[Tensor], int, int]:
    """Every argument check of :func:`das`, before any forward. Returns the hook point, the site's label (as given),
    the base and source tokens, the targets and candidates (:func:`_check_targets`), the readout position
    (0..seq-1) and the held-out count."""
    site = _as_site(model, site)
    base, source = _tokens(model, base, source)
    targets, candidates = _check_targets(model, base.shape[0], targets, candidates, loss, column)
    n_test = _check_options(base.shape[0], k, test_fraction, steps, method, **options)
    position = resolve_positions([position], base.shape[1], "position")[0]
    point = model.hook_point(site, base.shape[1])
    if point.spec.write_via is not None:
        raise InvalidArgumentError(f"DAS writes to the site's own hook; {site.label} is written through another hook "
                                   "(resid_mid): use resid_pre of the next layer or resid_post")
    axes = point.spec.axes
    if point.spec.unit_axis == len(axes) - 1 or axes[-1] == "key":
        raise InvalidArgumentError(f"DAS rotates a vector per position; {site.label} is a single entry of its hook")
    dim = hook_shape(point.spec, model.spec, 1, base.shape[1])[-1]
    if k > dim:
        raise InvalidArgumentError(f"k must be in 1..{dim} (the site's dimension); got {k}")
    return point, site.label, base, source, targets, candidates, position, n_test


def das(
    model: Any,
    base: Int[Tensor, "pair pos"],
    site: Any,
    *,
    source: Int[Tensor, "pair pos"],
    targets: Union[Int[Tensor, " pair"], Float[Tensor, " pair"]],
    k: int = 1,
    loss: str = "ce",
    candidates: Optional[Int[Tensor, "pair c"]] = None,
    position: int = -1,
    method: str = "auto",
    column: int = 0,
    tolerance: float = 0.02,
    steps: int = 200,
    lr: float = 0.01,
    batch_size: int = 64,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> DASResult:
    """Learn a ``k``-dimensional subspace of ``site`` whose interchange from ``source`` into ``base`` gives ``targets``.

    Args:
        model: the model (frozen: only the basis is trained).
        base, source: token ids of the pairs [pair, pos] (one length), or prompt strings for a model with a tokenizer.
        site: one site (e.g. ``Resid(1, "pre", pos=2)``, ``Head(0, 1, pos=3)``) or its label (``"L1.resid_pre@2"``):
            the subspace lives in its hook's last dimension, at its positions.
        targets: per pair, what the causal hypothesis says the intervened model outputs at ``position``: a token id
            (``loss="ce"``) or the value of logit ``column`` (``loss="mse"``).
        k: the subspace's dimension.
        candidates: ``loss="ce"`` only: per pair, the token ids the readout chooses among (e.g. the two names of an
            IOI prompt); the loss and the IIA are then over these logits only (the target must be one of them).
            None: over the whole vocabulary.
        position: the readout position: ``0..pos-1``, or ``-pos..-1`` from the end (never wrapped around).
        method: the training forward (:data:`DAS_METHODS`): "fast" (mechpatch's functional forward from the site's
            layer and position, with the base run's prefix cached), "hooks" (the bridge's whole forward), "auto".
        tolerance: ``loss="mse"``: a pair counts as right when the readout is within this of its target.
        steps, lr, batch_size: Adam steps over random batches of the training pairs.
        test_fraction, seed: the held-out share of pairs (seeded split) and the seed of the split, the basis's
            initialisation and the batches.

    Returns:
        :class:`DASResult`: the basis (orthonormal rows), held-out and training IIA, the loss curve.

    Raises:
        MechpatchError: a bad argument (:class:`InvalidArgumentError`, :class:`ShapeMismatchError`,
            :class:`SiteOutOfRangeError`, ...), naming it and what is valid, before any forward.
    """
    start = time.time()
    point, label, base, source, targets, candidates, position, n_test = _check(
        model, base, source, site, targets, k, loss, test_fraction, steps, candidates, method, position, column,
        dict(lr=lr, tolerance=tolerance, batch_size=batch_size, seed=seed))
    device = model.device
    candidates = None if candidates is None else candidates.to(device)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(base.shape[0], generator=g)
    test, train = order[:n_test], order[n_test:]
    base, source, targets = base.to(device), source.to(device), targets.to(device)
    forward = _Forward(model, point, base, source, position, method)
    src_act = forward.source
    torch.manual_seed(seed)
    rot = torch.nn.utils.parametrizations.orthogonal(torch.nn.Linear(k, src_act.shape[-1], bias=False, device=device,
                                                                     dtype=src_act.dtype))

    def readout(rows: Tensor, q: Tensor) -> Tensor:
        logits = forward.logits(rows, src_act[rows], q)
        if candidates is not None:
            return logits.gather(-1, candidates[rows])
        return logits if loss == "ce" else logits[:, column]

    params = [p for p in model.bridge.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        opt = torch.optim.Adam(rot.parameters(), lr=lr)
        losses = []
        for _ in range(steps):
            rows = train[torch.randint(0, len(train), (min(batch_size, len(train)),), generator=g)]
            out = readout(rows, rot.weight)
            value = torch.nn.functional.cross_entropy(out, targets[rows]) if loss == "ce" else \
                torch.nn.functional.mse_loss(out, targets[rows].to(out.dtype))
            opt.zero_grad()
            value.backward()
            opt.step()
            losses.append(float(value.detach()))
        with torch.no_grad():
            q = rot.weight.detach().clone()
            accuracy = {}
            for name, rows in (("train", train), ("test", test)):
                out = torch.cat([readout(r, q) for r in rows.split(batch_size)])
                hit = out.argmax(-1) == targets[rows] if loss == "ce" else \
                    (out - targets[rows].to(out.dtype)).abs() <= tolerance
                accuracy[name] = float(hit.double().mean())
    finally:
        for p in params:
            p.requires_grad_(True)
    return DASResult(label, q.T.contiguous().cpu(), accuracy["test"], accuracy["train"], losses, len(train),
                     len(test), time.time() - start)


class _Forward:
    """The training forward: the logits at ``position`` of base rows whose site takes its component in span(q) from
    the source run, ``h + ((h_source - h) q) q^T``.

    "fast" caches the base run's residual stream entering the site's layer and every layer's keys/values once, then
    runs mechpatch's functional forward (``patching.functional.run_blocks``) from that layer, for the positions from
    min(site, readout) on only: a patch changes nothing before its layer or its position in a causal model. "hooks"
    runs the bridge's whole forward with a hook. Gradients flow to ``q`` either way.
    """

    def __init__(self, model: Any, point: Any, base: Tensor, source: Tensor, position: int, method: str) -> None:
        from mechpatch.patching import fast
        from mechpatch.patching import functional as F_

        seq = base.shape[1]
        self.model, self.point, self.base = model, point, base
        self.idx = point.index(seq)
        self.position = resolve_positions([position], seq, "position")[0]  # never wraps around
        layer = point.site.layer_index
        reason, fm = fast.resolve(model) if method != "hooks" else ("method 'hooks' was asked for", None)
        if fm is not None and (layer is None or not fm.causal):
            reason, fm = "the site is not inside a block of a causal model", None
        if method == "fast" and fm is None:
            raise InvalidArgumentError(f"method 'fast' cannot train DAS here: {reason}; use 'hooks' or 'auto'")
        self.fm = fm
        if fm is None:
            with torch.no_grad():
                _, cache = model.bridge.run_with_cache(source, names_filter=point.name)
            self.source = cache[point.name][self.idx].detach()
            return
        pos = self.idx[point.spec.pos_axis]
        first = 0 if isinstance(pos, slice) else int(pos.min()) if isinstance(pos, Tensor) else int(pos)
        self.pos0 = min(first, self.position)
        self.layer = layer
        idx = list(self.idx)
        if not isinstance(pos, slice):
            idx[point.spec.pos_axis] = pos - self.pos0
        self.shifted = tuple(idx)
        names = {point.name, f"blocks.{layer}.hook_resid_pre"}
        acts = {}
        with torch.inference_mode():
            for tokens, key in ((source, "source"), (base, "base")):
                cache: dict[str, Tensor] = {}
                hooks = {n: (lambda t, n=n, cache=cache: cache.__setitem__(n, t.clone())) for n in names}
                x = F_.embed(fm, tokens, 0, F_.Hooks(hooks, None))
                _, kv = F_.run_blocks(fm, x, 0, None, 0, None, True, hooks)
                acts[key] = (cache, kv)
        self.source = acts["source"][0][point.name][self.idx].clone()
        self.resid = acts["base"][0][f"blocks.{layer}.hook_resid_pre"][:, self.pos0:].clone()
        self.kv = [None if kv is None or i < layer else (kv[0][:, :, :self.pos0].clone(),
                                                         kv[1][:, :, :self.pos0].clone())
                   for i, kv in enumerate(acts["base"][1])]  # the layers the training forward runs

    def logits(self, rows: Tensor, src: Tensor, q: Tensor) -> Float[Tensor, "row vocab"]:
        idx = self.idx if self.fm is None else self.shifted

        def write(act: Tensor, hook: object = None) -> Tensor:  # h + ((h_source - h) q) q^T at the site
            act = act.clone()
            h = act[idx]
            act[idx] = h + ((src - h) @ q) @ q.T
            return act

        if self.fm is None:
            return self.model.bridge.run_with_hooks(self.base[rows], fwd_hooks=[(self.point.name, write)])[
                :, self.position]
        from mechpatch.patching import functional as F_

        past = None if self.pos0 == 0 else [None if kv is None else (kv[0][rows], kv[1][rows]) for kv in self.kv]
        resid = F_.run_blocks(self.fm, self.resid[rows], self.layer, None, self.pos0, past, False,
                              {self.point.name: write})
        return F_.unembed(self.fm, resid[:, self.position - self.pos0])


def principal_cosines(a: Float[Tensor, "k d"], b: Float[Tensor, "m d"]) -> Float[Tensor, " r"]:
    """Cosines of the principal angles between the spans of the rows of ``a`` and ``b`` (largest first; 1: a shared
    direction). The subspace DAS finds is compared with a known one this way.

    >>> principal_cosines(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    tensor([1.], dtype=torch.float64)
    """
    qa = torch.linalg.qr(a.double().T).Q
    qb = torch.linalg.qr(b.double().T).Q
    return torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)


__all__ = ["DASResult", "DAS_METHODS", "LOSSES", "das", "principal_cosines"]
