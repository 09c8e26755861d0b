"""Interaction figures: what they draw, and plotly kept out of the package's import."""

import math
import subprocess
import sys

import plotly.graph_objects as go
import pytest
import torch

from mechpatch.interactions import InteractionError, InteractionModel
from mechpatch.interactions.basis import all_masks, moebius_bruteforce
from mechpatch.interactions.plot import COLOURS, interaction_matrix, interaction_network, top_interactions

LABELS = ("L0H0", "L0H1", "L1H0", "L1H1")


@pytest.fixture()
def model():
    def f(z):  # noising: L1H0 / L1H1 are backups (OR); L0H0 and L1H0 are needed together (AND)
        x = (~z).double()
        return torch.maximum(x[:, 2], x[:, 3]) + 0.5 * x[:, 0] * x[:, 2] + 0.1 * x[:, 1]

    return InteractionModel(LABELS, moebius_bruteforce(f(all_masks(4)), 4), "noise", method="exhaustive")


def test_importing_interactions_does_not_import_plotly():
    code = "import sys, mechpatch.interactions; print('plotly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_matrix_is_symmetric_with_signed_pair_scores(model):
    fig = interaction_matrix(model)
    assert isinstance(fig, go.Figure)
    z = fig.data[0].z
    assert z[2][3] == pytest.approx(-1.0) and z[3][2] == pytest.approx(-1.0)  # redundancy: negative
    assert z[0][2] == pytest.approx(0.5)  # synergy: positive
    assert all(math.isnan(z[i][i]) for i in range(4))
    assert "redundancy" in fig.data[0].customdata[2][3] and "synergy" in fig.data[0].customdata[0][2]


def test_top_bars_coloured_by_kind_with_truth_outline(model):
    fig = top_interactions(model, k=2, truth=model)
    bars, truth = fig.data
    assert list(bars.y) == ["L0H0 x L1H0", "L1H0 x L1H1"]  # strongest last = top of the chart
    assert list(bars.marker.color) == [COLOURS["synergy"], COLOURS["redundancy"]]
    assert list(truth.x) == list(bars.x)
    with pytest.raises(InteractionError, match="k must be >= 1"):
        top_interactions(model, k=0)


def test_network_places_heads_on_a_layer_grid(model):
    fig = interaction_network(model, k=5)
    edges = [t for t in fig.data if t.mode == "lines" and t.showlegend is False]
    assert len(edges) == 2
    nodes = next(t for t in fig.data if t.mode == "markers+text")
    assert list(nodes.x) == [0.0, 0.0, 1.0, 1.0] and list(nodes.text) == list(LABELS)
    assert {t.name for t in fig.data if t.showlegend is not False} == {"synergy", "redundancy"}
