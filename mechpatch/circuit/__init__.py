"""Circuits: edge patching, discovery, faithfulness and the component graph of a scored circuit.

Re-exports the user-facing names only. The edge vocabulary (``Node``, ``Edge``, ``GraphLayout``) is
:mod:`mechpatch.circuit.components`'s, with its helpers (``parse_edge``, ``edge_mask``, ...); the format converters
are in :mod:`mechpatch.circuit.formats` (reached through :class:`ComponentGraph`'s ``to_dot``/``to_mib``/``from_mib``/...),
the slow edge-patching oracle in :mod:`mechpatch.circuit.reference`. The figure,
:func:`mechpatch.circuit.plot.graph_figure`, is not imported here (plotly stays out of the import graph until a
figure is asked for).
"""

from mechpatch.circuit.components import CircuitError, Edge, GraphLayout, Node, graph_layout
from mechpatch.circuit.discovery import DISCOVERY, DiscoveryResult, acdc, discover
from mechpatch.circuit.edges import EdgeError, EdgeRun, edge_patch
from mechpatch.circuit.faithfulness import FaithfulnessCurve, faithfulness_curve
from mechpatch.circuit.graph import ComponentGraph

__all__ = [
    "DISCOVERY", "CircuitError", "ComponentGraph", "DiscoveryResult", "Edge", "EdgeError", "EdgeRun",
    "FaithfulnessCurve", "GraphLayout", "Node", "acdc", "discover", "edge_patch", "faithfulness_curve", "graph_layout",
]
