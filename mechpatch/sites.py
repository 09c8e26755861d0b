"""What can be patched: frozen value objects naming activation sites, and selections of them.

A site is a small immutable value with one canonical label, e.g. ``Head(9, 6)`` is ``"L9H6"``.
Sites know nothing about hook names (that table lives in :mod:`mechpatch.model`); they are
validated against a :class:`ModelSpec` (the model's shape) and, for positions, a prompt length.

>>> Head(9, 6)
Head(layer=9, head=6, pos=None)
>>> Head(9, 6).label
'L9H6'
>>> parse_site("L9H6") == parse_site("9.6") == Head(9, 6)
True
>>> parse_site("L3.resid_pre@[2,5]")
Resid(layer=3, stage='pre', pos=(2, 5))
>>> Key(2, 1).label
'L2G1.k'
"""

import dataclasses
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, SupportsIndex, Union

from mechpatch.errors import (
    EmptyInputError,
    InvalidArgumentError,
    InvalidTypeError,
    SiteOutOfRangeError,
    UnknownSiteKindError,
    UnsupportedSiteError,
    choices,
)

PosLike = Union[SupportsIndex, Iterable[SupportsIndex], None]


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a model, as far as sites are concerned.

    Built by :mod:`mechpatch.model` from a TransformerBridge config; usable on its own in tests.

    >>> spec = ModelSpec(n_layers=2, n_heads=4, d_model=64, d_head=16, d_vocab=100, n_ctx=32)
    >>> spec.n_kv_heads, spec.has_mlp, spec.is_gqa
    (4, True, False)
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    n_kv_heads: Optional[int] = None
    d_mlp: Optional[int] = None
    attn_only: bool = False
    positional: str = "standard"
    normalization: str = "LN"
    architecture: str = "unknown"
    #: attention and MLP read the same residual stream (GPT-NeoX, GPT-J): there is no resid_mid, and a layer's heads
    #: do not reach its own MLP
    parallel: bool = False

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.d_mlp is None and not self.attn_only:
            object.__setattr__(self, "d_mlp", 4 * self.d_model)

    @property
    def has_mlp(self) -> bool:
        return not self.attn_only

    @property
    def is_gqa(self) -> bool:
        return self.n_kv_heads != self.n_heads

    @property
    def has_pos_embed(self) -> bool:
        return self.positional == "standard"


