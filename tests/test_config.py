from dataclasses import dataclass, field
from typing import Optional

import pytest

from mechpatch.config import ConfigError, from_dict, load_config


@dataclass(frozen=True)
class Inner:
    layers: tuple[int, ...] = ()
    scale: float = 1.0


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    seed: Optional[int] = None


def test_nested_config_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner:\n  layers: [1, 2]\n  scale: 2\nseed: 4\n")
    cfg = load_config(Outer, path)
    assert cfg == Outer("run", Inner((1, 2), 2.0), 4)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "sede": 1}, r"unknown key 'sede'; valid keys: 'name', 'inner', 'seed'"),
        ({"name": "x", "inner": {"layer": [1]}}, r"Outer.inner: unknown key 'layer'"),
        ({"name": 3}, r"Outer.name: expected str, got int"),
        ({"name": "x", "seed": True}, r"expected int, got bool"),
        ({"name": "x", "inner": {"layers": [1, "a"]}}, r"Outer.inner.layers\[1\]: expected int"),
        ({}, r"missing required key\(s\) 'name'"),
        ([1, 2], r"expected a mapping"),
    ],
)
def test_bad_configs_name_the_problem(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)


def test_yaml_is_safe_loaded(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, evil)
