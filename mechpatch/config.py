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
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(f"{where}[{i}]", item_tp, v) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
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


def load_config(cls: type[T], path: Union[str, os.PathLike]) -> T:
    """Read a YAML file with ``yaml.safe_load`` into the frozen dataclass ``cls``."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {os.fspath(path)!r}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{os.fspath(path)!r} is not valid YAML: {err}") from err
    return from_dict(cls, data, where=os.path.basename(os.fspath(path)))
