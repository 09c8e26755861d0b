"""Attention patterns and the built-in head scores, computed in batches from cached patterns.

Attention weights are not explanations: a head can attend to a token and not use it, or use it through a small
weight. The scores here describe where heads look; put them beside a causal test (a patching sweep, path
patching) before reading more into them.

- :func:`attention_patterns`: every head's pattern, ``[prompt, layer, head, query, key]``, cached in chunks of
  prompts (:func:`~mechpatch.cache.cache_activations` of the pattern hooks).
- :func:`head_scores`: one score per head from patterns and their tokens, averaged over prompts and queries:

  - ``previous-token``: the weight on the key just before the query (queries 1 and up);
  - ``duplicate-token``: the weight on earlier keys holding the query's token (queries that have one);
  - ``induction``: the weight on keys right after an earlier occurrence of the query's token (the token that
    followed it last time: queries that have one);
- :func:`attention_to`: the weight from a named query position to a named key position per prompt (e.g. END to
  the indirect object in IOI), per head.
- :func:`attention_view`: a self-contained HTML view (no network): a head grid coloured by any per-head score,
  the layer's heads, and the selected head's pattern with the query token, key token and weight on hover; for
  Jupyter, ``report.html`` or a file.

>>> p = torch.zeros(1, 1, 1, 4, 4)
>>> p[0, 0, 0, torch.arange(4), torch.tensor([0, 0, 1, 2])] = 1.0  # every query on the token before it
>>> head_scores(p, torch.tensor([[5, 6, 5, 6]]), "previous-token")
tensor([[1.]], dtype=torch.float64)
"""

import math
import numbers
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechpatch.errors import InvalidArgumentError, ShapeMismatchError, choices
from mechpatch.sites import resolve_positions

#: the built-in head scores of :func:`head_scores`
HEAD_SCORES = ("previous-token", "duplicate-token", "induction")


def attention_patterns(
    model: Any,
    prompts: Any,
    *,
    layers: Optional[Sequence[int]] = None,
    batch_size: int = 32,
    memory_budget: Union[int, str, None] = None,
) -> Float[Tensor, "prompt layer head query key"]:
    """Every head's attention pattern on ``prompts`` (token ids [prompt, pos] or strings of one length), for
    ``layers`` (default: all), in chunks of ``batch_size`` prompts, on the CPU."""
    from mechpatch.cache import as_tokens, cache_activations
    from mechpatch.sites import Pattern

    spec = model.spec
    layers = list(range(spec.n_layers)) if layers is None else list(layers)
    bad = [l for l in layers if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < spec.n_layers]
    if bad or not layers:
        raise InvalidArgumentError(f"layers must be a non-empty list of layer indices 0..{spec.n_layers - 1}; got "
                                   f"{layers!r}")
    tokens = as_tokens(model, prompts)
    sites = [Pattern(l, h) for l in layers for h in range(spec.n_heads)]
    cache = cache_activations(model, tokens, sites, device="cpu", batch_size=batch_size, memory_budget=memory_budget,
                              progress=False)
    return torch.stack([torch.stack([cache[Pattern(l, h)] for h in range(spec.n_heads)], 1) for l in layers], 1)


def _describe(x: object) -> str:
    return f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def _check_patterns(patterns: object) -> None:
    if (not isinstance(patterns, Tensor) or not patterns.dtype.is_floating_point or patterns.ndim != 5
            or patterns.shape[-1] != patterns.shape[-2]):
        raise ShapeMismatchError(f"patterns must be a float tensor [prompt, layer, head, query, key] with as many keys "
                                 f"as queries (from attention_patterns); got {_describe(patterns)}")


def _check(patterns: Tensor, tokens: Tensor) -> None:
    _check_patterns(patterns)
    if not isinstance(tokens, Tensor) or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ShapeMismatchError(f"tokens must be an integer tensor [prompt, pos] of token ids (e.g. "
                                 f"model.to_tokens(...)); got {_describe(tokens)}")
    if tokens.shape != (patterns.shape[0], patterns.shape[-1]):
        raise ShapeMismatchError(f"tokens {tuple(tokens.shape)} do not match patterns of {patterns.shape[0]} prompts "
                                 f"x {patterns.shape[-1]} positions")


