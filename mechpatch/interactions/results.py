"""What an interaction analysis returns: a sparse set function over named components, and its interactions.

Sign conventions (tested on hand-built AND/OR functions in ``tests/interactions/test_basis.py``):

- ``effect`` of a term T is its **Moebius coefficient at the base run** in the patched indicators ``z``:
  the part of patching all of T together that no subset explains. For a pair,
  ``effect = f(ij) - f(i) - f(j) + f(base)``: exactly what exhaustive pairwise patching measures.
- ``score`` re-signs it so that it reads the same whatever the direction and metric: it is the
  coefficient of ``prod_{i in T} (x_i - x_i^base)`` in the **presence** indicators ``x`` (1 = component
  intact / clean), times +1 when a higher metric means more of the clean behaviour and -1 when lower
  does (loss, KL divergence). So ``score = polarity * (-1)^|T| * effect`` when noising
  (``direction="noise"``) and ``polarity * effect`` when denoising (``direction="denoise"``).
- **kind**: a single component is ``"main"`` (its score is its importance: how much the behaviour
  loses when it alone is ablated, or gains when it alone is restored). A larger set is ``"synergy"``
  when ``score > 0`` (AND-like: the components are needed together, so each alone looks as important
  as the whole set) and ``"redundancy"`` when ``score < 0`` (OR-like: any one can stand in for the
  others, so each alone looks unimportant).

Worked example, noising with a log-probability metric (higher = better): heads A, B are backups for each
other, D = 1: ablating A alone or B alone costs nothing, both costs D. ``effect(AB) = -D - 0 - 0 + 0 = -1``,
``score = +1 * (-1)^2 * -1 = -1``: redundancy. Had the behaviour needed both, ablating either would cost D:
``effect(AB) = -D + D + D = +1``: synergy.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechpatch.interactions.basis import (
    INDICES,
    InteractionError,
    Term,
    as_term,
    check_choice,
    game_from_base,
    interaction_index,
)
from mechpatch.interactions.fit import FourierFit, r2_score
from mechpatch.patching.interventions import check_direction

KINDS = ("main", "synergy", "redundancy")


def _check_k(k: object) -> None:
    """Refuse a count of terms to show that is not a non-negative int (a negative one would cut from the end)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InteractionError(f"k must be a non-negative int (how many terms); got {k!r}")


