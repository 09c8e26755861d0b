'''Docstring (Heimersheim & Janiak 2023, as set up in ACDC): name the next parameter in a docstring.

A prompt is a method definition and a reST docstring listing all but the last of a run of matching
parameters; the model should name the next one after the final ``:param``::

    def load(self, seed, mode, label, token, offset, level):
        """river music stone

        :param label: glass cloud
        :param token: garden window
        :param                               -> " offset"

With ACDC's settings (the defaults here) the definition holds 2 prefix arguments, 3 matching arguments
A, B, C and 1 suffix argument; the docstring documents A and B, and C is the answer. Every prompt draws
15 distinct names: the method's, the 14 arguments the corruptions use, and a spare answer. The wrong
answers are the 13 other drawn arguments, as in ACDC (the metric takes the largest of their logits).

Corruptions (ACDC's names): ``random_random`` (default: the matching arguments in the definition and
the docstring both replaced by fresh names), ``random_doc`` (docstring arguments replaced),
``random_def`` (definition's A and B replaced), ``random_answer`` (C replaced in the definition),
``random_def_doc``, ``random_answer_doc``, ``vary_length_doc_desc`` (the docstring's description words
redistributed between its lines) and ``vary_length_doc_desc_random_doc``.

Names and description words are mechpatch's own lists, kept where they are one token (with a leading
space; description words also without) for the model's tokenizer, so clean and corrupted prompts align
token by token. Metric: logit(correct) - max logit(wrong) at the last token.

Positions: ``A_def``, ``B_def``, ``C_def`` (the matching arguments in the definition), ``A_doc``,
``B_doc`` (their ``:param`` lines), ``END``; with other ``n_matching_args`` the letters run A, B, C, D, ...

>>> print(render("load", ["x", "y"], ["a", "b"], ["x"], [["c", "d"]]))
<BLANKLINE>
def load(self, x, y):
    """a b
<BLANKLINE>
    :param x: c d
    :param
'''

import random
from collections.abc import Sequence
from typing import Any

from mechpatch.errors import choices
from mechpatch.model import HookedModel
from mechpatch.patching.metrics import LogitDiff
from mechpatch.tasks.base import TaskData, TaskError, check_size, group_by_length

CORRUPTIONS = (
    "random_random", "random_doc", "random_def", "random_answer", "random_def_doc", "random_answer_doc",
    "vary_length_doc_desc", "vary_length_doc_desc_random_doc",
)

#: Argument and method names (mechpatch's own list).
ARG_NAMES: tuple[str, ...] = tuple("""
data path value result items config key index count size text line user file node model state values output
input source target query params options mode prefix suffix label title message token limit offset timeout
callback handler parent child root response request session client server port host url method header body
format encoding level flag version status error code reason kind field fields record buffer stream channel queue
batch weights bias scale factor width height depth shape device seed rate step epoch loss metric score name
image frame cache table column row group order start end filename folder pattern context event task job
""".split())

#: Words for the method and argument descriptions: nouns that do not double as argument names.
DESC_WORDS: tuple[str, ...] = tuple("""
apple river music stone glass cloud garden window bridge forest mountain coffee paper horse island market
village doctor teacher engine pocket letter winter summer castle bottle candle mirror ribbon tunnel valley
harbor meadow planet rocket silver copper marble cotton leather velvet pepper butter lemon orange cherry tiger
eagle rabbit dragon wizard knight sailor farmer banker lawyer artist singer dancer poet pilot driver hunter
captain mayor judge nurse chef baker tailor ocean desert canyon thunder storm rain snow wind shadow light
flame smoke dust sand ice fog lake pond hill cave church school house street money family friend water
""".split())

#: Words of the template that must not be argument names.
_RESERVED = frozenset({"self", "param", "def", "None", "return", "returns"})


def render(method: str, def_args: Sequence[str], method_desc: Sequence[str], doc_args: Sequence[str],
           arg_descs: Sequence[Sequence[str]]) -> str:
    """The prompt text: a definition, a reST docstring with one ``:param`` line per documented argument,
    and a final open ``:param`` (the blank first line and 4-space indents follow ACDC's prompts)."""
    indent = "    "
    lines = [f"{indent}:param {a}: {' '.join(d)}" for a, d in zip(doc_args, arg_descs)]
    return (f"\ndef {method}(self, {', '.join(def_args)}):\n{indent}\"\"\"{' '.join(method_desc)}\n\n"
            + "".join(line + "\n" for line in lines) + f"{indent}:param")


def single_token_words(model: HookedModel, words: Sequence[str], bare_too: bool = False) -> list[str]:
    """The words that are one token with a leading space (and, with ``bare_too``, without it)."""
    tok = model.tokenizer
    if tok is None:
        raise TaskError("docstring needs a tokenizer (prompts are text); this model has none")
    out = []
    for w in dict.fromkeys(words):
        forms = [" " + w, w] if bare_too else [" " + w]
        if all(_one(tok, f) is not None for f in forms):
            out.append(w)
    return out