def _targets(tokens: Tensor, kind: str) -> Tensor:
    """[prompt, query, key]: the keys each query's score counts."""
    n, s = tokens.shape
    q = torch.arange(s)[:, None]
    k = torch.arange(s)[None, :]
    if kind == "previous-token":
        return (k == q - 1).expand(n, s, s)
    same = tokens[:, :, None] == tokens[:, None, :]  # [prompt, query, key]: the key holds the query's token
    if kind == "duplicate-token":
        return same & (k < q)
    # induction: key k follows an earlier occurrence (k - 1 < q) of the query's token
    after = torch.zeros_like(same)
    after[:, :, 1:] = same[:, :, :-1]
    return after & (k <= q) & (k >= 1)


def head_scores(patterns: Float[Tensor, "prompt layer head query key"], tokens: Int[Tensor, "prompt pos"],
                kind: str) -> Float[Tensor, "layer head"]:
    """A built-in score (:data:`HEAD_SCORES`) per head: the attention weight on the score's target keys, summed over
    the targets of a query and averaged over the (prompt, query) pairs that have a target (float64).

    Raises:
        InvalidArgumentError: an unknown score, or tokens where no query has a target (no repeated token for
            ``duplicate-token`` or ``induction``).
        ShapeMismatchError: patterns that are not [prompt, layer, head, query, key], or tokens that are not an
            integer tensor [prompt, pos] matching them.
    """
    if kind not in HEAD_SCORES:
        raise InvalidArgumentError(f"unknown head score {kind!r}; valid: {choices(HEAD_SCORES)}")
    _check(patterns, tokens)
    targets = _targets(tokens.cpu(), kind)
    counted = targets.any(-1)  # [prompt, query]
    if not counted.any():
        raise InvalidArgumentError(f"no query of these prompts has a {kind} target (no token repeats): use prompts "
                                   "with repeated tokens, e.g. a random sequence repeated twice")
    mass = (patterns.double().cpu() * targets[:, None, None].double()).sum(-1)  # [prompt, layer, head, query]
    return (mass * counted[:, None, None].double()).sum((0, 3)) / counted.sum()


def attention_to(patterns: Float[Tensor, "prompt layer head query key"],
                 query: Union[int, Int[Tensor, " prompt"]], key: Union[int, Int[Tensor, " prompt"]]
                 ) -> Float[Tensor, "layer head"]:
    """Per head, the mean weight from position ``query`` to position ``key`` (each an int, or one position per
    prompt, e.g. a task's ``positions["END"]`` and ``positions["IO"]``).

    Raises:
        ShapeMismatchError: patterns that are not [prompt, layer, head, query, key], or a position tensor that is
            not one position per prompt.
        SiteOutOfRangeError: a position outside the prompts.
        InvalidArgumentError: a position that is not an int (a bool, a float).
    """
    _check_patterns(patterns)
    n, s = patterns.shape[0], patterns.shape[-1]
    idx = []
    for name, pos in (("query", query), ("key", key)):
        if not isinstance(pos, Tensor):
            idx.append(torch.full((n,), resolve_positions([pos], s, what=name)[0]))
            continue
        if pos.shape != (n,):
            raise ShapeMismatchError(f"{name} must be an int or an integer tensor [prompt] ({n} here); got "
                                     f"{_describe(pos)}")
        idx.append(torch.tensor(resolve_positions(pos.tolist(), s, what=name, unique=False), dtype=torch.long))
    rows = torch.arange(n)
    return patterns.double().cpu()[rows, :, :, idx[0], idx[1]].mean(0)


def _require_finite(name: str, values: Tensor, layers: Sequence[int]) -> None:
    """Refuse NaN or infinite per-head ``values`` [layer, head], naming the heads (``layers`` names the rows)."""
    bad = (~torch.isfinite(values.detach().cpu())).nonzero().tolist()
    if bad:
        heads = [f"L{layers[l]}H{h}" for l, h in bad]
        raise InvalidArgumentError(f"{name} has non-finite values (NaN or inf) at {len(heads)} head(s): "
                                   f"{choices(heads, limit=8)}; give a finite value for every head")


