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

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechpatch.errors import InvalidArgumentError, ShapeMismatchError, choices

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


def _check(model: Any, base: Tensor, source: Tensor, site: Any, targets: Tensor, k: int, loss: str,
           test_fraction: float, steps: int, candidates: Optional[Tensor], method: str) -> Any:
    if loss not in LOSSES:
        raise InvalidArgumentError(f"unknown DAS loss {loss!r}; valid: {choices(LOSSES)}")
    if candidates is not None:
        if loss != "ce":
            raise InvalidArgumentError("candidates restrict the readout to token ids: they go with loss 'ce'")
        if candidates.ndim != 2 or candidates.shape[0] != base.shape[0] or candidates.shape[1] < 2 or \
                candidates.dtype.is_floating_point:
            raise ShapeMismatchError(f"candidates must be token ids [pair, c] with c >= 2 ({base.shape[0]} pairs); "
                                     f"got {tuple(candidates.shape)} of {candidates.dtype}")
        missing = ~(candidates == targets[:, None]).any(-1)
        if missing.any():
            raise InvalidArgumentError(f"each pair's target must be one of its candidates; {int(missing.sum())} are "
                                       f"not (first: pair {int(missing.nonzero()[0])})")
    if base.shape != source.shape or base.ndim != 2:
        raise ShapeMismatchError(f"base {tuple(base.shape)} and source {tuple(source.shape)} must be token ids of one "
                                 "shape [pair, pos]")
    if targets.shape[0] != base.shape[0] or targets.ndim != 1:
        raise ShapeMismatchError(f"targets must hold one value per pair ({base.shape[0]}); got {tuple(targets.shape)}")
    if loss == "ce" and targets.dtype.is_floating_point:
        raise InvalidArgumentError("loss 'ce' takes target token ids (an integer tensor); for values use loss 'mse'")
    point = model.hook_point(site, base.shape[1])
    if point.spec.write_via is not None:
        raise InvalidArgumentError(f"DAS writes to the site's own hook; {site.label} is written through another hook "
                                   "(resid_mid): use resid_pre of the next layer or resid_post")
    axes = point.spec.axes
    if point.spec.unit_axis == len(axes) - 1 or axes[-1] == "key":
        raise InvalidArgumentError(f"DAS rotates a vector per position; {site.label} is a single entry of its hook")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidArgumentError(f"k must be a positive int (the subspace's dimension); got {k!r}")
    if not 0.0 < test_fraction < 1.0:
        raise InvalidArgumentError(f"test_fraction must be in (0, 1); got {test_fraction!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidArgumentError(f"steps must be a positive int; got {steps!r}")
    if method not in DAS_METHODS:
        raise InvalidArgumentError(f"unknown DAS method {method!r}; valid: {choices(DAS_METHODS)}")
    return point


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
        base, source: token ids of the pairs [pair, pos] (one length).
        site: one site (e.g. ``Resid(1, "pre", pos=2)``, ``Head(0, 1, pos=3)``): the subspace lives in its hook's
            last dimension, at its positions.
        targets: per pair, what the causal hypothesis says the intervened model outputs at ``position``: a token id
            (``loss="ce"``) or the value of logit ``column`` (``loss="mse"``).
        k: the subspace's dimension.
        candidates: ``loss="ce"`` only: per pair, the token ids the readout chooses among (e.g. the two names of an
            IOI prompt); the loss and the IIA are then over these logits only (the target must be one of them).
            None: over the whole vocabulary.
        position: the readout position.
        method: the training forward (:data:`DAS_METHODS`): "fast" (mechpatch's functional forward from the site's
            layer and position, with the base run's prefix cached), "hooks" (the bridge's whole forward), "auto".
        tolerance: ``loss="mse"``: a pair counts as right when the readout is within this of its target.
        steps, lr, batch_size: Adam steps over random batches of the training pairs.
        test_fraction, seed: the held-out share of pairs (seeded split) and the seed of the split, the basis's
            initialisation and the batches.

    Returns:
        :class:`DASResult`: the basis (orthonormal rows), held-out and training IIA, the loss curve.
    """
    start = time.time()
    point = _check(model, base, source, site, targets, k, loss, test_fraction, steps, candidates, method)
    if candidates is not None:  # the readout is over the candidates: the target becomes its index among them
        candidates = candidates.to(model.device)
        targets = (candidates == targets.to(model.device)[:, None]).int().argmax(-1)
    g = torch.Generator().manual_seed(seed)
    n = base.shape[0]
    order = torch.randperm(n, generator=g)
    n_test = max(1, round(n * test_fraction))
    test, train = order[:n_test], order[n_test:]
    device = model.device
    base, source, targets = base.to(device), source.to(device), targets.to(device)
    forward = _Forward(model, point, base, source, position, method)
    src_act = forward.source
    dim = src_act.shape[-1]
    if not 1 <= k <= dim:
        raise InvalidArgumentError(f"k must be in 1..{dim} (the site's dimension); got {k}")
    torch.manual_seed(seed)
    rot = torch.nn.utils.parametrizations.orthogonal(torch.nn.Linear(k, dim, bias=False, device=device,
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
    return DASResult(site.label, q.T.contiguous().cpu(), accuracy["test"], accuracy["train"], losses, len(train),
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
        self.position = position % seq
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