def _one(tok: Any, text: str) -> Any:
    ids = tok.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 and ids[0] != tok.unk_token_id else None


def _check_counts(**counts: int) -> None:
    for what, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise TaskError(f"{what} must be a non-negative integer; got {v!r}")
    if counts["n_matching_args"] < 2:
        raise TaskError(f"n_matching_args must be at least 2 (one documented, one to predict); "
                        f"got {counts['n_matching_args']}")
    if counts["met_desc_len"] < 1 or counts["arg_desc_len"] < 1:
        raise TaskError("met_desc_len and arg_desc_len must be at least 1 (a description has words)")


def _prompt_words(model: HookedModel, arg_names: Sequence[str], desc_words: Sequence[str], n_draw: int,
                  need_desc: int) -> tuple[list[str], list[str]]:
    """The single-token argument names (less template words) and description words (less argument names).

    Raises :class:`TaskError` when there are fewer than the ``n_draw`` names or ``need_desc`` words a prompt
    draws.
    """
    names = [w for w in single_token_words(model, arg_names) if w not in _RESERVED]
    descs = [w for w in single_token_words(model, desc_words, bare_too=True) if w not in set(arg_names)]
    if len(names) < n_draw:
        raise TaskError(f"only {len(names)} argument names are single tokens for this tokenizer; each prompt "
                        f"draws {n_draw} distinct ones")
    if len(descs) < need_desc:
        raise TaskError(f"only {len(descs)} description words are single tokens for this tokenizer; need {need_desc}")
    return names, descs


def _draw_texts(
    rng: random.Random, names: list[str], descs: list[str], corruption: str, n_draw: int, n_m: int,
    n_def_prefix_args: int, n_def_suffix_args: int, met_desc_len: int, arg_desc_len: int,
) -> tuple[str, str, list[str], list[str]]:
    """One prompt from ``rng``: its clean and corrupted texts, the argument names drawn, and the matching ones."""
    method, *args = rng.sample(names, n_draw)
    drawn = list(args)
    spare_answer, args = args[0], args[1:]
    rr_def, args = args[:n_m], args[n_m:]
    rr_doc, args = args[:n_m - 1], args[n_m - 1:]
    other, args = args[:n_m - 1], args[n_m - 1:]
    matching, args = args[:n_m], args[n_m:]
    prefix, args = args[:n_def_prefix_args], args[n_def_prefix_args:]
    suffix, args = args[:n_def_suffix_args], args[n_def_suffix_args:]
    doc_prefix = args
    met_desc = rng.sample(descs, met_desc_len)
    clean_doc = doc_prefix + matching[:-1]
    arg_descs = [rng.sample(descs, arg_desc_len) for _ in clean_doc]
    # the descriptions' words moved between lines (drawn for every corruption, so that the clean
    # prompts do not depend on which corruption is asked for)
    varied: list[list[str]] = [[d[0]] for d in arg_descs]
    for d in arg_descs:
        for w in d[1:]:
            varied[rng.randrange(len(varied))].append(w)

    clean_def = prefix + matching + suffix
    defs = {
        "clean": clean_def,
        "random_def": prefix + other + matching[-1:] + suffix,
        "random_answer": prefix + matching[:-1] + [spare_answer] + suffix,
        "random_random": prefix + rr_def + suffix,
    }
    docs = {"clean": clean_doc, "random_doc": doc_prefix + other, "random_random": doc_prefix + rr_doc}
    def_key, doc_key, desc = {
        "random_random": ("random_random", "random_random", arg_descs),
        "random_doc": ("clean", "random_doc", arg_descs),
        "random_def": ("random_def", "clean", arg_descs),
        "random_answer": ("random_answer", "clean", arg_descs),
        "random_def_doc": ("random_def", "random_doc", arg_descs),
        "random_answer_doc": ("random_answer", "random_doc", arg_descs),
        "vary_length_doc_desc": ("clean", "clean", varied),
        "vary_length_doc_desc_random_doc": ("clean", "random_doc", varied),
    }[corruption]
    clean_text = render(method, clean_def, met_desc, clean_doc, arg_descs)
    corrupt_text = render(method, defs[def_key], met_desc, docs[doc_key], desc)
    return clean_text, corrupt_text, drawn, matching