# ----------------------------------------------------------------------------- the view

_VIEW_JS = r"""
(function () {
  const begin = performance.now();
  const meta = JSON.parse(document.getElementById('mp-meta').textContent);
  const raw = atob(document.getElementById('mp-data').textContent.trim());
  const data = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) data[i] = raw.charCodeAt(i);
  const S = meta.seq, H = meta.n_heads, L = meta.layers.length;
  const state = {prompt: 0, layer: 0, head: 0};
  const offset = (p, l, h) => ((p * L + l) * H + h) * S * S;
  const big = document.getElementById('mp-big'), info = document.getElementById('mp-info');
  function paint(canvas, p, l, h) {
    canvas.width = S; canvas.height = S;
    const ctx = canvas.getContext('2d'), img = ctx.createImageData(S, S), px = img.data, o = offset(p, l, h);
    for (let i = 0; i < S * S; i++) {
      const v = data[o + i];
      px[4 * i] = 255 - v; px[4 * i + 1] = 255 - Math.round(v * 0.6); px[4 * i + 2] = 255; px[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }
  function draw() {
    const t0 = performance.now();
    const row = document.getElementById('mp-heads');
    row.innerHTML = '';
    for (let h = 0; h < H; h++) {
      const c = document.createElement('canvas');
      c.className = 'mp-small' + (h === state.head ? ' mp-on' : '');
      c.title = 'L' + meta.layers[state.layer] + 'H' + h;
      c.onclick = () => { state.head = h; draw(); };
      paint(c, state.prompt, state.layer, h);
      row.appendChild(c);
    }
    paint(big, state.prompt, state.layer, state.head);
    document.getElementById('mp-title').textContent = 'L' + meta.layers[state.layer] + 'H' + state.head +
      (meta.scores ? '  ' + meta.score_name + ' ' + meta.scores[state.layer][state.head].toFixed(3) : '');
    window.__mp_render_ms = performance.now() - t0;
  }
  const grid = document.getElementById('mp-grid');
  meta.layers.forEach((layer, l) => {
    const tr = document.createElement('tr');
    const th = document.createElement('th'); th.textContent = 'L' + layer; tr.appendChild(th);
    for (let h = 0; h < H; h++) {
      const td = document.createElement('td');
      const s = meta.scores ? meta.scores[l][h] : null;
      td.title = 'L' + layer + 'H' + h + (s === null ? '' : ': ' + s.toFixed(3));
      if (s !== null) {
        const a = Math.max(0, Math.min(1, (s - meta.score_min) / ((meta.score_max - meta.score_min) || 1)));
        td.style.background = 'rgba(214, 39, 40, ' + a.toFixed(3) + ')';
      }
      td.onclick = () => { state.layer = l; state.head = h; draw(); };
      tr.appendChild(td);
    }
    grid.appendChild(tr);
  });
  const select = document.getElementById('mp-prompt');
  meta.tokens.forEach((t, p) => {
    const o = document.createElement('option'); o.value = p;
    o.textContent = p + ': ' + t.slice(0, 12).join('') + (t.length > 12 ? '...' : ''); select.appendChild(o);
  });
  select.onchange = () => { state.prompt = +select.value; draw(); };
  big.onmousemove = (e) => {
    const r = big.getBoundingClientRect();
    const k = Math.floor((e.clientX - r.left) / r.width * S), q = Math.floor((e.clientY - r.top) / r.height * S);
    if (q < 0 || k < 0 || q >= S || k >= S) return;
    const toks = meta.tokens[state.prompt], v = data[offset(state.prompt, state.layer, state.head) + q * S + k] / 255;
    info.textContent = 'query ' + q + ' ' + JSON.stringify(toks[q]) + '  ->  key ' + k + ' ' +
      JSON.stringify(toks[k]) + ':  ' + v.toFixed(3);
  };
  draw();
  window.__mp_load_ms = performance.now() - begin;  // decoding the data and the first drawing
})();
"""

