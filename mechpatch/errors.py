"""Typed errors raised at mechpatch's public boundary.

Every error says what was wrong and, where there is a finite set of valid choices, lists them.
All derive from :class:`MechpatchError`, and each also derives from the built-in exception a
caller would naturally catch (``ValueError``, ``KeyError``, ``RuntimeError``), so
``except ValueError`` keeps working.
"""

from collections.abc import Iterable


class MechpatchError(Exception):
    """Base class of every error mechpatch raises on purpose."""


class UnknownSiteKindError(MechpatchError, ValueError):
    """A site was named by a kind mechpatch does not know (e.g. ``"L3.mpl"``)."""


class SiteOutOfRangeError(MechpatchError, IndexError):
    """A layer, head, key/value group, neuron or position index is outside the model or prompt."""


class UnsupportedSiteError(MechpatchError, ValueError):
    """The site exists in mechpatch's vocabulary but not in this architecture (e.g. MLP in attn-only)."""


class GatedHookError(MechpatchError, RuntimeError):
    """A hook that TransformerLens only fires behind a flag could not be enabled, or did not fire."""


class ShapeMismatchError(MechpatchError, ValueError):
    """Two inputs that must align (clean vs corrupted, tokens vs answers) do not."""


class TokenizerError(MechpatchError, ValueError):
    """Text was given where no tokenizer is available, or text did not tokenize as required."""


class DeviceError(MechpatchError, RuntimeError):
    """A device or dtype that this machine cannot use was requested."""


class EmptyInputError(MechpatchError, ValueError):
    """An empty prompt list, site list or sweep was given."""


class MemoryBudgetError(MechpatchError, MemoryError):
    """A request would need more memory than the budget the caller set."""


class ModelLoadError(MechpatchError, RuntimeError):
    """A model could not be loaded from the given source."""


class InvalidArgumentError(MechpatchError, ValueError):
    """An argument is not one of its valid choices, or outside its valid range (the message names both)."""


class InvalidTypeError(MechpatchError, TypeError):
    """An argument of the wrong type (a float where a layer index goes, a string where sites go); the message names
    the types accepted."""


class DamagedFileError(MechpatchError, RuntimeError):
    """A file mechpatch wrote earlier cannot be trusted: missing, truncated, unreadable, or its content hash
    differs from the one recorded when it was written. The message names the file and how to recover."""


class RunLockedError(MechpatchError, RuntimeError):
    """Another live process holds the run directory's lock."""


def choices(values: Iterable[object], limit: int = 12) -> str:
    """Format valid choices for an error message, eliding the middle of long lists.

    >>> choices(["pre", "mid", "post"])
    "'pre', 'mid', 'post'"
    >>> choices(range(100), limit=4)
    '0, 1, ..., 98, 99'
    """
    vals = [repr(v) if isinstance(v, str) else str(v) for v in values]
    if len(vals) > limit:
        half = limit // 2
        vals = vals[:half] + ["..."] + vals[-half:]
    return ", ".join(vals)


def unknown_names(given: Iterable[str], valid: Iterable[str], noun: str = "keyword argument") -> str:
    """The names in ``given`` that are not ``valid``, each with a "did you mean" where one is close, as
    ``"unknown option 'taus' (did you mean 'tau'?)"``; "" when every name is valid.

    >>> unknown_names(["blok", "n"], ["n", "block"])
    "unknown keyword argument 'blok' (did you mean 'block'?)"
    """
    import difflib

    valid = list(valid)
    unknown = [k for k in given if k not in valid]
    if not unknown:
        return ""
    hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, valid, 1)) else repr(k)
             for k in unknown]
    return f"unknown {noun}{'s' if len(unknown) > 1 else ''} {', '.join(hints)}"
