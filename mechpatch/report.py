"""Self-contained HTML reports and atomic result files (temp file + rename: never a half-written file).

>>> import tempfile, os, json
>>> d = tempfile.mkdtemp()
>>> write_json(os.path.join(d, "r.json"), {"a": 1})
>>> json.load(open(os.path.join(d, "r.json")))
{'a': 1}
"""

import html
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def html_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain HTML table: one header row, then one row per item; every cell is escaped text.

    >>> html_table(["edge", "score"], [["a->b", "0.5"]])
    '<table><tr><th>edge</th><th>score</th></tr><tr><td>a-&gt;b</td><td>0.5</td></tr></table>'
    """
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def replace_atomically(tmp: str, path: str) -> None:
    """Flush the finished temporary file ``tmp`` to disk and rename it to ``path`` (atomic on POSIX)."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file, flushed to disk, renamed into place."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    replace_atomically(tmp, path)


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_report(path: str, title: str, headline: Mapping[str, Any], figures: Mapping[str, Any],
                 notes: str = "") -> None:
    """One self-contained page: a headline table, optional notes, then each plotly figure (plotly.js embedded once)."""
    parts = []
    for i, (name, fig) in enumerate(figures.items()):
        parts.append(f"<h2>{html.escape(name)}</h2>" + fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    rows = "".join(f"<tr><th align='left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in headline.items())
    body = f"<p>{html.escape(notes)}</p>" if notes else ""
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body style='font-family:sans-serif;max-width:1200px;margin:auto'><h1>{html.escape(title)}</h1>"
        f"<table>{rows}</table>{body}{''.join(parts)}</body></html>"
    )
    write_text(path, page)