def _as_index(value: object) -> Optional[int]:
    """``value`` as an int index (ints, numpy and 0-d torch integers), or None (bools, floats, strings...)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _norm_pos(pos: PosLike) -> Optional[tuple[int, ...]]:
    if pos is None:
        return None
    wrong = f"pos must be an int, a sequence of ints or None, not {pos!r}"
    if _as_index(pos) is not None:
        return (_as_index(pos),)
    if isinstance(pos, (str, bytes, bool)) or not isinstance(pos, Iterable):
        raise InvalidTypeError(wrong)
    out = tuple(_as_index(p) for p in pos)
    if any(p is None for p in out):
        raise InvalidTypeError(wrong + " (every position is a token index)")
    if not out:
        raise EmptyInputError("pos is an empty sequence: use None for all positions")
    if len(set(out)) != len(out):
        raise InvalidArgumentError(f"pos has repeated positions: {out}; give each position once")
    return out


def resolve_positions(
    positions: Iterable[SupportsIndex], seq_len: int, what: str = "position", unique: bool = True
) -> tuple[int, ...]:
    """Token positions in a prompt of ``seq_len`` tokens, resolved to ``0..seq_len-1``.

    A position is ``0..seq_len-1``, or ``-seq_len..-1`` counted from the end; anything else is refused
    (positions never wrap around). With ``unique``, two entries naming one token are refused too.

    >>> resolve_positions([0, -1], 5)
    (0, 4)
    >>> resolve_positions([7], 5)
    Traceback (most recent call last):
    ...
    mechpatch.errors.SiteOutOfRangeError: position 7 is outside the prompt of 5 tokens (valid: 0..4, or -5..-1 from the end)

    Raises:
        SiteOutOfRangeError: a position outside the prompt.
        InvalidArgumentError: a position that is not an int, or (``unique``) one token named twice.
    """
    given = list(positions)
    out = []
    for p in given:
        if not isinstance(p, int) or isinstance(p, bool):
            try:
                p = None if isinstance(p, bool) else operator.index(p)  # numpy / 0-d torch integers
            except TypeError:
                p = None
            if p is None:
                raise InvalidArgumentError(f"{what} {given[len(out)]!r} is not an int; positions are token indices")
        if not -seq_len <= p < seq_len:
            raise SiteOutOfRangeError(
                f"{what} {p} is outside the prompt of {seq_len} tokens "
                f"(valid: 0..{seq_len - 1}, or -{seq_len}..-1 from the end)"
            )
        out.append(p % seq_len)
    if unique and len(set(out)) != len(out):
        dup = sorted({p for p in out if out.count(p) > 1})
        named = ", ".join(
            f"{dup_p} (given as {' and '.join(str(g) for g, r in zip(given, out) if r == dup_p)})" for dup_p in dup
        )
        raise InvalidArgumentError(f"{what}s name a token more than once: {named}; give each position once")
    return tuple(out)


def _check_index(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(f"{what} must be an int, not {type(value).__name__} {value!r}")
    if value < 0:
        raise SiteOutOfRangeError(f"{what} must be >= 0, got {value}")


@dataclass(frozen=True)
class Site:
    """Base of all sites. ``pos`` is None (all positions) or a tuple of token positions."""

    kind: ClassVar[str] = "site"
    #: which index of the hook tensor's unit axis this site takes (head, group, neuron), if any
    unit_field: ClassVar[Optional[str]] = None

    @property
    def hook_kind(self) -> str:
        """The key of this site in the model's hook table (``kind``, refined where one kind has variants)."""
        return self.kind

    @property
    def layer_index(self) -> Optional[int]:
        return getattr(self, "layer", None)

    @property
    def unit(self) -> Optional[int]:
        return getattr(self, self.unit_field) if self.unit_field else None

    @property
    def label(self) -> str:
        return self._base_label() + _pos_label(self.pos)

    def _base_label(self) -> str:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def __str__(self) -> str:
        return self.label

    def at(self, pos: PosLike) -> "Site":
        """The same site restricted to ``pos`` (None: all positions).

        >>> Head(1, 2).at(3).label
        'L1H2@3'
        """
        return dataclasses.replace(self, pos=_norm_pos(pos))

    def without_pos(self) -> "Site":
        return dataclasses.replace(self, pos=None)

    def validate(self, spec: ModelSpec, seq_len: Optional[int] = None) -> "Site":
        """Check the site exists in a model of this shape (and positions in a prompt of ``seq_len``).

        Returns the site with negative positions resolved when ``seq_len`` is given.
        """
        self._validate_kind(spec)
        layer = self.layer_index
        if layer is not None and layer >= spec.n_layers:
            raise SiteOutOfRangeError(
                f"{self.label}: layer {layer} is out of range; the model has {spec.n_layers} layers "
                f"(valid: 0..{spec.n_layers - 1})"
            )
        if self.unit_field is not None:
            limit, what = self._unit_limit(spec)
            if self.unit >= limit:
                raise SiteOutOfRangeError(
                    f"{self.label}: {what} {self.unit} is out of range; the model has {limit} {what}s "
                    f"per layer (valid: 0..{limit - 1})"
                )
        pos = self.pos
        if pos is None or seq_len is None:
            return self
        resolved = resolve_positions(pos, seq_len, what=f"{self.label}: position")
        return dataclasses.replace(self, pos=resolved)

    def _validate_kind(self, spec: ModelSpec) -> None:
        pass

    def _unit_limit(self, spec: ModelSpec) -> tuple[int, str]:  # pragma: no cover
        raise NotImplementedError


