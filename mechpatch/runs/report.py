"""A run's report, rebuilt from its files: ``report.json`` names the title, the headline numbers and the figure
sections; each section's figure is drawn from a result file of the run (never from the model).

Section kinds (:data:`SECTION_KINDS`):

- ``patch``: a sweep result, ``tensors/<kind>.safetensors`` -> its heatmap (3-axis grids drawn with the leading
  axes merged, 1-axis grids as one row);
- ``circuit``: a component graph, ``circuit.json`` -> the layered circuit figure;
- ``faithfulness``: ``results/faithfulness.parquet`` -> the faithfulness curve (MIB's CPR/CMD);
- ``attention_effect``: ``results/attention_effect.parquet`` (:func:`mechpatch.attention.attention_vs_effect`) ->
  attention to the position that matters against each head's causal effect;
- ``interaction_matrix``, ``top_interactions``, ``interaction_network``, ``token_figure``: an interactions run's
  ``interactions.json`` -> the figures of :mod:`mechpatch.interactions.plot` (the top bars with the exhaustive
  measurement beside them, where the run made one; ``token_figure``: a tokens run's prompt).

>>> sorted(SECTION_KINDS)  # doctest: +NORMALIZE_WHITESPACE
['attention_effect', 'circuit', 'faithfulness', 'interaction_matrix', 'interaction_network', 'patch', 'token_figure',
 'top_interactions']
"""

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mechpatch.errors import choices
from mechpatch.report import write_json, write_report
from mechpatch.runs.store import RunError, write_figure


def _patch(path: str, title: str) -> Any:
    from mechpatch.plotting import patch_heatmap
    from mechpatch.runs.results import as_2d, has_normalized, read_result

    r = read_result(path)
    return patch_heatmap(as_2d(r), normalized=has_normalized(r),
                         title=title or f"{r.meta['kind']}: {r.direction} ({r.intervention}), {r.metric}")


def _circuit(path: str, title: str) -> Any:
    from mechpatch.circuit import ComponentGraph
    from mechpatch.circuit.plot import graph_figure

    return graph_figure(ComponentGraph.from_json(path), title=title or None)


def _faithfulness(path: str, title: str) -> Any:
    import pandas as pd

    from mechpatch.circuit.faithfulness import FaithfulnessCurve

    t = pd.read_parquet(path)
    curve = FaithfulnessCurve(tuple(float(x) for x in t["size"]), tuple(int(n) for n in t["n_edges"]),
                              tuple(float(x) for x in t["faithfulness"]), float(t["metric_full"].iloc[0]),
                              float(t["metric_empty"].iloc[0]), tuple(float(x) for x in t["metric_circuit"]))
    fig = curve.figure()
    if title:
        fig.update_layout(title=title)
    return fig


def _attention_effect(path: str, title: str) -> Any:
    import pandas as pd

    from mechpatch.attention import attention_effect_figure

    return attention_effect_figure(pd.read_parquet(path), **({"title": title} if title else {}))


def _interactions(figure: str) -> Callable[[str, str], Any]:
    def draw(path: str, title: str) -> Any:
        from mechpatch.interactions import plot
        from mechpatch.runs.results import read_models

        model, truth = read_models(path)
        if figure == "top_interactions":
            return plot.top_interactions(model, k=15, truth=truth, title=title or None)
        return getattr(plot, figure)(model, title=title or None)

    return draw


#: section kind -> figure from (path of the result file, title or "")
SECTION_KINDS: dict[str, Callable[[str, str], Any]] = {
    "patch": _patch, "circuit": _circuit, "faithfulness": _faithfulness, "attention_effect": _attention_effect,
    **{kind: _interactions(kind) for kind in ("interaction_matrix", "top_interactions", "interaction_network",
                                              "token_figure")},
}


def section(kind: str, name: str, path: str, heading: str, title: str = "") -> dict[str, str]:
    """One report section: a figure of ``kind`` drawn from ``path`` (relative to the run directory), written to
    ``figure_<name>.html``, under ``heading`` in the report."""
    if kind not in SECTION_KINDS:
        raise RunError(f"unknown report section kind {kind!r}; valid: {choices(SECTION_KINDS)}")
    return {"kind": kind, "name": name, "path": path, "heading": heading, "title": title}


def write_report_spec(run_dir: str, title: str, headline: Mapping[str, Any], sections: Sequence[Mapping[str, str]],
                      notes: str = "") -> None:
    """Write ``report.json``: what :func:`build_report` draws (headline values must be JSON-able)."""
    write_json(os.path.join(run_dir, "report.json"),
               {"title": title, "headline": dict(headline), "sections": list(sections), "notes": notes})


def build_report(run_dir: str) -> dict[str, Any]:
    """Draw every section's figure from the run's files, write the figure files and ``report.html``.

    Returns:
        ``{"figures": [figure files], "report": "report.html"}`` (paths relative to ``run_dir``).

    Raises:
        RunError: the run has no ``report.json`` or a section's file is missing.
    """
    spec_path = os.path.join(run_dir, "report.json")
    if not os.path.exists(spec_path):
        raise RunError(f"{run_dir!r} has no report.json: the run has not finished; run its command again")
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    figures, files = {}, []
    for s in spec["sections"]:
        path = os.path.join(run_dir, s["path"])
        if not os.path.exists(path):
            raise RunError(f"{path!r} is missing: the report's {s['heading']!r} section is drawn from it")
        if s["kind"] not in SECTION_KINDS:
            raise RunError(f"unknown report section kind {s['kind']!r}; valid: {choices(SECTION_KINDS)}")
        fig = SECTION_KINDS[s["kind"]](path, s.get("title", ""))
        figures[s["heading"]] = fig
        files.append(write_figure(run_dir, s["name"], fig))
    write_report(os.path.join(run_dir, "report.html"), spec["title"], spec["headline"], figures, spec.get("notes", ""))
    return {"figures": files, "report": "report.html"}


__all__ = ["SECTION_KINDS", "build_report", "section", "write_report_spec"]
