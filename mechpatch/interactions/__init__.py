"""Component interactions at scale: ablation designs over N components, sparse interaction recovery, ground truth.

One-at-a-time patching credits each of two AND-coupled heads with the whole effect and each of two
backup heads with none. Here many components are ablated at once, one random mask per engine batch
row, and a sparse low-order model of the metric (Fourier features with screening and a Lasso, converted
exactly to Moebius effects) separates them: pairs with ``kind == "synergy"`` are needed together,
pairs with ``kind == "redundancy"`` stand in for each other. :func:`exhaustive_interactions` measures
every pair directly (N(N-1)/2 masks) as the ground truth. ``mechpatch interactions CONFIG`` runs them from a config
(:mod:`mechpatch.runs.interactions`).

Re-exports only. The figures (:mod:`mechpatch.interactions.plot`) are not imported here: plotly stays
out of the import graph until a figure is asked for.

>>> def f(z):  # components 0 and 1 are each needed (AND): ablating either kills the behaviour
...     return (~z[:, 0] & ~z[:, 1]).double()
>>> m = find_function_interactions(f, 8, n_masks=300)
>>> m.top(1)[0].term, m.top(1)[0].kind
((0, 1), 'synergy')
"""

from mechpatch.interactions.basis import (
    CORNERS,
    DIRECTIONS,
    INDICES,
    InteractionError,
    Term,
    all_masks,
    features,
    game_from_base,
    interaction_index,
    moebius_bruteforce,
    to_moebius,
)
from mechpatch.interactions.designs import DESIGNS, Design, make_design
from mechpatch.interactions.fit import FitSettings, FourierFit, fit_fourier, lasso_path, r2_score
from mechpatch.interactions.results import KINDS, Interaction, InteractionModel, compare, spearman
from mechpatch.interactions.run import (
    MaskValues,
    component_labels,
    evaluate_masks,
    exhaustive_interactions,
    exhaustive_moebius,
    find_function_interactions,
    find_interactions,
)

__all__ = [
    "CORNERS", "DESIGNS", "DIRECTIONS", "Design", "FitSettings", "FourierFit", "INDICES", "Interaction",
    "InteractionError", "InteractionModel", "KINDS", "MaskValues", "Term", "all_masks",
    "compare", "component_labels", "evaluate_masks", "exhaustive_interactions", "exhaustive_moebius", "features",
    "find_function_interactions", "find_interactions", "fit_fourier", "game_from_base", "interaction_index",
    "lasso_path", "make_design", "moebius_bruteforce", "r2_score", "spearman", "to_moebius",
]
