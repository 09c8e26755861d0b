"""Frozen config dataclasses loaded from YAML (safe-loaded), with misspelt keys and wrong types refused.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Run:
...     seed: int = 0
...     name: str = "x"
>>> from_dict(Run, {"seed": 3})
Run(seed=3, name='x')
>>> from_dict(Run, {"sed": 3})
Traceback (most recent call last):
...
mechpatch.config.ConfigError: Run: unknown key 'sed'; valid keys: 'seed', 'name'
"""

import dataclasses
import importlib
import os
import types
import typing
from typing import Any, TypeVar, Union

import yaml

from mechpatch.errors import MechpatchError, choices

T = TypeVar("T")

#: the seeds a config accepts (``seed``, and a task's ``seed`` argument): what every seeded generator of a run takes,
#: numpy's legacy seeding (the SPEX backend) being the narrowest; the same range :mod:`mechpatch.probes` accepts
SEED_MAX = 2**32 - 1


class ConfigError(MechpatchError, ValueError):
    """A config file or dict does not fit its dataclass: unknown key, missing key, wrong type."""


def _coerce(where: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(where, arg, value)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(f"{where}[{i}]", item_tp, v) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping (key: value, or {{}}), got "
                              f"{'null' if value is None else f'{type(value).__name__} {value!r}'}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from a mapping, refusing unknown keys and wrong types."""
    where = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {choices(fields)}")
    kwargs = {k: _coerce(f"{where}.{k}", hints[k], v) for k, v in data.items()}
    if "seed" in kwargs:
        check_seed(f"{where}.seed", kwargs["seed"])
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {choices(missing)}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from err


def check_seed(where: str, value: Any) -> None:
    """Refuse an int seed outside ``0..SEED_MAX`` (a type error is :func:`_coerce`'s to report).

    >>> check_seed("run.seed", 2**70)
    Traceback (most recent call last):
    ...
    mechpatch.config.ConfigError: run.seed: 1180591620717411303424 is out of range; valid: 0..4294967295 (0..2**32 - 1)
    """
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{where}: {value} is out of range; valid: 0..{SEED_MAX} (0..2**32 - 1)")


def require_keys(path: Union[str, os.PathLike], data: Any, keys: Any) -> None:
    """Refuse a config file whose top-level mapping lacks any of ``keys`` (keys a command needs named although
    its dataclass gives them defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return  # from_dict names the problem
    missing = [k for k in keys if k not in data]
    if missing:
        raise ConfigError(f"{os.path.basename(os.fspath(path))}: missing required key(s) {choices(missing)}"
                          f"{' (the file is empty)' if not data else ''}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (safe: plain data only) that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base constructor names it
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    lines = f"twice on line {line}" if first == line else f"on lines {first} and {line}"
                    raise ConfigError(f"{self.name}: duplicate key {key!r} {lines} (YAML would silently keep the "
                                      "last); give it once")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, name: str = "<config>") -> Any:
    r"""Safe-load YAML ``text``, refusing duplicate keys (:class:`ConfigError` naming the key and both lines).

    >>> parse_yaml("a: 1\nb: {c: 2}\n")
    {'a': 1, 'b': {'c': 2}}
    >>> parse_yaml("seed: 1\nmodel: m\nseed: 2\n", "c.yaml")
    Traceback (most recent call last):
    ...
    mechpatch.config.ConfigError: c.yaml: duplicate key 'seed' on lines 1 and 3 (YAML would silently keep the last); give it once
    """
    loader = _UniqueKeyLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def resolve(name: str) -> Any:
    """The object a ``"module:function"`` name refers to (a loader, a job builder, a trainer), imported now.

    Raises:
        ImportError, AttributeError: the module or the name in it does not exist (callers say what the name was for).
    """
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ImportError(f"{name!r} is not of the form 'module:function'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _one_line(err: yaml.YAMLError) -> str:
    """A YAML error on one line: where (line, column) and what, without the quoted source."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        context = f" ({err.context})" if err.context else ""
        return f"{where}{err.problem}{context}"
    return " ".join(str(err).split())


def load_config(cls: type[T], path: Union[str, os.PathLike], required: Any = ()) -> T:
    """Read a YAML file (safe-loaded, duplicate keys refused) into the frozen dataclass ``cls``.

    ``required``: top-level keys the file must name even where ``cls`` has defaults for them. Every problem with
    the file (missing, a directory, unreadable, not UTF-8, not YAML) is a :class:`ConfigError`.
    """
    shown = repr(os.fspath(path))
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {shown}") from None
    except IsADirectoryError:
        raise ConfigError(f"config {shown} is a directory; give a YAML file (e.g. configs/sweep_induction.yaml)") \
            from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config {shown} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                          f"{err.start}); give a YAML file") from None
    except OSError as err:
        raise ConfigError(f"config {shown} cannot be read: {err.strerror or err}") from None
    try:
        data = parse_yaml(text, os.path.basename(os.fspath(path)))
    except yaml.YAMLError as err:
        raise ConfigError(f"{shown} is not valid YAML: {_one_line(err)}") from err
    require_keys(path, data, required)
    return from_dict(cls, data, where=os.path.basename(os.fspath(path)))
