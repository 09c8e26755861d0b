"""Notebook display of results (mechpatch/display.py): ``_repr_html_`` is one self-contained fragment (plotly.js
inline, no network), ``_ipython_display_`` in a real kernel emits a text/html table and plotly-mimetype figures.

Every result type is built once on the tiny GPT-2 fixture (or by hand) and checked the same way.
"""

import json
import os
import pickle
import re
import time
from pathlib import Path

import pytest
import torch

from mechpatch.circuit.discovery import acdc
from mechpatch.interactions import InteractionModel
from mechpatch.patching import sweep
from mechpatch.patching.metrics import KLDivergence
from mechpatch.prompts import make_pair
from mechpatch.runs.sweep import SweepRun
from tests.runs.test_report_browser import check, render

REPO = Path(__file__).resolve().parents[1]
PLOTLY_JSON = "application/vnd.plotly.v1+json"
#: the inline plotly.js bundle (its licence header opens it)
BUNDLE = re.compile(r"<script[^>]*>\s*/\*\*\s*\*\s*plotly\.js v.*?</script>", re.DOTALL)


@pytest.fixture(scope="module")
def results(gpt2):
    """name -> (result, figures it shows, text its table must hold)."""
    pair = make_pair(gpt2, torch.tensor([[1, 2, 3, 4, 5, 6]]), torch.tensor([[1, 2, 9, 4, 5, 6]]),
                     answers=torch.tensor([[7, 8]]))
    resid = sweep(gpt2, pair, "resid_pre", metric="logit_diff")
    head = sweep(gpt2, pair, "head", metric="logit_diff")
    by_pos = sweep(gpt2, pair, "head", metric="logit_diff", by_position=True)  # 3 axes: a table, no heatmap
    g = torch.Generator().manual_seed(4)
    base, src = torch.randint(1, 100, (3, 6), generator=g), torch.randint(1, 100, (3, 6), generator=g)
    found = acdc(gpt2, base, metric=KLDivergence(positions=None), source=src, tau=0.02, progress=False)
    assert 0 < len(found.edges) < found.layout.n_edges
    run = SweepRun("out/tiny", {"model": {"name": "tiny-gpt2"}}, {"resid_pre": resid, "head": head})
    inter = InteractionModel(("L0H0", "L0H1", "L1H0", "L1H1"),
                             {(): 1.0, (0,): -0.5, (2,): -0.8, (0, 1): 0.3, (2, 3): -0.6, (0, 2): 0.1})
    return {
        "patch": (resid, 1, "mean logit_diff"),
        "patch_3_axes": (by_pos, 0, "mean logit_diff"),
        "sweep_run": (run, 2, "largest effects"),
        "graph": (found.to_graph(), 1, "circuit edge (by |score|)"),
        "discovery": (found, 1, "edges kept"),
        "interactions": (inter, 1, "L1H0 x L1H1"),
    }


NAMES = ["patch", "patch_3_axes", "sweep_run", "graph", "discovery", "interactions"]


@pytest.mark.parametrize("name", NAMES)
def test_repr_html_is_self_contained(results, name):
    obj, n_figures, text = results[name]
    page = obj._repr_html_()
    assert "<table>" in page and text in page
    assert page.count('class="plotly-graph-div"') == n_figures
    rest, n_bundles = BUNDLE.subn("", page)
    assert n_bundles == (1 if n_figures else 0)  # plotly.js inline, once
    assert not re.search(r"<script[^>]*\ssrc=", page) and "cdn.plot.ly" not in rest  # nothing fetched


def test_discovery_table_reports_the_search(results):
    found = results["discovery"][0]
    page = found._html_table(rows=3)
    assert f"{len(found.edges)} of {found.layout.n_edges}" in page and "tau=0.02" in page
    assert f"full {found.full_metric:.4g} -&gt; circuit {found.final_metric:.4g}" in page
    assert page.count("<tr><td>") == 3 and f"... and {len(found.edges) - 3} more circuit edges" in page
    strongest = max(found.edges, key=lambda e: abs(found.scores[e]))
    assert page.index(strongest.label.replace(">", "&gt;")) < page.index("... and")


def test_ipython_display_outside_a_kernel_shows_text_only(results, monkeypatch):
    """No kernel (plain Python, terminal IPython): the repr alone, and no figure is built (or browser opened)."""
    pytest.importorskip("IPython")
    import IPython.display

    import mechpatch.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: shown.append((a, k)))
    obj = results["patch"][0]
    obj._ipython_display_()
    assert shown == [(({"text/plain": repr(obj)},), {"raw": True})]
    shown.clear()
    monkeypatch.setattr(mechpatch.display, "in_kernel", lambda: True)
    obj._ipython_display_()
    (bundle,), _ = shown[0]
    assert bundle["text/plain"] == repr(obj) and "<table>" in bundle["text/html"] and "plotly" not in bundle["text/html"]
    assert len(shown) == 2 and type(shown[1][0][0]).__name__ == "Figure"


def test_ipython_display_in_a_kernel(results, tmp_path):
    """A generated notebook displays each result in a real kernel: one text/html table, then plotly-mimetype
    figures (the JSON only: no plotly.js, no CDN), as JupyterLab and VS Code draw offline."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    path = tmp_path / "results.pkl"
    path.write_bytes(pickle.dumps({n: results[n][0] for n in NAMES}))
    cells = [nbformat.v4.new_code_cell(f"import pickle\nresults = pickle.load(open({str(path)!r}, 'rb'))")]
    cells += [nbformat.v4.new_code_cell(f"results[{n!r}]") for n in NAMES]
    nb = nbformat.v4.new_notebook(cells=cells)
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the kernel inherits it
    start = time.perf_counter()
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(REPO)}}).execute()
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    print(f"kernel: {time.perf_counter() - start:.1f}s")
    for name, cell in zip(NAMES, nb.cells[1:]):
        _, n_figures, text = results[name]
        outs = cell.outputs
        assert [o.output_type for o in outs] == ["display_data"] * (1 + n_figures), (name, outs)
        table = outs[0].data
        assert set(table) == {"text/plain", "text/html"} and "<table>" in table["text/html"]
        assert text in table["text/html"]
        assert all(set(o.data) == {PLOTLY_JSON} and o.data[PLOTLY_JSON]["data"] for o in outs[1:]), name
        stored = json.dumps(outs)
        assert "cdn.plot.ly" not in stored and "plotly.js v" not in stored
        assert len(stored) < 300_000, (name, len(stored))  # not the 4.8 MB of an embedded plotly.js


def test_repr_html_draws_offline_in_a_browser(chromium, results, tmp_path):
    """Two results' fragments in one page (as an HTML export holds them): every figure draws, no console error."""
    body = results["patch"][0]._repr_html_() + results["discovery"][0]._repr_html_()
    page = tmp_path / "results.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'></head><body>{body}</body></html>",
                    encoding="utf-8")
    check(render(chromium, page, tmp_path), figures=2)


def test_no_cdn_in_the_package():
    for path in (REPO / "mechpatch").rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert "cdn.plot.ly" not in source and not re.search(r"include_plotlyjs=['\"]cdn", source), path
