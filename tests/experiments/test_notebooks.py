"""The tour notebooks in experiments/notebooks run end to end (stored without outputs), as
tests/interactions/test_notebook.py runs interactions.ipynb: each asserts its key facts in a cell that raises."""

import os
import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "experiments" / "notebooks"
#: notebook -> (plotly figures, HTML result tables, text each must print); a displayed result shows its table,
#: then its figures as plotly outputs of their own (patching_tour: 5 figure cells + the heatmap of `resid`)
EXPECTED = {
    "patching_tour.ipynb": (6, 2, ["most important head: L1H0", "L0H2 -> L1H0.k"]),
    # circuit_discovery: 3 figure cells + the displayed position-resolved DiscoveryResult (table, circuit figure)
    "circuit_discovery.ipynb": (4, 1, ["key edges found", "AUC 1.000; precision 1.00, recall 1.00",
                                       "positions of kept logits edges: [1"]),
    # attention_probes_das: the attention view (an iframe), the probes' table, one figure
    "attention_probes_das.ipynb": (1, 2, ["most induction-like head: L1H0",
                                          "where the variable is read, DAS finds it; after it is read, only the probe"]),
}


def _execute(path: Path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(path, as_version=4)
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the kernel inherits it; the notebook also sets torch's threads
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parents[2])}}).execute()
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    return nb


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_is_stored_without_outputs(name):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_executes(name):
    start = time.perf_counter()
    nb = _execute(NOTEBOOKS / name)
    seconds = time.perf_counter() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    print(text, f"\n{name}: {seconds:.1f}s")
    n_figures, n_html, lines = EXPECTED[name]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    for line in lines:
        assert line in text
    data = [o.get("data", {}) for o in outputs]
    assert sum("application/vnd.plotly.v1+json" in d for d in data) == n_figures
    html = [d["text/html"] for d in data if "text/html" in d and "application/vnd.plotly.v1+json" not in d]
    assert len(html) == n_html and all("<table" in h or "<iframe srcdoc=" in h for h in html)
    assert seconds < 60