def _argument_positions(ct: list[int], clean_text: str, letters: list[str], matching: list[str],
                        ids: dict[str, Any]) -> dict[str, int]:
    """Token positions of the matching arguments in the definition (``A_def``, ...), the docstring (``A_doc``,
    ...) and ``END``, checking each documented argument is found twice and the answer once."""
    answer = matching[-1]
    positions: dict[str, int] = {}
    for letter, arg in zip(letters, matching):
        at = [p for p, t in enumerate(ct) if t == ids[arg]]
        expected = 1 if arg == answer else 2  # documented arguments appear in the definition and the docstring
        if len(at) != expected:
            raise TaskError(f"argument {arg!r} should appear as token {ids[arg]} {expected} time(s) in "
                            f"{clean_text!r}; found {len(at)} (this tokenizer merges it with its neighbours)")
        positions[f"{letter}_def"] = at[0]
        if arg != answer:
            positions[f"{letter}_doc"] = at[1]
    positions["END"] = len(ct) - 1
    return positions


def make_docstring(
    model: HookedModel,
    n: int = 50,
    seed: int = 0,
    corruption: str = "random_random",
    *,
    n_matching_args: int = 3,
    n_def_prefix_args: int = 2,
    n_def_suffix_args: int = 1,
    n_doc_prefix_args: int = 0,
    met_desc_len: int = 3,
    arg_desc_len: int = 2,
    arg_names: Sequence[str] = ARG_NAMES,
    desc_words: Sequence[str] = DESC_WORDS,
) -> TaskData:
    """Docstring prompts for ``model``'s tokenizer, grouped into equal-length batches.

    Args:
        n: number of prompts.
        corruption: one of :data:`CORRUPTIONS` (default ``"random_random"``, ACDC's).
        n_matching_args, n_def_prefix_args, n_def_suffix_args, n_doc_prefix_args, met_desc_len,
            arg_desc_len: the prompt's shape, ACDC's defaults.
        arg_names, desc_words: the word lists (kept where single tokens; description words that are
            also argument names are dropped, so each argument name is found once per mention).

    The clean prompts depend only on ``seed`` and the shape, not on ``corruption``. Answers are
    ``[correct, wrong...]`` token ids (with a leading space); the metric is ``LogitDiff(wrong="max")``.
    """
    check_size(n)
    if corruption not in CORRUPTIONS:
        raise TaskError(f"unknown docstring corruption {corruption!r}; valid: {choices(CORRUPTIONS)}")
    _check_counts(n_matching_args=n_matching_args, n_def_prefix_args=n_def_prefix_args,
                  n_def_suffix_args=n_def_suffix_args, n_doc_prefix_args=n_doc_prefix_args,
                  met_desc_len=met_desc_len, arg_desc_len=arg_desc_len)
    n_m = n_matching_args
    n_draw = 2 + n_m + (n_m - 1) + (n_m - 1) + n_m + n_def_prefix_args + n_def_suffix_args + n_doc_prefix_args
    names, descs = _prompt_words(model, arg_names, desc_words, n_draw, max(met_desc_len, arg_desc_len))
    tok = model.tokenizer
    letters = [chr(ord("A") + i) for i in range(n_m)]

    rng = random.Random(seed)
    rows: dict[str, list] = {k: [] for k in ("clean", "corrupted", "answers", "positions", "prompts", "cprompts",
                                             "labels")}
    for _ in range(n):
        clean_text, corrupt_text, drawn, matching = _draw_texts(
            rng, names, descs, corruption, n_draw, n_m, n_def_prefix_args, n_def_suffix_args, met_desc_len,
            arg_desc_len)
        ct, kt = model.to_tokens(clean_text)[0].tolist(), model.to_tokens(corrupt_text)[0].tolist()
        answer = matching[-1]
        ids = {w: _one(tok, " " + w) for w in drawn}
        positions = _argument_positions(ct, clean_text, letters, matching, ids)
        rows["clean"].append(ct)
        rows["corrupted"].append(kt)
        rows["answers"].append([ids[answer]] + [ids[w] for w in drawn if w != answer])
        rows["positions"].append(positions)
        rows["prompts"].append(clean_text)
        rows["cprompts"].append(corrupt_text)
        rows["labels"].append(corruption)
    batches = group_by_length(rows["clean"], rows["corrupted"], rows["answers"], rows["positions"], rows["prompts"],
                              rows["cprompts"], rows["labels"])
    longest = max(b.seq_len for b in batches)
    if longest > model.spec.n_ctx:
        raise TaskError(f"prompts have {longest} tokens; the model's context is {model.spec.n_ctx}")
    return TaskData(
        "docstring", batches, LogitDiff(wrong="max"),
        "docstring: logit(next parameter) - max logit(the other drawn arguments) at END; "
        f"corrupted = {corruption}",
        {"seed": seed, "corruption": corruption, "names": len(names), "desc_words": len(descs),
         "n_matching_args": n_m, "n_def_prefix_args": n_def_prefix_args, "n_def_suffix_args": n_def_suffix_args,
         "n_doc_prefix_args": n_doc_prefix_args, "met_desc_len": met_desc_len, "arg_desc_len": arg_desc_len},
    )


__all__ = ["ARG_NAMES", "CORRUPTIONS", "DESC_WORDS", "make_docstring", "render", "single_token_words"]