@dataclass(frozen=True)
class Interaction:
    """One term of an interaction model (see the module docstring for the signs)."""

    term: Term
    labels: tuple[str, ...]
    effect: float
    score: float

    @property
    def order(self) -> int:
        return len(self.term)

    @property
    def kind(self) -> str:
        if self.order == 1:
            return "main"
        return "synergy" if self.score > 0 else "redundancy"

    @property
    def label(self) -> str:
        return " x ".join(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {"term": list(self.term), "components": list(self.labels), "order": self.order,
                "effect": self.effect, "score": self.score, "kind": self.kind}


@dataclass(frozen=True, eq=False)
class InteractionModel:
    """A set function over named components, as Moebius effects at the base run, with its provenance.

    ``moebius`` maps terms (sorted component-index tuples; ``()`` = the base run's value) to base-corner
    Moebius coefficients. ``method`` is ``"sparse"`` (fitted from random masks), ``"exhaustive"`` (measured:
    exact up to ``order``) or a backend's name. ``evaluations`` counts masks run (distinct, non-empty),
    ``forwards`` the engine's forward passes (None for a plain value function).
    """

    components: tuple[str, ...]
    moebius: dict[Term, float]
    direction: str = "noise"
    higher_is_better: bool = True
    method: str = "sparse"
    order: int = 2
    r2: Optional[float] = None  # on held-out masks
    evaluations: int = 0
    forwards: Optional[int] = None
    seconds: Optional[float] = None
    fourier: Optional[FourierFit] = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_direction(self.direction)

    @property
    def n_components(self) -> int:
        return len(self.components)

    @property
    def polarity(self) -> int:
        return 1 if self.higher_is_better else -1

    @property
    def base_value(self) -> float:
        return self.moebius.get((), 0.0)

    def score_of(self, term: Term, effect: float) -> float:
        flip = (-1) ** len(term) if self.direction == "noise" else 1
        return self.polarity * flip * effect

    def _interaction(self, term: Term) -> Interaction:
        effect = self.moebius.get(term, 0.0)
        return Interaction(term, tuple(self.components[i] for i in term), effect, self.score_of(term, effect))

    def effect(self, *components: object) -> float:
        """The Moebius effect of a set of components, given by index or label.

        >>> m = InteractionModel(("A", "B"), {(): 1.0, (0, 1): -1.0})
        >>> m.effect("A", "B"), m.effect(0)
        (-1.0, 0.0)
        """
        return self.moebius.get(self._term(components), 0.0)

    def _term(self, components: Sequence[object]) -> Term:
        idx = []
        for c in components:
            if isinstance(c, int) and not isinstance(c, bool):
                if not 0 <= c < self.n_components:
                    raise InteractionError(f"component {c} out of range 0..{self.n_components - 1}")
                idx.append(c)
            elif str(c) in self.components:
                idx.append(self.components.index(str(c)))
            else:
                raise InteractionError(f"unknown component {c!r}; valid: {', '.join(self.components[:12])}"
                                       + (", ..." if self.n_components > 12 else ""))
        return as_term(idx)

    def interaction(self, *components: object) -> Interaction:
        """The term of a set of components (indices or labels), with its effect, score and kind.

        >>> m = InteractionModel(("A", "B"), {(): 1.0, (0, 1): -1.0})  # noising: A and B back each other up
        >>> m.interaction("A", "B").kind
        'redundancy'
        """
        return self._interaction(self._term(components))

    def mains(self) -> list[Interaction]:
        """Every component's main effect, in component order."""
        return [self._interaction((i,)) for i in range(self.n_components)]

    def interactions(self, order: Optional[int] = None, kind: Optional[str] = None) -> list[Interaction]:
        """Terms of order >= 2 (or exactly ``order``: 1 gives the main effects), strongest ``|effect|`` first,
        optionally of one ``kind``."""
        if kind is not None:
            check_choice("kind", kind, KINDS[1:])
        if order is not None and (isinstance(order, bool) or not isinstance(order, int) or order < 1):
            raise InteractionError(f"order must be a positive int (1: main effects, 2: pairs...) or None; got {order!r}")
        terms = [t for t in self.moebius if (len(t) >= 2 if order is None else len(t) == order)]
        out = [self._interaction(t) for t in terms if self.moebius[t] != 0.0]
        out = [i for i in out if kind is None or i.kind == kind]
        return sorted(out, key=lambda i: -abs(i.effect))

    def top(self, k: int = 10, order: Optional[int] = None) -> list[Interaction]:
        """The ``k`` strongest interactions (order >= 2 unless ``order`` is given)."""
        _check_k(k)
        return self.interactions(order)[:k]

    def restrict(self, components: Sequence[object]) -> "InteractionModel":
        """The model on a subset of its components (indices or labels, in the order given), the others left intact:
        the terms within the subset, re-indexed (to compare with ground truth measured on that subset).

        >>> m = InteractionModel(("A", "B", "C"), {(): 1.0, (0, 2): -1.0, (1, 2): 0.5})
        >>> m.restrict(["C", "A"]).moebius
        {(): 1.0, (0, 1): -1.0}
        """
        keep = [self._term([c])[0] for c in components]
        if len(set(keep)) != len(keep):
            raise InteractionError(f"restrict names a component twice: {list(components)}")
        where = {c: i for i, c in enumerate(keep)}
        moebius = {as_term([where[i] for i in t]): v for t, v in self.moebius.items() if all(i in where for i in t)}
        return replace(self, components=tuple(self.components[i] for i in keep), moebius=moebius, fourier=None)

    def pair_matrix(self) -> Float[Tensor, "component component"]:
        """Symmetric N x N matrix of pair effects (zero diagonal)."""
        out = torch.zeros(self.n_components, self.n_components, dtype=torch.float64)
        for t, c in self.moebius.items():
            if len(t) == 2:
                out[t[0], t[1]] = out[t[1], t[0]] = c
        return out

    def predict(self, masks: Bool[Tensor, "mask component"]) -> Float[Tensor, " mask"]:
        """The model's value of each mask (True = patched), from its Moebius terms."""
        if masks.ndim != 2 or masks.shape[1] != self.n_components:
            raise InteractionError(f"masks must be [mask, {self.n_components}]; got {tuple(masks.shape)}")
        out = torch.zeros(masks.shape[0], dtype=torch.float64)
        z = masks.bool()
        for t, c in self.moebius.items():
            out += c * (z[:, list(t)].all(1).double() if t else 1.0)
        return out

    def r2_on(self, masks: Bool[Tensor, "mask component"], values: Float[Tensor, " mask"]) -> float:
        """R^2 of the model's predictions on (mask, value) pairs."""
        return r2_score(self.predict(masks), values)

    def game(self) -> dict[Term, float]:
        """Moebius coefficients of the presence game (``x_i = 1``: component intact), the game of Shapley indices."""
        return game_from_base(self.moebius, self.direction)

    def shapley(self, order: int = 1, index: str = "shapley") -> dict[Term, float]:
        """Shapley values (``order=1``) or Shapley-style interaction indices of every term of ``order``.

        ``index``: ``"shapley"`` (Shapley interaction index), ``"banzhaf"`` or ``"moebius"``. Computed exactly
        from the model's (sparse) Moebius coefficients; signed by ``higher_is_better`` like ``score``.

        >>> m = InteractionModel(("A", "B"), {(): 0.0, (0, 1): 1.0}, direction="denoise")  # AND
        >>> m.shapley()
        {(0,): 0.5, (1,): 0.5}
        """
        check_choice("index", index, INDICES)
        if order < 1 or order > max(self.order, 1):
            raise InteractionError(f"order must be in 1..{max(self.order, 1)} for this model, got {order}")
        game = self.game()
        if order == 1:
            terms: list[Term] = [(i,) for i in range(self.n_components)]
        else:
            terms = sorted({tuple(s) for t in game if len(t) >= order for s in _subsets(t, order)})
        return {t: self.polarity * interaction_index(game, t, index) for t in terms}

    def to_dict(self, k: int = 50) -> dict[str, Any]:
        """A JSON-ready summary: provenance, fit quality, main effects and the ``k`` strongest interactions."""
        return {
            "method": self.method, "direction": self.direction, "higher_is_better": self.higher_is_better,
            "order": self.order, "n_components": self.n_components, "components": list(self.components),
            "evaluations": self.evaluations, "forwards": self.forwards, "seconds": self.seconds,
            "r2_heldout": self.r2, "base_value": self.base_value, "n_terms": len(self.moebius),
            "mains": [i.to_dict() for i in self.mains()], "top": [i.to_dict() for i in self.top(k)],
            "info": self.info,
        }

    def to_json(self, path: str, k: int = 50) -> None:
        from mechpatch.report import write_json

        write_json(path, json.loads(json.dumps(self.to_dict(k), default=float)))

    def summary(self, k: int = 10) -> str:
        """A few lines: fit quality, cost, and the ``k`` strongest interactions with their kinds."""
        _check_k(k)
        head = f"{self.method} interactions over {self.n_components} components ({self.direction})"
        cost = f"{self.evaluations} evaluations" + (f", {self.forwards} forwards" if self.forwards is not None else "")
        r2 = f", held-out R^2 {self.r2:.4f}" if self.r2 is not None else ""
        rows = [f"  {i.label:<28} {i.kind:<10} effect {i.effect:+.4f}" for i in self.top(k)]
        return "\n".join([f"{head}: {cost}{r2}", *rows])

    def _html_table(self, k: int = 10) -> str:
        """The summary line, then the ``k`` strongest interactions (kind, effect, score), as HTML (the notebook
        display, with the pair matrix, is :mod:`mechpatch.display`'s)."""
        import html

        from mechpatch.report import html_table

        head = html.escape(self.summary(0))
        rows = [(i.label, i.kind, f"{i.effect:+.4g}", f"{i.score:+.4g}") for i in self.top(k)]
        return f"<p>{head}</p>" + html_table(["interaction", "kind", "effect", "score"], rows)


def _subsets(term: Term, k: int) -> list[Term]:
    from itertools import combinations

    return list(combinations(term, k))


def compare(estimate: InteractionModel, truth: InteractionModel, k: int = 5, order: int = 2) -> dict[str, float]:
    """How well ``estimate`` reproduces ``truth`` on the terms of ``order`` (truth usually exhaustive).

    Returns ``topk_overlap`` (share of truth's ``k`` strongest terms, by ``|effect|``, among the estimate's
    ``k`` strongest), ``topk_sign`` (share of truth's top ``k`` whose sign the estimate gets right),
    ``spearman`` (rank correlation of the effects over every term of that order, absent = 0),
    ``spearman_top`` (the same over the union of both top ``k``: most terms of a large model are near zero in
    both, and their ranks are noise) and ``max_abs_error``.

    ``k`` and ``order`` are ints >= 1 (``k`` above the number of terms compares them all).
    """
    for name, model in (("estimate", estimate), ("truth", truth)):
        if not isinstance(model, InteractionModel):
            raise InteractionError(f"{name} must be an InteractionModel; got {type(model).__name__}")
    for name, value in (("k", k), ("order", order)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InteractionError(f"{name} must be an int >= 1; got {value!r}")
    if estimate.components != truth.components:
        raise InteractionError("the two models are over different components; compare like with like")
    n = truth.n_components
    from itertools import combinations

    terms = list(combinations(range(n), order))
    if not terms:
        raise InteractionError(f"no terms of order {order} over {n} components")
    est = torch.tensor([estimate.moebius.get(t, 0.0) for t in terms], dtype=torch.float64)
    tru = torch.tensor([truth.moebius.get(t, 0.0) for t in terms], dtype=torch.float64)
    k = min(k, len(terms))
    top_t = set(torch.topk(tru.abs(), k).indices.tolist())
    top_e = set(torch.topk(est.abs(), k).indices.tolist())
    sign = sum(1 for i in top_t if est[i] * tru[i] > 0) / k
    union = torch.tensor(sorted(top_t | top_e))
    return {"topk_overlap": len(top_t & top_e) / k, "topk_sign": sign, "spearman": spearman(est, tru),
            "spearman_top": spearman(est[union], tru[union]), "max_abs_error": float((est - tru).abs().max()),
            "k": k}


def _ranks(x: Tensor) -> Tensor:
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    # average the ranks of ties
    uniq, inv = torch.unique(x, return_inverse=True)
    mean = torch.zeros(len(uniq), dtype=x.dtype).index_add_(0, inv, ranks)
    count = torch.zeros(len(uniq), dtype=x.dtype).index_add_(0, inv, torch.ones_like(ranks))
    return (mean / count)[inv]


def spearman(a: Float[Tensor, " n"], b: Float[Tensor, " n"]) -> float:
    """Spearman rank correlation (ties get their mean rank).

    >>> round(spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0])), 6)
    0.5
    """
    ra, rb = _ranks(a.double()), _ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float(ra @ rb) / den if den > 0 else 0.0
