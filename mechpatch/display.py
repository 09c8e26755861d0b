"""Notebook display of result objects: a compact HTML table, then figures, drawn with no network.

The output layer, above the results and the plotting modules. A result class knows its table
(``_html_table``) but not its figures: results and algorithms never import plotting. Figures come from one
registry keyed by result type: :func:`register_figures` fills it, :func:`figures_of` reads it (looked up
along the type's MRO). The plotting modules (:mod:`mechpatch.plotting`, :mod:`mechpatch.circuit.plot`,
:mod:`mechpatch.interactions.plot`) declare theirs in a module-level ``FIGURES`` mapping (result type ->
function returning a list of figures), registered the first time :func:`figures_of` is called; that import
is lazy, so plotly is loaded only when a figure is asked for.

Importing this module (``mechpatch/__init__`` does, so every ``import mechpatch...`` does) gives the result
classes (``PatchResult``, ``ComponentGraph``, ``DiscoveryResult``, ``InteractionModel``) their two display
methods; ``SweepRun``, in the run layer above, calls the same helpers itself:

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
>>> m = InteractionModel(("A", "B"), {(): 1.0, (0, 1): -1.0})
>>> page = m._repr_html_()
>>> "<td>A x B</td><td>redundancy</td>" in page, page.count("plotly-graph-div"), len(figures_of(m))
(True, 1, 1)
"""

from collections.abc import Callable, Iterable
from typing import Any

from mechpatch.circuit.graph import ComponentGraph
from mechpatch.circuit.result import DiscoveryResult
from mechpatch.interactions.results import InteractionModel
from mechpatch.patching.results import PatchResult
from mechpatch.report import html_table

#: result type -> function giving its figures; filled from the plotting modules' ``FIGURES`` (and by callers)
_FIGURES: dict[type, Callable[[Any], list[Any]]] = {}
_loaded = False


def register_figures(result_type: type, fn: Callable[[Any], list[Any]]) -> None:
    """Show ``fn(result)`` (a list of plotly figures, possibly empty) as the figures of ``result_type`` and of
    its subclasses that have none of their own; replaces an earlier registration of that type."""
    if not isinstance(result_type, type):
        raise TypeError(f"result_type must be a class, not {result_type!r}")
    _FIGURES[result_type] = fn


def _load_plotting() -> None:
    """Register the plotting modules' ``FIGURES`` (importing them, and plotly, on the first call only);
    a registration made before by :func:`register_figures` is kept."""
    global _loaded
    if _loaded:
        return
    from mechpatch import plotting
    from mechpatch.circuit import plot as circuit_plot
    from mechpatch.interactions import plot as interactions_plot

    for module in (plotting, circuit_plot, interactions_plot):
        for result_type, fn in module.FIGURES.items():
            _FIGURES.setdefault(result_type, fn)
    _loaded = True


def figures_of(result: Any) -> list[Any]:
    """The figures registered for ``result``'s type (the nearest class of its MRO that has some); ``[]`` if none.

    >>> figures_of(object())
    []
    """
    _load_plotting()
    for cls in type(result).__mro__:
        if cls in _FIGURES:
            return list(_FIGURES[cls](result))
    return []


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


def _attach(cls: type, text: Callable[[Any], str] = repr) -> None:
    """Give ``cls`` its notebook display: the table (``cls._html_table``), then :func:`figures_of`; ``text`` is
    the plain form shown outside a kernel and beside the table."""

    def _repr_html_(self: Any) -> str:
        """Table and figures, plotly.js inline: draws with no network (see :mod:`mechpatch.display`)."""
        return html_fragment(self._html_table(), figures_of(self))

    def _ipython_display_(self: Any) -> None:
        """In Jupyter: the table, then each figure through plotly's renderer (see :mod:`mechpatch.display`)."""
        ipython_display(text(self), self._html_table(), lambda: figures_of(self))

    cls._repr_html_ = _repr_html_
    cls._ipython_display_ = _ipython_display_


for _cls in (PatchResult, ComponentGraph, DiscoveryResult):
    _attach(_cls)
_attach(InteractionModel, InteractionModel.summary)


__all__ = ["figures_of", "html_fragment", "html_table", "in_kernel", "ipython_display", "register_figures"]
