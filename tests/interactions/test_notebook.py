"""experiments/notebooks/interactions.ipynb runs end to end (stored without outputs)."""

import os
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "experiments" / "notebooks" / "interactions.ipynb"


def test_notebook_is_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the kernel inherits it; the notebook also sets torch's threads
    start = time.perf_counter()
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(NOTEBOOK.parents[2])}})
        client.execute()
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    seconds = time.perf_counter() - start
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    print(text, f"\n{seconds:.1f}s")
    assert "AND pairs found as synergy:    [True, True, True, True, True, True]" in text
    assert "OR pairs found as redundancy:  [True, True, True, True, True, True]" in text
    assert "kinds: {'redundancy'}" in text
    assert "strongest exact pair:" in text
    figures = [o for c in nb.cells for o in getattr(c, "outputs", []) if "application/vnd.plotly.v1+json" in
               o.get("data", {})]
    assert len(figures) == 4