def _pos_label(pos: Optional[tuple[int, ...]]) -> str:
    if pos is None:
        return ""
    if len(pos) == 1:
        return f"@{pos[0]}"
    return "@[" + ",".join(str(p) for p in pos) + "]"


def _needs_mlp(site: Site, spec: ModelSpec) -> None:
    if not spec.has_mlp:
        raise UnsupportedSiteError(
            f"{site.label}: this model ({spec.architecture}) is attention-only and has no MLP; "
            "choose an attention or residual-stream site instead"
        )


@dataclass(frozen=True)
class Embed(Site):
    """Token embedding output (``hook_embed``), [batch pos d_model]."""

    pos: PosLike = None  # normalised to a tuple of ints (or None: all positions)
    kind: ClassVar[str] = "embed"

    def __post_init__(self) -> None:
        object.__setattr__(self, "pos", _norm_pos(self.pos))

    def _base_label(self) -> str:
        return "embed"


@dataclass(frozen=True)
class PosEmbed(Site):
    """Learned positional embedding output (``hook_pos_embed``); absent in rotary models."""

    pos: PosLike = None  # normalised to a tuple of ints (or None: all positions)
    kind: ClassVar[str] = "pos_embed"

    def __post_init__(self) -> None:
        object.__setattr__(self, "pos", _norm_pos(self.pos))

    def _base_label(self) -> str:
        return "pos_embed"

    def _validate_kind(self, spec: ModelSpec) -> None:
        if not spec.has_pos_embed:
            raise UnsupportedSiteError(
                f"pos_embed: this model uses {spec.positional!r} positions and has no learned "
                "positional embedding; patch 'embed' or a residual-stream site instead"
            )


RESID_STAGES = ("pre", "mid", "post")


@dataclass(frozen=True)
class Resid(Site):
    """Residual stream of a layer: before the block (pre), between attention and MLP (mid), after it (post)."""

    layer: int
    stage: str = "pre"
    pos: PosLike = None  # normalised to a tuple of ints (or None: all positions)
    kind: ClassVar[str] = "resid"

    def __post_init__(self) -> None:
        _check_index("layer", self.layer)
        if self.stage not in RESID_STAGES:
            raise UnknownSiteKindError(
                f"unknown residual stage {self.stage!r}; valid: {choices(RESID_STAGES)}"
            )
        object.__setattr__(self, "pos", _norm_pos(self.pos))

    def _base_label(self) -> str:
        return f"L{self.layer}.resid_{self.stage}"

    @property
    def hook_kind(self) -> str:
        return f"resid_{self.stage}"

    def _validate_kind(self, spec: ModelSpec) -> None:
        if self.stage == "mid" and not spec.has_mlp:
            raise UnsupportedSiteError(
                f"{self.label}: attention-only models have no resid_mid (resid_post follows attention "
                "directly); use 'pre' or 'post'"
            )
        if self.stage == "mid" and spec.parallel:
            raise UnsupportedSiteError(
                f"{self.label}: {spec.architecture} runs attention and MLP in parallel on the same residual stream, "
                "so there is no resid_mid; use 'pre' or 'post' (or attn_out / mlp_out)"
            )


@dataclass(frozen=True)
class Attn(Site):
    """Attention output of a layer (all heads summed, with bias), [batch pos d_model]."""

    layer: int
    pos: PosLike = None  # normalised to a tuple of ints (or None: all positions)
    kind: ClassVar[str] = "attn_out"

    def __post_init__(self) -> None:
        _check_index("layer", self.layer)
        object.__setattr__(self, "pos", _norm_pos(self.pos))

    def _base_label(self) -> str:
        return f"L{self.layer}.attn_out"


@dataclass(frozen=True)
class Mlp(Site):
    """MLP output of a layer, [batch pos d_model]."""

    layer: int
    pos: PosLike = None  # normalised to a tuple of ints (or None: all positions)
    kind: ClassVar[str] = "mlp_out"

    def __post_init__(self) -> None:
        _check_index("layer", self.layer)
        object.__setattr__(self, "pos", _norm_pos(self.pos))

    def _base_label(self) -> str:
        return f"L{self.layer}.mlp_out"

    def _validate_kind(self, spec: ModelSpec) -> None:
        _needs_mlp(self, spec)


