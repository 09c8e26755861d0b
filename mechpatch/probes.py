"""Linear probes on cached activations, with control tasks and selectivity (Hewitt & Liang 2019).

A probe that reads a variable from an activation shows that the variable can be decoded there, not that the model
uses it: a probe can be as accurate where the information is only a lexical echo of the input. Hewitt & Liang's
answer is to fit the same probe on a *control task*, where every word type gets a label drawn at random (the same
label wherever the type occurs). A probe that scores well on the control task memorises types; **selectivity** is
the task's held-out accuracy less the control task's. Every probe here is fitted on the task and its control, on
the same split, with the same settings.

- :func:`control_labels`: the control task's labels, one random label per type, drawn from the task's label
  frequencies.
- :func:`fit_probe`: one probe on given features (logistic regression or a ridge classifier, from scikit-learn),
  with its held-out accuracy, the control accuracy, the majority baseline and the probe's directions (an
  orthonormal basis of the differences of its class weights, what its prediction depends on: for a causal check
  that removes them).
- :func:`probe_sites`: the same probe at several sites of a model, on activations cached at one position per
  prompt (:func:`~mechpatch.cache.cache_activations`), as a :class:`ProbeSweep` with a table and a figure.
- :func:`probe_effects`: the causal check beside the accuracy: each probe's directions removed from the model's
  run at its site and position (:class:`~mechpatch.patching.interventions.Subspace` with ``of=Zero()``, or swapped
  in from another run with ``of=Replace()``), and the metric's change.

>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(400, 8, generator=g)
>>> y = (x[:, 0] > 0).long()  # the variable lives along the first axis
>>> p = fit_probe(x, y, types=torch.randint(0, 100, (400,), generator=g))
>>> p.accuracy > 0.9, p.selectivity > 0.3, abs(float(p.directions[0, 0])) > 0.9
(True, True, True)
"""

import math
import numbers
import operator
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechpatch.cache import as_tokens, cache_activations
from mechpatch.errors import MechpatchError, choices
from mechpatch.patching.interventions import Zero
from mechpatch.sites import Site, resolve_positions, select

#: the probe kinds: scikit-learn's ``LogisticRegression`` and ``RidgeClassifier``
PROBE_KINDS = ("logistic", "ridge")


#: the seeds scikit-learn's solvers accept
_SEEDS = range(2**32)


class ProbeError(MechpatchError, ValueError):
    """A probe cannot be fitted as asked (one class, mismatched shapes, an unknown kind, no held-out examples, an
    option outside its range, non-finite features, a site that is not one vector per position)."""


def control_labels(types: Union[Int[Tensor, " example"], Sequence[Hashable]], labels: Int[Tensor, " example"], *,
                   seed: int = 0) -> Int[Tensor, " example"]:
    """Hewitt & Liang's control task: each distinct type gets one label, drawn at random from the task's label
    frequencies, and every example of that type carries it.

    >>> control_labels(["a", "b", "a", "c"], torch.tensor([0, 1, 1, 0]), seed=1)[[0, 2]].unique().numel()
    1
    """
    labels = _labels(labels)
    keys = types.tolist() if isinstance(types, Tensor) else list(types)
    if len(keys) != len(labels):
        raise ProbeError(f"{len(keys)} types for {len(labels)} labels: give one type per example")
    distinct = list(dict.fromkeys(keys))
    g = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    drawn = classes[torch.multinomial(counts.double(), len(distinct), replacement=True, generator=g)]
    of_type = dict(zip(distinct, drawn.tolist()))
    return torch.tensor([of_type[k] for k in keys])


@dataclass(frozen=True)
class Probe:
    """A fitted probe: held-out accuracy, the control task's, and the directions it reads."""

    site: str
    kind: str
    accuracy: float  # held-out
    train_accuracy: float
    control_accuracy: Optional[float]  # held-out, on the control task (None: no types given)
    majority: float  # held-out accuracy of always answering the most frequent training label
    directions: Float[Tensor, "direction d"]  # orthonormal rows spanning what it reads (classes - 1 of them)
    classes: tuple
    n_train: int
    n_test: int

    @property
    def selectivity(self) -> Optional[float]:
        """Task accuracy less control accuracy (None without a control task)."""
        return None if self.control_accuracy is None else self.accuracy - self.control_accuracy

    def __repr__(self) -> str:
        control = "" if self.control_accuracy is None else (f", control {self.control_accuracy:.3f}, selectivity "
                                                           f"{self.selectivity:.3f}")
        return (f"Probe({self.site}: {self.kind}, held-out accuracy {self.accuracy:.3f}{control}, majority "
                f"{self.majority:.3f}, {self.n_train} train / {self.n_test} test)")


