"""Component interactions at scale: ablation designs over N components, sparse interaction recovery, ground truth.

One-at-a-time patching credits each of two AND-coupled heads with the whole effect and each of two
backup heads with none. Here many components are ablated at once, one random mask per engine batch
row, and a sparse low-order model of the metric (Fourier features with screening and a Lasso, converted
exactly to Moebius effects) separates them: pairs with ``kind == "synergy"`` are needed together,
pairs with ``kind == "redundancy"`` stand in for each other. :func:`exhaustive_interactions` measures
every pair directly (N(N-1)/2 masks) as the ground truth. ``mechpatch interactions CONFIG`` runs them from a config
(:mod:`mechpatch.runs.interactions`).

Re-exports the user-facing names only. The building blocks are imported from their modules: the Fourier/Moebius
basis (:mod:`mechpatch.interactions.basis`), the sparse fit (:mod:`mechpatch.interactions.fit`), the exact Moebius
transform of measured masks (:mod:`mechpatch.interactions.run`). The figures (:mod:`mechpatch.interactions.plot`)
are not imported here: plotly stays out of the import graph until a figure is asked for.

>>> def f(z):  # components 0 and 1 are each needed (AND): ablating either kills the behaviour
...     return (~z[:, 0] & ~z[:, 1]).double()
>>> m = find_function_interactions(f, 8, n_masks=300)
>>> m.top(1)[0].term, m.top(1)[0].kind
((0, 1), 'synergy')
"""

from mechpatch.interactions.basis import InteractionError
from mechpatch.interactions.designs import DESIGNS, Design, make_design
from mechpatch.interactions.fit import FitSettings
from mechpatch.interactions.results import Interaction, InteractionModel, compare
from mechpatch.interactions.run import (
    MaskValues,
    evaluate_masks,
    exhaustive_interactions,
    find_function_interactions,
    find_interactions,
)

__all__ = [
    "DESIGNS", "Design", "FitSettings", "Interaction", "InteractionError", "InteractionModel", "MaskValues",
    "compare", "evaluate_masks", "exhaustive_interactions", "find_function_interactions", "find_interactions",
    "make_design",
]
