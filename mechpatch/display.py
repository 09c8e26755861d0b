"""Notebook display of result objects: a compact HTML table, then figures, drawn with no network.

Result classes (``PatchResult``, ``SweepRun``, ``ComponentGraph``, ``DiscoveryResult``, ``InteractionModel``)
import this module lazily in two methods:

- ``_ipython_display_`` (:func:`ipython_display`): in a Jupyter kernel, the table is one ``text/html`` output
  and each figure is handed to IPython's ``display``, so plotly's renderer chooses the output (in a kernel
  that is ``application/vnd.plotly.v1+json``: the figure's JSON only, drawn offline by the JupyterLab /
  Notebook 7 / VS Code plotly extension). Outside a kernel (terminal IPython) it shows the plain ``repr``,
  and opens no browser.
- ``_repr_html_`` (:func:`html_fragment`): one self-contained fragment for every other HTML consumer
  (exports, ``display(HTML(...))``, documentation tools): the table, then the figures, with plotly.js
  embedded once, inline. It draws without a network (and weighs ~4.8 MB).

This module imports neither plotly nor IPython at import time: figures arrive as objects, and IPython is
imported only when a kernel asks for a display.

>>> html_fragment("<table><tr><td>1</td></tr></table>", [])
'<table><tr><td>1</td></tr></table>'
>>> html_table(["edge", "score"], [["a->b", "0.5"], ["<c>", "-1"]])
'<table><tr><th>edge</th><th>score</th></tr><tr><td>a-&gt;b</td><td>0.5</td></tr><tr><td>&lt;c&gt;</td><td>-1</td></tr></table>'
"""

import html
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def html_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain HTML table: one header row, then one row per item; every cell is escaped text."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_fragment(table: str, figures: Iterable[Any]) -> str:
    """The table, then each plotly figure; plotly.js is embedded inline once, with the first figure.

    Args:
        table: HTML shown first (already escaped).
        figures: plotly figures (anything with plotly's ``to_html``).

    Returns:
        An HTML fragment (no ``<html>``/``<head>``) that draws its figures with no network access.

    >>> import plotly.graph_objects as go
    >>> page = html_fragment("<p>two bars</p>", [go.Figure(go.Bar(y=[1, 2])), go.Figure(go.Bar(y=[3]))])
    >>> page.count("plotly-graph-div"), page.count("plotly.js v"), 'src="http' in page
    (2, 1, False)
    """
    parts = [table]
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    return "".join(parts)


def in_kernel() -> bool:
    """Whether code runs in an IPython kernel with a front end attached (Jupyter, VS Code, nbclient, ...)."""
    import sys

    if "IPython" not in sys.modules:  # never imported: no IPython session
        return False
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def ipython_display(text: str, table: str, figures: Callable[[], Iterable[Any]]) -> None:
    """Display a result in IPython: the table as ``text/html`` (``text`` as its plain form), then each figure.

    Each figure goes through ``IPython.display.display``, so plotly's default renderer decides its output
    (``application/vnd.plotly.v1+json`` in a Jupyter kernel: no plotly.js in the notebook). Outside a kernel
    only ``text`` is shown and ``figures`` is not called (a terminal's renderer would open a browser).

    Args:
        text: the plain-text form (usually ``repr(result)``).
        table: the HTML table.
        figures: builds the figures (called only when they will be shown).
    """
    from IPython.display import display

    if not in_kernel():
        display({"text/plain": text}, raw=True)
        return
    display({"text/plain": text, "text/html": table}, raw=True)
    for fig in figures():
        display(fig)


__all__ = ["html_fragment", "html_table", "in_kernel", "ipython_display"]