_VIEW_CSS = """
body { font-family: sans-serif; margin: 1em; }
#mp-grid td { width: 14px; height: 14px; border: 1px solid #ddd; cursor: pointer; }
#mp-grid th { font-weight: normal; font-size: 11px; padding-right: 4px; }
.mp-small { width: 72px; height: 72px; margin: 2px; border: 2px solid #eee; cursor: pointer; image-rendering: pixelated; }
.mp-on { border-color: #d62728; }
#mp-big { width: 480px; height: 480px; border: 1px solid #ccc; image-rendering: pixelated; }
#mp-info { font-family: monospace; min-height: 1.4em; }
"""


class AttentionView:
    """A self-contained HTML view of attention patterns (no network: the script and the data are in the page).

    Pick a prompt, click a head in the grid (coloured by ``scores`` when given) or among the layer's heads; hover
    over the large pattern to read the query token, the key token and the weight. Weights are stored to 1/255.
    """

    def __init__(self, html: str) -> None:
        self.html = html

    def save(self, path: str) -> str:
        """Write the page to ``path`` (atomically) and return it."""
        from mechpatch.report import write_text

        write_text(path, self.html)
        return path

    def _repr_html_(self) -> str:  # Jupyter: in an iframe, so that the page's script runs isolated
        import html as _html

        return (f'<iframe srcdoc="{_html.escape(self.html, quote=True)}" style="width:100%;height:760px;border:0">'
                "</iframe>")


