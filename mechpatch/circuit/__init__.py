"""Circuits: the component graph (nodes, edges, scored circuits) and its formats.

Re-exports only. The figure, :func:`mechpatch.circuit.plot.graph_figure`, is not imported here (plotly
stays out of the import graph until a figure is asked for).
"""

from mechpatch.circuit.components import (
    INPUTS,
    NODE_KINDS,
    CircuitError,
    Edge,
    GraphLayout,
    Node,
    all_edges,
    as_edge,
    as_node,
    edge_mask,
    edges_from_mask,
    graph_layout,
    parse_edge,
    parse_node,
    parse_receiver,
)
from mechpatch.circuit.discovery import DISCOVERY, DiscoveryResult, acdc, discover
from mechpatch.circuit.edges import ABLATIONS, EdgeError, EdgeLayout, EdgeRun, edge_patch, layout
from mechpatch.circuit.faithfulness import MIB_SIZES, FaithfulnessCurve, circuit_metric, faithfulness_curve
from mechpatch.circuit.formats import read_mib, to_dot, to_mib, to_networkx
from mechpatch.circuit.graph import ComponentGraph

from_mib = ComponentGraph.from_mib  # the MIB reader builds no graph itself (formats.py does not import graph.py)

__all__ = [
    "ABLATIONS",
    "DISCOVERY",
    "MIB_SIZES",
    "DiscoveryResult",
    "EdgeError",
    "EdgeLayout",
    "EdgeRun",
    "FaithfulnessCurve",
    "acdc",
    "circuit_metric",
    "discover",
    "edge_patch",
    "faithfulness_curve",
    "layout",
    "INPUTS",
    "NODE_KINDS",
    "CircuitError",
    "ComponentGraph",
    "Edge",
    "GraphLayout",
    "Node",
    "all_edges",
    "as_edge",
    "as_node",
    "edge_mask",
    "edges_from_mask",
    "from_mib",
    "graph_layout",
    "parse_edge",
    "parse_node",
    "parse_receiver",
    "read_mib",
    "to_dot",
    "to_mib",
    "to_networkx",
]