def _labels(labels: object) -> Tensor:
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ProbeError(f"labels must be an integer tensor [example]; got {_describe(labels)}")
    return labels.cpu()


def _describe(x: object) -> str:
    return f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def _finite_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _check_options(kind: object, test_fraction: object, seed: object, C: object) -> None:
    """Refuse an unknown kind, or a test fraction, seed or C outside its range (before any work)."""
    if not isinstance(kind, str) or kind not in PROBE_KINDS:
        raise ProbeError(f"unknown probe kind {kind!r}; valid: {choices(PROBE_KINDS)}")
    if not _finite_number(test_fraction) or not 0.0 < test_fraction < 1.0:
        raise ProbeError(f"test_fraction must be a number in (0, 1), the share of examples held out; got "
                         f"{test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed not in _SEEDS:
        raise ProbeError(f"seed must be an int in 0..{_SEEDS[-1]}; got {seed!r}")
    if not _finite_number(C) or not C > 0:
        raise ProbeError(f"C (the inverse regularisation strength) must be a positive finite number; got {C!r}")


def _check_types(types: object, n: int) -> None:
    if types is None:
        return
    if isinstance(types, (str, bytes)) or not hasattr(types, "__len__") or (isinstance(types, Tensor)
                                                                            and types.ndim != 1):
        raise ProbeError(f"types must hold one type per example (a tensor [example] or a list); got "
                         f"{_describe(types)}")
    if len(types) != n:
        raise ProbeError(f"{len(types)} types for {n} labels: give one type per example")


def _split(y: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """The seeded (train, test) split of ``y``'s examples; refuses one class or a side too small to use."""
    if torch.unique(y).numel() < 2:
        raise ProbeError(f"labels hold one class ({int(y[0]) if len(y) else 'none'}): a probe needs at least two")
    n = len(y)
    n_test = round(n * test_fraction)
    if n_test < 1 or n - n_test < 2:
        raise ProbeError(f"{n} examples with test_fraction {test_fraction} leave {n - n_test} to fit and {n_test} to "
                         "test: give more examples")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    test, train = order[:n_test], order[n_test:]
    if torch.unique(y[train]).numel() < 2:
        raise ProbeError("the training split holds one class: give more examples of each class")
    return train, test


def _classifier(kind: str, C: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression, RidgeClassifier

    if kind == "logistic":
        return LogisticRegression(C=C, max_iter=5000, random_state=seed)
    return RidgeClassifier(alpha=1.0 / C)


def fit_probe(
    features: Float[Tensor, "example d"],
    labels: Int[Tensor, " example"],
    *,
    types: Union[Int[Tensor, " example"], Sequence[Hashable], None] = None,
    kind: str = "logistic",
    test_fraction: float = 0.25,
    seed: int = 0,
    C: float = 1.0,
    site: str = "features",
) -> Probe:
    """Fit a linear probe for ``labels`` on ``features`` and, given ``types``, the same probe on their control task.

    Args:
        features: one activation vector per example.
        labels: the variable's class per example (at least two classes).
        types: each example's type (e.g. its token id, or the word it is about): the control task gives each type
            one random label (:func:`control_labels`); None fits no control (no selectivity).
        kind: ``"logistic"`` (L2-regularised logistic regression) or ``"ridge"`` (a ridge classifier).
        test_fraction: share of the examples held out (a seeded random split, the same for task and control).
        seed: seeds the split, the control labels and the solver.
        C: inverse regularisation strength (ridge: ``alpha = 1 / C``).
        site: the label the probe carries (the site it was fitted at).

    Returns:
        :class:`Probe`.

    Raises:
        ProbeError: shapes disagree, fewer than two classes, an unknown kind, a test fraction, seed or C outside
            its range, features that are not all finite, or a split that leaves no example on one side.
    """
    _check_options(kind, test_fraction, seed, C)
    if not isinstance(features, Tensor) or features.ndim != 2 or not features.dtype.is_floating_point:
        raise ProbeError(f"features must be a float tensor [example, d]; got {_describe(features)}")
    y = _labels(labels)
    if len(y) != features.shape[0]:
        raise ProbeError(f"{features.shape[0]} feature rows for {len(y)} labels: give one label per example")
    _check_types(types, len(y))
    bad = ~torch.isfinite(features).all(1)
    if bad.any():
        what = "features" if site == "features" else f"activations at {site}"
        raise ProbeError(f"{what} are not finite (NaN or inf) in {int(bad.sum())} of {len(y)} examples (rows "
                         f"{choices(bad.nonzero().flatten().tolist(), limit=6)}): a probe needs finite activations")
    seed, C = int(seed), float(C)
    train, test = _split(y, test_fraction, seed)
    x = features.detach().to("cpu", torch.float64).numpy()
    clf = _classifier(kind, C, seed).fit(x[train], y[train].numpy())
    control = None
    if types is not None:
        yc = control_labels(types, y, seed=seed)
        if torch.unique(yc[train]).numel() > 1:
            ctl = _classifier(kind, C, seed).fit(x[train], yc[train].numpy())
            control = float((ctl.predict(x[test]) == yc[test].numpy()).mean())
        else:  # every training type drew one label: the control probe answers it everywhere
            control = float((yc[test] == yc[train][0]).double().mean())
    values, counts = torch.unique(y[train], return_counts=True)
    majority = float((y[test] == values[counts.argmax()]).double().mean())
    coef = torch.as_tensor(clf.coef_, dtype=torch.float64).reshape(-1, x.shape[1])  # ridge: [d] for two classes
    # the prediction (an argmax over class scores) depends only on differences of class weights: with k > 1 rows,
    # the k - 1 differences span what the probe reads; an orthonormal basis of them
    span = coef if coef.shape[0] == 1 else coef[1:] - coef[:1]
    directions = torch.linalg.qr(span.T).Q.T
    return Probe(site, kind, float((clf.predict(x[test]) == y[test].numpy()).mean()),
                 float((clf.predict(x[train]) == y[train].numpy()).mean()), control, majority, directions,
                 tuple(int(c) for c in clf.classes_), len(train), len(test))


@dataclass(frozen=True)
class ProbeSweep:
    """Probes of one variable at several sites (:func:`probe_sites`), and their causal effects once measured
    (:func:`probe_effects`: the metric's change when the probe's directions are removed)."""

    probes: dict[str, Probe]
    position: Union[int, list[int]]
    sites: tuple = ()
    effects: Optional[dict[str, float]] = None

    def to_dataframe(self) -> Any:
        """One row per site: accuracy, control accuracy, selectivity, majority baseline, examples (and the causal
        effect, once measured)."""
        import pandas as pd

        return pd.DataFrame([{"site": s, "accuracy": p.accuracy, "control_accuracy": p.control_accuracy,
                              "selectivity": p.selectivity, "majority": p.majority, "train_accuracy": p.train_accuracy,
                              "n_train": p.n_train, "n_test": p.n_test,
                              **({} if self.effects is None else {"effect": self.effects[s]})}
                             for s, p in self.probes.items()])

    def figure(self, title: str = "probe accuracy by site") -> Any:
        """Held-out accuracy, control accuracy and selectivity per site (plotly)."""
        import plotly.graph_objects as go

        df = self.to_dataframe()
        fig = go.Figure()
        for column, name in (("accuracy", "task"), ("control_accuracy", "control task"),
                             ("selectivity", "selectivity"), ("majority", "majority baseline")):
            if df[column].notna().any():
                fig.add_trace(go.Scatter(x=df["site"], y=df[column], mode="lines+markers", name=name))
        fig.update_layout(title=title, xaxis_title="site", yaxis_title="held-out accuracy", yaxis_range=[-0.05, 1.05])
        if self.effects is not None:  # the causal check, on its own axis (metric units)
            fig.add_trace(go.Bar(x=df["site"], y=df["effect"], name="effect of removing the directions",
                                 yaxis="y2", opacity=0.4))
            fig.update_layout(yaxis2=dict(title="metric change", overlaying="y", side="right"))
        return fig

    def __repr__(self) -> str:
        return "ProbeSweep(\n" + "\n".join(f"  {p!r}" for p in self.probes.values()) + "\n)"


def probe_sites(
    model: Any,
    base: Any,
    sites: Union[str, Site, Iterable[Union[str, Site]]],
    *,
    labels: Int[Tensor, " prompt"],
    position: Union[int, Int[Tensor, " prompt"]] = -1,
    types: Union[Int[Tensor, " prompt"], Sequence[Hashable], None] = None,
    kind: str = "logistic",
    test_fraction: float = 0.25,
    seed: int = 0,
    C: float = 1.0,
    batch_size: int = 32,
    memory_budget: Union[int, str, None] = None,
) -> ProbeSweep:
    """The same probe for ``labels`` at each of ``sites``, on one activation vector per prompt.

    Every argument is checked before the model runs: a bad option costs no caching.

    Args:
        model, base: the model and its prompts (token ids [prompt, pos] or strings of one length).
        sites: sites whose activation is one vector per position (``Resid``, ``Attn``, ``Mlp``, ``Head`` ...), as
            sites or site strings (``"L1.resid_post"``, ``"L*.resid_pre"``; see :func:`~mechpatch.sites.select`).
        labels: the variable's class per prompt.
        position: the position read in every prompt (negative: from the end), or one position per prompt (an
            integer tensor [prompt]).
        types, kind, test_fraction, seed, C: as :func:`fit_probe` (``types`` default: the token at ``position``,
            Hewitt & Liang's word types).
        batch_size, memory_budget: of the caching run (:func:`~mechpatch.cache.cache_activations`).

    Raises:
        ProbeError: the labels, types or position tensor do not match the prompts, an option of :func:`fit_probe`
            is refused, or a site's activation is not one vector per position.
        SiteOutOfRangeError: a position outside the prompts.
        InvalidArgumentError: a position that is not an int (a bool, a float).
    """
    tokens = as_tokens(model, base)
    n, seq = tokens.shape
    y = _labels(labels)
    if len(y) != n:
        raise ProbeError(f"{len(y)} labels for {n} prompts: give one label per prompt")
    if isinstance(position, Tensor):
        if position.shape != (n,):
            raise ProbeError(f"position must be an int or an integer tensor [prompt] ({n} here); got "
                             f"{_describe(position)}")
        pos = torch.tensor(resolve_positions(position.tolist(), seq, unique=False), dtype=torch.long)
    else:
        pos = torch.full((n,), resolve_positions([position], seq)[0])
        position = operator.index(position)  # an int now (numpy integers too)
    _check_options(kind, test_fraction, seed, C)
    _check_types(types, n)
    _split(y, test_fraction, seed)  # the split every site's probe uses: refused now, not after caching
    sites = _vector_sites(model, sites, seq)
    types = tokens.cpu()[torch.arange(n), pos] if types is None else types
    cache = cache_activations(model, tokens, sites, batch_size=batch_size, memory_budget=memory_budget,
                              progress=False)
    probes = {}
    for site in sites:
        act = cache[site]
        probes[site.label] = fit_probe(act[torch.arange(n), pos.to(act.device)], y, types=types, kind=kind,
                                       test_fraction=test_fraction, seed=seed, C=C, site=site.label)
    return ProbeSweep(probes, pos.tolist() if isinstance(position, Tensor) else position, tuple(sites))


def _vector_sites(model: Any, sites: Any, seq: int) -> list[Site]:
    """``sites`` (sites or site strings) validated against ``model``, each one vector per prompt and position."""
    items = [sites] if isinstance(sites, (str, Site)) else list(sites) if isinstance(sites, Iterable) else None
    if items is None or not all(isinstance(s, (str, Site)) for s in items):
        raise ProbeError(f"sites must be sites or site strings (e.g. Resid(1, 'post') or 'L1.resid_post'); got "
                         f"{sites!r}")
    out = select(model.spec, items)
    for site in out:
        point = model.hook_point(site, seq)
        axes = [a for i, a in enumerate(point.spec.axes) if i != point.spec.unit_axis]
        if site.pos is not None or len(axes) != 3 or axes[:2] != ["batch", "pos"]:
            raise ProbeError(f"site {site.label} is not one vector per prompt and position (its activation is "
                             f"[{', '.join(axes)}]{', at fixed positions' if site.pos is not None else ''}): probe a "
                             "residual, attention, MLP or head output site, without positions (position= picks "
                             "the position)")
    return out


def probe_effects(
    model: Any,
    base: Any,
    sweep: ProbeSweep,
    *,
    metric: Any,
    source: Any = None,
    intervention: Any = Zero(),
    answers: Optional[Int[Tensor, "prompt answer"]] = None,
    method: str = "auto",
) -> ProbeSweep:
    """The causal check of each probe of ``sweep``: the subspace of its directions, in ``base``'s run at its site
    and position, set by ``intervention`` (``Zero()``, the default: removed; ``Replace()``: swapped in from
    ``source``), and the metric's change (mean over prompts, metric units). Returns the sweep with ``effects``.

    A probe can be accurate where the model does not use the information: an accurate probe whose removal changes
    nothing is the warning sign this check is for.

    Raises:
        ProbeError: the sweep read one position per prompt (a patch needs one position for all prompts).
    """
    import dataclasses

    from mechpatch.patching import run_patches
    from mechpatch.patching.interventions import Subspace

    if not isinstance(sweep.position, int):
        raise ProbeError("the probes read a different position in each prompt; the causal check patches one position "
                         "in all of them: probe with position=<int>")
    effects = {}
    for site in sweep.sites:
        probe = sweep.probes[site.label]
        iv = Subspace(probe.directions.float(), of=intervention)
        run = run_patches(model, base, [[dataclasses.replace(site, pos=sweep.position)]], metric=metric,
                          source=source, intervention=iv, answers=answers, method=method, progress=False)
        effects[site.label] = float(run.values.double().mean() - run.base_values.double().mean())
    return dataclasses.replace(sweep, effects=effects)


__all__ = ["PROBE_KINDS", "Probe", "ProbeError", "ProbeSweep", "control_labels", "fit_probe", "probe_effects",
           "probe_sites"]