@dataclass(frozen=True)
class _HeadSite(Site):
    layer: int
    head: int
    pos: PosLike = None  # normalised to a tuple of ints (or None: all positions)
    unit_field: ClassVar[Optional[str]] = "head"
    suffix: ClassVar[str] = ""

    def __post_init__(self) -> None:
        _check_index("layer", self.layer)
        _check_index("head", self.head)
        object.__setattr__(self, "pos", _norm_pos(self.pos))

    def _base_label(self) -> str:
        return f"L{self.layer}H{self.head}{self.suffix}"

    def _unit_limit(self, spec: ModelSpec) -> tuple[int, str]:
        return spec.n_heads, "head"


@dataclass(frozen=True)
class Head(_HeadSite):
    """One attention head's output before W_O (``hook_z``), [batch pos d_head]. Label ``L9H6``."""

    kind: ClassVar[str] = "head"


@dataclass(frozen=True)
class HeadResult(_HeadSite):
    """One head's contribution to the residual stream (``hook_result``, z @ W_O, no bias), gated."""

    kind: ClassVar[str] = "head_result"
    suffix: ClassVar[str] = ".result"


@dataclass(frozen=True)
class Query(_HeadSite):
    """One head's queries (``hook_q``), [batch pos d_head]."""

    kind: ClassVar[str] = "query"
    suffix: ClassVar[str] = ".q"


@dataclass(frozen=True)
class Pattern(_HeadSite):
    """One head's attention pattern (``hook_pattern``), [batch query key]; ``pos`` selects query positions."""

    kind: ClassVar[str] = "pattern"
    suffix: ClassVar[str] = ".pattern"


@dataclass(frozen=True)
class _GroupSite(Site):
    layer: int
    group: int
    pos: PosLike = None  # normalised to a tuple of ints (or None: all positions)
    #: parsed from head notation ('L1H2.k'): the same site where a group is one head, refused under GQA
    by_head: bool = dataclasses.field(default=False, compare=False, repr=False)
    unit_field: ClassVar[Optional[str]] = "group"
    suffix: ClassVar[str] = ""

    def __post_init__(self) -> None:
        _check_index("layer", self.layer)
        _check_index("group", self.group)
        object.__setattr__(self, "pos", _norm_pos(self.pos))

    def _validate_kind(self, spec: ModelSpec) -> None:
        if self.by_head and spec.n_kv_heads != spec.n_heads:
            per = spec.n_heads // spec.n_kv_heads
            g = self.group // per
            raise UnsupportedSiteError(
                f"'L{self.layer}H{self.group}{self.suffix}': this model shares keys and values among heads "
                f"({spec.n_heads} heads, {spec.n_kv_heads} key/value groups; head {self.group} reads group {g}), "
                f"so they are named by group: 'L{self.layer}G{g}{self.suffix}'"
            )

    def _base_label(self) -> str:
        return f"L{self.layer}G{self.group}{self.suffix}"

    def _unit_limit(self, spec: ModelSpec) -> tuple[int, str]:
        return spec.n_kv_heads, "key/value group"


@dataclass(frozen=True)
class Key(_GroupSite):
    """Keys of one key/value group (``hook_k``); a group is one head unless the model uses GQA."""

    kind: ClassVar[str] = "key"
    suffix: ClassVar[str] = ".k"


@dataclass(frozen=True)
class Value(_GroupSite):
    """Values of one key/value group (``hook_v``); a group is one head unless the model uses GQA."""

    kind: ClassVar[str] = "value"
    suffix: ClassVar[str] = ".v"


