import subprocess
import sys

import plotly.graph_objects as go
import pytest
import torch

from mechpatch.patching import sweep
from mechpatch.plotting import heatmap, patch_heatmap
from mechpatch.prompts import make_pair


def test_importing_the_engine_does_not_import_plotly():
    code = "import sys, mechpatch, mechpatch.patching; print('plotly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_patch_heatmap_labels_values_and_noops(gpt2):
    clean = torch.tensor([[1, 2, 3, 4, 5, 6]])
    corrupted = torch.tensor([[1, 2, 9, 4, 5, 6]])
    pair = make_pair(gpt2, clean, corrupted, answers=torch.tensor([[7, 8]]))
    res = sweep(gpt2, pair, "resid_pre", metric="logit_diff")
    fig = patch_heatmap(res)
    assert isinstance(fig, go.Figure)
    trace = fig.data[0]
    assert list(trace.y) == ["L0", "L1"] and len(trace.x) == 6
    assert trace.x[2].startswith("2:")  # position labels carry the token
    torch.testing.assert_close(torch.tensor(trace.z), res.normalized().float())
    assert "no-op" in trace.customdata[0][0] and "no-op" not in trace.customdata[0][2]
    raw = patch_heatmap(res, normalized=False)
    torch.testing.assert_close(torch.tensor(raw.data[0].z), res.mean().float())
    assert "<table>" in res._repr_html_() and "plotly" in res._repr_html_()


def test_patch_heatmap_refuses_other_shapes(gpt2):
    pair = make_pair(gpt2, torch.tensor([[1, 2, 3]]), torch.tensor([[1, 5, 3]]), answers=torch.tensor([[7, 8]]))
    res = sweep(gpt2, pair, "head", metric="logit_diff", by_position=True)
    with pytest.raises(ValueError, match="2-axis"):
        patch_heatmap(res)


def test_heatmap_rows_top_to_bottom():
    fig = heatmap(torch.tensor([[1.0, 2.0]]), ["a", "b"], ["r"], title="t")
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.title.text == "t"
