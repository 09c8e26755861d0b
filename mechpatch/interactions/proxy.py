"""The proxy backend (after ProxySPEX, Butler et al. 2025): fit gradient-boosted trees to mask -> value, read the
interactions out of the trees, then refit the strongest of them.

Trees on 0/1 inputs are sums of leaves, and a leaf is a product of literals along its path: ``x_i`` where the path
goes right at component ``i`` (ablated), ``1 - x_i`` where it goes left (intact). Expanding the products gives the
ensemble's Moebius coefficients exactly (:func:`tree_moebius`: every order up to the trees' depth), with no
sampling. Trees find interactions a pairwise screen misses (their splits condition on other components), but their
coefficients are shrunk and smeared by boosting; so the terms of order <= ``max_order`` with the largest
coefficients become the support of a least-squares refit, its size chosen on a validation split of the training
masks (:func:`proxy_moebius`). The trees are scikit-learn's ``GradientBoostingRegressor``.
"""

from itertools import combinations
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechpatch.interactions.basis import InteractionError, Term


def tree_moebius(tree: Any, scale: float = 1.0) -> dict[Term, float]:
    """The Moebius coefficients (terms: sets of ablated components) of one fitted scikit-learn regression tree over
    0/1 inputs, times ``scale``: ``sum over T within mask of coef[T]`` is the tree's prediction for ``mask``."""
    t = tree.tree_
    out: dict[Term, float] = {}

    def visit(node: int, ones: tuple[int, ...], zeros: tuple[int, ...]) -> None:
        left, right = int(t.children_left[node]), int(t.children_right[node])
        if left == -1:  # a leaf: value * prod_{i in ones} x_i * prod_{j in zeros} (1 - x_j)
            value = scale * float(t.value[node].reshape(-1)[0])
            for k in range(len(zeros) + 1):
                for extra in combinations(zeros, k):
                    term = tuple(sorted(set(ones) | set(extra)))
                    out[term] = out.get(term, 0.0) + value * (-1.0) ** k
            return
        i = int(t.feature[node])  # 0/1 inputs: the threshold (0.5) sends x_i = 0 left
        visit(left, ones, zeros if i in zeros else zeros + (i,))
        visit(right, ones if i in ones else ones + (i,), zeros)

    visit(0, (), ())
    return out


def ensemble_moebius(model: Any) -> dict[Term, float]:
    """Every Moebius coefficient of a fitted ``GradientBoostingRegressor`` (its initial value on the empty term)."""
    out: dict[Term, float] = {(): float(model.init_.constant_.reshape(-1)[0])}
    for tree in model.estimators_[:, 0]:
        for term, v in tree_moebius(tree, model.learning_rate).items():
            out[term] = out.get(term, 0.0) + v
    return out


def _features(masks: Tensor, terms: list[Term]) -> Tensor:
    x = masks.double()
    cols = [torch.ones(len(x), dtype=torch.float64)]
    for term in terms:
        col = torch.ones(len(x), dtype=torch.float64)
        for i in term:
            col = col * x[:, i]
        cols.append(col)
    return torch.stack(cols, 1)


def _refit(masks: Tensor, values: Tensor, terms: list[Term]) -> dict[Term, float]:
    coef = torch.linalg.lstsq(_features(masks, terms), values.double()[:, None], driver="gelsd").solution[:, 0]
    return {(): float(coef[0]), **{t: float(c) for t, c in zip(terms, coef[1:].tolist())}}


def _predict(moebius: dict[Term, float], masks: Tensor) -> Tensor:
    terms = [t for t in moebius if t]
    return _features(masks, terms) @ torch.tensor([moebius[()]] + [moebius[t] for t in terms], dtype=torch.float64)


def proxy_moebius(
    masks: Bool[Tensor, "mask component"],
    values: Float[Tensor, " mask"],
    max_order: int = 2,
    seed: int = 0,
    *,
    n_estimators: int = 400,
    max_depth: int = 4,
    learning_rate: float = 0.1,
    validation: float = 0.2,
) -> tuple[dict[Term, float], dict[str, Any]]:
    """Moebius effects of order <= ``max_order`` from gradient-boosted trees fitted to ``values`` of ``masks``.

    The trees are fitted on all the masks given; their coefficients of order 1..``max_order`` rank the terms; every
    component's main effect and the strongest interactions (support sizes tried on a geometric grid, the best on a
    seeded ``validation`` split of the masks) are refitted by least squares on all the masks.

    Returns:
        (Moebius coefficients, info: trees, depth, terms read from the trees, support chosen).
    """
    from sklearn.ensemble import GradientBoostingRegressor

    n_masks, n = masks.shape
    if max_order not in (1, 2, 3):
        raise InteractionError(f"max_order must be 1, 2 or 3; got {max_order!r}")
    if values.shape != (n_masks,):
        raise InteractionError(f"{tuple(values.shape)} values for {n_masks} masks")
    if n_masks < 8:
        raise InteractionError(f"the proxy backend needs at least 8 masks to fit trees and validate; got {n_masks}")
    x, y = masks.double().numpy(), values.double().numpy()
    gbt = GradientBoostingRegressor(n_estimators=n_estimators, max_depth=max_depth, learning_rate=learning_rate,
                                    subsample=1.0, random_state=seed).fit(x, y)
    read = ensemble_moebius(gbt)
    mains = [(i,) for i in range(n)]
    ranked = sorted((t for t in read if 2 <= len(t) <= max_order), key=lambda t: (-abs(read[t]), t))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_masks, generator=g)
    n_val = max(1, round(validation * n_masks))
    val, fit = order[:n_val], order[n_val:]
    budget = max(0, len(fit) - n - 2)  # a least-squares fit needs more masks than terms
    sizes, k = [0], 4
    while k < min(len(ranked), budget):
        sizes.append(k)
        k *= 2
    if min(len(ranked), budget) > 0:
        sizes.append(min(len(ranked), budget))
    scores = {}
    for size in sizes:
        m = _refit(masks[fit], values[fit], mains + ranked[:size])
        err = _predict(m, masks[val]) - values[val].double()
        scores[size] = float((err ** 2).mean())
    best = min(sizes, key=lambda s: (scores[s], s))
    moebius = _refit(masks, values, mains + ranked[:best])
    info = {"backend": "proxy", "trees": n_estimators, "max_depth": max_depth, "learning_rate": learning_rate,
            "terms_read": len(read), "candidates": len(ranked), "support": best,
            "validation_mse": {str(s): round(v, 8) for s, v in scores.items()}}
    return moebius, info


__all__ = ["ensemble_moebius", "proxy_moebius", "tree_moebius"]