@dataclass(frozen=True)
class Neuron(Site):
    """One MLP neuron's activation (``mlp.hook_post``), [batch pos]. Label ``L3N42``."""

    layer: int
    neuron: int
    pos: PosLike = None  # normalised to a tuple of ints (or None: all positions)
    kind: ClassVar[str] = "neuron"
    unit_field: ClassVar[Optional[str]] = "neuron"

    def __post_init__(self) -> None:
        _check_index("layer", self.layer)
        _check_index("neuron", self.neuron)
        object.__setattr__(self, "pos", _norm_pos(self.pos))

    def _base_label(self) -> str:
        return f"L{self.layer}N{self.neuron}"

    def _validate_kind(self, spec: ModelSpec) -> None:
        _needs_mlp(self, spec)

    def _unit_limit(self, spec: ModelSpec) -> tuple[int, str]:
        return spec.d_mlp, "neuron"


SITE_KINDS: dict[str, type[Site]] = {
    cls.kind: cls
    for cls in (Embed, PosEmbed, Resid, Attn, Mlp, Head, HeadResult, Query, Key, Value, Pattern, Neuron)
}

# ---------------------------------------------------------------- parsing and selection

_LAYER_SUFFIXES = {
    "resid_pre": (Resid, {"stage": "pre"}),
    "resid_mid": (Resid, {"stage": "mid"}),
    "resid_post": (Resid, {"stage": "post"}),
    "attn_out": (Attn, {}),
    "attn": (Attn, {}),
    "mlp_out": (Mlp, {}),
    "mlp": (Mlp, {}),
}
_HEAD_SUFFIXES = {"": Head, "z": Head, "result": HeadResult, "q": Query, "pattern": Pattern, "k": Key, "v": Value}
_SPEC_GRAMMAR = (
    "'embed', 'pos_embed', 'L3.resid_pre|resid_mid|resid_post|attn_out|mlp_out', 'L9H6' or '9.6' "
    "(head output), 'L9H6.result|q|pattern', 'L9G1.k|v' (key/value group), 'L3N42' (neuron); "
    "optionally followed by '@5' or '@[2,5]' for positions"
)

_RANGE = r"(\*|\d+(?:-\d+)?)"
_SITE_RE = re.compile(
    rf"""^(?:
        (?P<simple>embed|pos_embed)
      | L{_RANGE.replace('(', '(?P<l1>', 1)}\.(?P<lsuffix>[a-z_]+)
      | L{_RANGE.replace('(', '(?P<l2>', 1)}(?P<unitch>[HG]){_RANGE.replace('(', '(?P<u2>', 1)}(?:\.(?P<hsuffix>[a-z]+))?
      | L{_RANGE.replace('(', '(?P<l3>', 1)}N{_RANGE.replace('(', '(?P<n3>', 1)}
      | (?P<l4>\d+)\.(?P<h4>\d+)
    )(?:@(?P<pos>-?\d+|\[\s*-?\d+(?:\s*,\s*-?\d+)*\s*\]))?$""",
    re.VERBOSE,
)


def _expand(token: str, limit: Optional[int], what: str, text: str) -> list[int]:
    if token == "*" or "-" in token:
        if limit is None:
            raise InvalidArgumentError(
                f"{text!r}: wildcards and ranges need a model spec to expand; use select(spec, ...)"
            )
        if token == "*":
            return list(range(limit))
        lo, hi = (int(t) for t in token.split("-"))
        if lo > hi:
            raise InvalidArgumentError(f"{text!r}: empty {what} range {token} (write low-high, e.g. 0-3)")
        return list(range(lo, hi + 1))
    return [int(token)]


