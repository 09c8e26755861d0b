"""The zoo's registry: unknown names and keywords are typed errors that list the valid ones."""

import importlib
import inspect

import pytest

from mechpatch import zoo
from mechpatch.errors import InvalidArgumentError, ModelLoadError


def test_unknown_keyword_names_the_valid_ones(monkeypatch):
    """zoo.load(..., devcie=...) was a bare TypeError from the loader."""
    monkeypatch.setattr(importlib, "import_module", lambda *a: pytest.fail("the loader ran before refusing"))
    with pytest.raises(InvalidArgumentError, match=r"induction-2l: unknown keyword argument 'devcie' \(did you mean "
                                                   r"'device'\?\); valid: 'device', 'dtype', 'weights'"):
        zoo.load("induction-2l", devcie="cpu")
    with pytest.raises(InvalidArgumentError, match=r"arguments 'colour', 'dtpye' \(did you mean 'dtype'\?\); valid: "
                                                   r"'device', 'dtype', 'prefer_hub_cache'"):
        zoo.load("smollm2-135m", colour="red", dtpye="float32")
    with pytest.raises(ModelLoadError, match="unknown bundled model 'induction-3l'; valid: .*'induction-2l'"):
        zoo.load("induction-3l")


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_keywords_are_the_loaders_parameters(name):
    entry = zoo.MODELS[name]
    module, func = entry.loader.split(":")
    fn = getattr(importlib.import_module(module), func)
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):  # tracr's wrappers pass **kwargs to load_tracr
        from mechpatch.zoo.tracr import load_tracr

        params = {k: v for k, v in inspect.signature(load_tracr).parameters.items() if k != "name"}
    assert set(entry.keywords) == set(params)


def test_known_keywords_reach_the_loader():
    model = zoo.load("induction-2l", device="cpu", dtype="float64")
    assert str(model.dtype) == "torch.float64"