def attention_view(
    patterns: Float[Tensor, "prompt layer head query key"],
    tokens: Sequence[Sequence[str]],
    *,
    layers: Optional[Sequence[int]] = None,
    scores: Optional[Float[Tensor, "layer head"]] = None,
    score_name: str = "score",
    title: str = "attention patterns",
) -> AttentionView:
    """The view of ``patterns`` (from :func:`attention_patterns`) over ``tokens`` (each prompt's token strings,
    e.g. ``model.to_str_tokens(row)``); ``layers`` names the patterns' layers (default 0, 1, ...); ``scores``
    colours the head grid (any per-head score: :func:`head_scores`, a sweep's effect, an attribution).

    Scores must be finite: a NaN or infinite score (e.g. an effect normalised by a zero difference) has no colour,
    so it is refused, naming its heads, rather than drawn as if it were a number; mask or replace those heads'
    scores first (e.g. ``scores.nan_to_num(0.0)``), or leave ``scores`` out.

    Raises:
        ShapeMismatchError: patterns, tokens, layers or scores that do not match one another.
        InvalidArgumentError: non-finite patterns or scores, or layer names that are not ints.
    """
    import base64
    import html as _html
    import json

    _check_patterns(patterns)
    n, n_layers, n_heads, seq, _ = patterns.shape
    if isinstance(tokens, (str, Tensor)) or len(tokens) != n or any(len(t) != seq for t in tokens):
        raise ShapeMismatchError(f"tokens must hold {n} prompts of {seq} token strings each (one per position, e.g. "
                                 "model.to_str_tokens(row))")
    layers = list(range(n_layers)) if layers is None else list(layers)
    if any(isinstance(l, bool) or not isinstance(l, int) for l in layers):
        raise InvalidArgumentError(f"layers must name the patterns' layers by int index; got {layers!r}")
    if len(layers) != n_layers:
        raise ShapeMismatchError(f"{len(layers)} layer names for patterns of {n_layers} layers")
    if scores is not None and (not isinstance(scores, Tensor) or tuple(scores.shape) != (n_layers, n_heads)):
        raise ShapeMismatchError(f"scores must be a tensor [layer, head] = ({n_layers}, {n_heads}); got "
                                 f"{_describe(scores)}")
    if not bool(torch.isfinite(patterns).all()):
        raise InvalidArgumentError("patterns hold non-finite weights (NaN or inf): attention weights are in [0, 1]")
    if scores is not None:
        _require_finite("scores", scores, layers)
    quantized = (patterns.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
    meta = {"layers": layers, "n_heads": n_heads, "seq": seq, "tokens": [list(map(str, t)) for t in tokens],
            "scores": None if scores is None else scores.double().tolist(), "score_name": score_name}
    if scores is not None:
        meta["score_min"], meta["score_max"] = float(scores.min()), float(scores.max())
    data = base64.b64encode(quantized.numpy().tobytes()).decode("ascii")
    script_meta = json.dumps(meta).replace("</", "<\\/")
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{_html.escape(title)}</title><style>{_VIEW_CSS}</style></head>
<body><h3>{_html.escape(title)}</h3>
<p>Attention weights show where heads look, not what they use: check a head's causal effect before reading more.</p>
<label>prompt <select id="mp-prompt"></select></label>
<table id="mp-grid"></table>
<div id="mp-heads"></div>
<div id="mp-title"></div>
<canvas id="mp-big"></canvas>
<div id="mp-info">hover over the pattern: query (row) and key (column)</div>
<script type="application/json" id="mp-meta">{script_meta}</script>
<script type="text/plain" id="mp-data">{data}</script>
<script>{_VIEW_JS}</script>
</body></html>
"""
    return AttentionView(page)


# ----------------------------------------------------------------------------- attention beside effect


def attention_vs_effect(attention: Float[Tensor, "layer head"], effect: Float[Tensor, "layer head"], *,
                        top: int = 10, attends: float = 0.3, matters: float = 0.1) -> Any:
    """Per head, the attention weight to the position that matters beside its causal effect, and where they
    disagree: the table (pandas) of the ``top`` heads by |effect| and the ``top`` by attention.

    ``disagreement`` names a head with ``|effect| >= matters`` and ``attention < attends`` ("effect without
    attention"), or the reverse ("attention without effect"); ``effect`` in the units given (e.g. a sweep's
    normalised effect).

    Raises:
        ShapeMismatchError: attention and effect are not both tensors [layer, head].
        InvalidArgumentError: a NaN or infinite attention or effect (named by head: a NaN effect would read as "no
            effect"), a ``top`` that is not a positive int, or thresholds that are not finite numbers.
    """
    import pandas as pd

    if (not isinstance(attention, Tensor) or not isinstance(effect, Tensor) or attention.shape != effect.shape
            or attention.ndim != 2):
        raise ShapeMismatchError(f"attention ({_describe(attention)}) and effect ({_describe(effect)}) must both be "
                                 "tensors [layer, head]")
    if isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 1:
        raise InvalidArgumentError(f"top must be a positive int (heads to list by |effect| and by attention); got "
                                   f"{top!r}")
    for name, value in (("attends", attends), ("matters", matters)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise InvalidArgumentError(f"{name} must be a finite number (a threshold); got {value!r}")
    _require_finite("attention", attention, range(attention.shape[0]))
    _require_finite("effect", effect, range(effect.shape[0]))
    n_heads = attention.shape[1]
    a, e = attention.double().flatten().cpu(), effect.double().flatten().cpu()
    chosen = list(dict.fromkeys(torch.argsort(e.abs(), descending=True)[:top].tolist()
                                + torch.argsort(a, descending=True)[:top].tolist()))
    rows = []
    for i in chosen:
        big, looks = abs(float(e[i])) >= matters, float(a[i]) >= attends
        rows.append({"head": f"L{i // n_heads}H{i % n_heads}", "attention": float(a[i]), "effect": float(e[i]),
                     "disagreement": "effect without attention" if big and not looks else
                     "attention without effect" if looks and not big else ""})
    return pd.DataFrame(rows).sort_values("effect", key=lambda c: -c.abs()).reset_index(drop=True)


def attention_effect_figure(table: Any, title: str = "attention to the position that matters vs causal effect") -> Any:
    """A scatter of :func:`attention_vs_effect`'s table: one point per head, disagreements coloured and named."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for kind, colour in (("", "#7f7f7f"), ("effect without attention", "#d62728"),
                         ("attention without effect", "#1f77b4")):
        t = table[table["disagreement"] == kind]
        if len(t):
            fig.add_trace(go.Scatter(x=t["attention"], y=t["effect"], mode="markers+text", text=t["head"],
                                     textposition="top center", name=kind or "agree", marker=dict(color=colour)))
    fig.update_layout(title=title, xaxis_title="attention weight to the position", yaxis_title="causal effect")
    return fig


__all__ = ["HEAD_SCORES", "AttentionView", "attention_effect_figure", "attention_patterns", "attention_to",
           "attention_vs_effect", "attention_view", "head_scores"]