def _parse(text: str, spec: Optional[ModelSpec]) -> list[Site]:
    if not isinstance(text, str):
        raise InvalidTypeError(f"a site spec must be a string or a Site, not {type(text).__name__} {text!r}")
    m = _SITE_RE.match(text.strip().replace(" ", ""))
    if m is None:
        raise UnknownSiteKindError(f"cannot parse site {text!r}; valid forms: {_SPEC_GRAMMAR}")
    g = m.groupdict()
    pos = None
    if g["pos"] is not None:
        pos = tuple(int(p) for p in g["pos"].strip("[]").split(","))
    n_layers = spec.n_layers if spec else None
    if g["simple"]:
        return [SITE_KINDS[g["simple"]](pos=pos)]
    if g["l1"] is not None:
        suffix = g["lsuffix"]
        if suffix not in _LAYER_SUFFIXES:
            raise UnknownSiteKindError(
                f"unknown layer site {suffix!r} in {text!r}; valid: {choices(sorted(_LAYER_SUFFIXES))}"
            )
        cls, extra = _LAYER_SUFFIXES[suffix]
        return [cls(layer=l, pos=pos, **extra) for l in _expand(g["l1"], n_layers, "layer", text)]
    if g["l2"] is not None:
        suffix = g["hsuffix"] or ""
        if suffix not in _HEAD_SUFFIXES:
            raise UnknownSiteKindError(
                f"unknown head site '.{suffix}' in {text!r}; valid: {choices(s for s in _HEAD_SUFFIXES if s)}"
            )
        cls = _HEAD_SUFFIXES[suffix]
        is_group = issubclass(cls, _GroupSite)
        if g["unitch"] == "G" and not is_group:
            raise UnknownSiteKindError(
                f"{text!r}: 'G' names a key/value group, which only '.k' and '.v' sites have; valid: 'L1G0.k', 'L1G0.v', or 'H' for heads"
            )
        limit = None if spec is None else (spec.n_kv_heads if is_group else spec.n_heads)
        units = _expand(g["u2"], limit, "head", text)
        layers = _expand(g["l2"], n_layers, "layer", text)
        if is_group:
            by_head = g["unitch"] == "H"
            return [cls(layer=l, group=u, pos=pos, by_head=by_head) for l in layers for u in units]
        return [cls(layer=l, head=u, pos=pos) for l in layers for u in units]
    if g["l3"] is not None:
        neurons = _expand(g["n3"], spec.d_mlp if spec else None, "neuron", text)
        return [Neuron(layer=l, neuron=n, pos=pos) for l in _expand(g["l3"], n_layers, "layer", text) for n in neurons]
    return [Head(layer=int(g["l4"]), head=int(g["h4"]), pos=pos)]


def parse_site(text: str) -> Site:
    """Parse one site from the notation papers use (``"L9H6"``, ``"9.6"``, ``"L3.mlp_out@5"``).

    Raises:
        UnknownSiteKindError: the text is not a site; the message lists the valid forms.
    """
    sites = _parse(text, None)
    return sites[0]


def _as_spec(spec: object) -> ModelSpec:
    """A model's spec from the spec or from the model itself (``select(model, ...)`` reads ``model.spec``)."""
    inner = getattr(spec, "spec", None)
    if isinstance(inner, ModelSpec):
        return inner
    if not isinstance(spec, ModelSpec):
        raise InvalidTypeError(f"expected a model or its ModelSpec (model.spec); got {type(spec).__name__}")
    return spec


def select(spec: Any, *specs: Union[str, Site, Iterable[Union[str, Site]]]) -> list[Site]:
    """Expand site specs (wildcards ``*`` and ranges ``a-b`` allowed) into validated sites, in order. ``spec`` is a
    :class:`ModelSpec` or a model (its ``.spec``).

    >>> spec = ModelSpec(n_layers=3, n_heads=2, d_model=8, d_head=4, d_vocab=10, n_ctx=8)
    >>> [s.label for s in select(spec, "L1H*", "L0-1.mlp_out")]
    ['L1H0', 'L1H1', 'L0.mlp_out', 'L1.mlp_out']
    """
    spec = _as_spec(spec)
    out: list[Site] = []
    for item in specs:
        if isinstance(item, (str, Site)):
            items: Iterable = [item]
        elif isinstance(item, Iterable):
            items = item
        else:
            raise InvalidTypeError(f"a site spec is a site, its label (e.g. 'L1H0') or a list of them; got "
                                   f"{type(item).__name__} {item!r}")
        for one in items:
            sites = [one] if isinstance(one, Site) else _parse(one, spec)
            out.extend(s.validate(spec) for s in sites)
    if not out:
        raise EmptyInputError("no sites selected")
    return out


