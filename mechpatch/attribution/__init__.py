"""Gradient approximations to the exact engine (AtP, AtP*, EAP, EAP-IG), each checked against it.

Re-exports the user-facing names only. Node attribution (:mod:`~mechpatch.attribution.nodes`) estimates what
:func:`~mechpatch.patching.run_patches` / :func:`~mechpatch.patching.sweep` would measure; edge attribution
(:mod:`~mechpatch.attribution.edges`) what :func:`~mechpatch.circuit.edge_patch` would; the verification
loop (:mod:`~mechpatch.attribution.verify`) runs the exact engine on the best-ranked cells and bounds what
was missed; :func:`agreement` compares an approximation with exact effects.

Circuit discovery from EAP scores (:func:`~mechpatch.circuit.eap.eap`, ``eap_ig``) is reached through
:func:`mechpatch.circuit.discover` (``"eap"``, ``"eap-ig"``).
"""

from mechpatch.attribution.base import Agreement, AtpRun, AttributionError, AttributionResult, agreement
from mechpatch.attribution.edges import EdgeAttribution, edge_attribution
from mechpatch.attribution.nodes import ESTIMATORS, atp, atp_star, attribute
from mechpatch.attribution.verify import Verification, verify

__all__ = [
    "ESTIMATORS", "Agreement", "AtpRun", "AttributionError", "AttributionResult", "EdgeAttribution", "Verification",
    "agreement", "atp", "atp_star", "attribute", "edge_attribution", "verify",
]