#: a site or its label ("L9H6", "L3.mlp_out@5")
SiteLike = Union[Site, str]
#: sites: one, or a list (what caching and receivers take)
Sites = Union[SiteLike, Iterable[SiteLike]]
#: sets of sites, each patched together: one site, or a list of sites and lists of sites (see :func:`site_sets`)
SiteSets = Union[SiteLike, Iterable[Union[SiteLike, Iterable[SiteLike]]]]


def site_sets(spec: ModelSpec, given: object, what: str = "site sets") -> tuple[tuple[Site, ...], ...]:
    """Sets of sites (each patched together) from what users write: one site or site string (one set), or a list
    whose entries are each a site, a site string (a wildcard expands within its set: ``"L1H*"`` is every head of
    layer 1 at once) or a list of them. Validated against ``spec``.

    >>> spec = ModelSpec(n_layers=3, n_heads=2, d_model=8, d_head=4, d_vocab=10, n_ctx=8)
    >>> [[s.label for s in group] for group in site_sets(spec, ["L1H0", ["L0.mlp_out", Head(2, 1)], "L1H*"])]
    [['L1H0'], ['L0.mlp_out', 'L2H1'], ['L1H0', 'L1H1']]
    """
    if isinstance(given, (Site, str)):
        given = [given]
    if not isinstance(given, Iterable):
        raise InvalidTypeError(f"{what} must be a site, a site string, or a list of them (or of lists of them); got "
                               f"{type(given).__name__} {given!r}")
    out = []
    for entry in given:
        if not isinstance(entry, (Site, str, Iterable)):
            raise InvalidTypeError(f"{what}: {entry!r} is not a site, a site string or a list of them")
        out.append(tuple(select(spec, entry)))
    if not out:
        raise EmptyInputError(f"no {what} given: give at least one site (e.g. Head(0, 1) or 'L0.resid_pre')")
    return tuple(out)


def heads(spec: Any, layers: Optional[Iterable[int]] = None, kind: type[Site] = Head) -> list[Site]:
    """Every head (or every key/value group for ``Key``/``Value``) of the given layers (default: all); ``spec`` is a
    :class:`ModelSpec` or a model.

    >>> spec = ModelSpec(n_layers=2, n_heads=4, n_kv_heads=2, d_model=8, d_head=2, d_vocab=10, n_ctx=8)
    >>> [s.label for s in heads(spec, layers=[1], kind=Key)]
    ['L1G0.k', 'L1G1.k']
    """
    spec = _as_spec(spec)
    layer_list = list(range(spec.n_layers)) if layers is None else list(layers)
    if issubclass(kind, _GroupSite):
        sites = [kind(layer=l, group=g) for l in layer_list for g in range(spec.n_kv_heads)]
    elif issubclass(kind, _HeadSite):
        sites = [kind(layer=l, head=h) for l in layer_list for h in range(spec.n_heads)]
    else:
        raise UnknownSiteKindError(
            f"heads() takes a per-head site kind; got {kind.__name__}; valid: "
            f"{choices(c.__name__ for c in SITE_KINDS.values() if issubclass(c, (_HeadSite, _GroupSite)))}"
        )
    return [s.validate(spec) for s in sites]


def layers(spec: Any, kind: type[Site] = Resid, **fields: object) -> list[Site]:
    """One site of a per-layer kind for every layer, e.g. ``layers(spec, Resid, stage="mid")`` (``spec``: a
    :class:`ModelSpec` or a model)."""
    spec = _as_spec(spec)
    if kind not in (Resid, Attn, Mlp):
        raise UnknownSiteKindError(
            f"layers() takes a per-layer site kind; got {kind.__name__}; valid: 'Resid', 'Attn', 'Mlp'"
        )
    return [kind(layer=l, **fields).validate(spec) for l in range(spec.n_layers)]
