"""Reading a run's result files back into result objects, with no model: a sweep's tensors into a
:class:`~mechpatch.patching.PatchResult`, an interactions run's ``interactions.json`` into
:class:`~mechpatch.interactions.InteractionModel` s. The run commands write these files and the report
(:mod:`mechpatch.runs.report`) draws from them; both import this module, which imports neither.
"""

import json
from typing import Any, Optional

from mechpatch.interactions.results import InteractionModel
from mechpatch.patching.results import PatchResult
from mechpatch.runs.store import read_tensors


def read_result(path: str) -> PatchResult:
    """A :class:`PatchResult` from a sweep run's ``tensors/<kind>.safetensors`` (no model needed)."""
    from mechpatch.sites import parse_site

    tensors, meta = read_tensors(path)
    sites = tuple(tuple(parse_site(s) for s in cell) for cell in json.loads(meta["sites"]))
    return PatchResult(
        values=tensors["values"], axes=tuple(json.loads(meta["axes"])),
        labels=tuple(tuple(x) for x in json.loads(meta["labels"])), sites=sites, clean=tensors["clean"],
        corrupted=tensors["corrupted"], noop=tensors["noop"], metric=meta["metric"], direction=meta["direction"],
        intervention=meta["intervention"], meta={"method": meta.get("method", ""), "kind": meta["kind"],
                                                 **({"fallback_reason": meta["fallback_reason"]}
                                                    if "fallback_reason" in meta else {})},
    )


def has_normalized(r: PatchResult) -> bool:
    """Whether the normalised effect is defined (the clean and corrupted baselines differ)."""
    return float(r.clean.mean() - r.corrupted.mean()) != 0


def as_2d(r: PatchResult) -> PatchResult:
    """A 2-axis view of a result for a heatmap: one axis becomes a single row; leading axes of 3 or more merge."""
    if len(r.grid_shape) == 2:
        return r
    if len(r.grid_shape) == 1:
        return PatchResult(r.values.unsqueeze(0), ("all", r.axes[0]), (("all",), r.labels[0]), r.sites, r.clean,
                           r.corrupted, r.noop.unsqueeze(0), r.metric, r.direction, r.intervention, r.meta)
    rows: list[str] = [""]
    for labels in r.labels[:-1]:
        rows = [f"{a}{b}" for a in rows for b in labels]
    shape = r.grid_shape
    return PatchResult(r.values.reshape(-1, shape[-1], r.n_prompts), (".".join(r.axes[:-1]), r.axes[-1]),
                       (tuple(rows), r.labels[-1]), r.sites, r.clean, r.corrupted, r.noop.reshape(-1, shape[-1]),
                       r.metric, r.direction, r.intervention, r.meta)


def model_to_dict(m: InteractionModel) -> dict[str, Any]:
    """Every term of an interaction model and its provenance, JSON-ready (:func:`model_from_dict` reads it)."""
    return {"components": list(m.components), "direction": m.direction, "higher_is_better": m.higher_is_better,
            "method": m.method, "order": m.order, "r2": m.r2, "evaluations": m.evaluations, "forwards": m.forwards,
            "seconds": m.seconds, "terms": [[list(t), float(v)] for t, v in sorted(m.moebius.items())],
            # a token model's positions and prompt (what token_figure draws)
            "info": {k: m.info[k] for k in ("positions", "prompt_tokens") if k in m.info}}


#: directions as files written before issue #14 spelled them -> :data:`mechpatch.patching.DIRECTIONS`
_OLD_DIRECTIONS = {"noising": "noise", "denoising": "denoise"}


def model_from_dict(d: dict[str, Any]) -> InteractionModel:
    """The interaction model :func:`model_to_dict` wrote (without its Fourier fit).

    Files written before issue #14 say ``"noising"``/``"denoising"``; they are read as ``"noise"``/``"denoise"``.
    """
    direction = _OLD_DIRECTIONS.get(d["direction"], d["direction"])
    return InteractionModel(tuple(d["components"]), {tuple(t): float(v) for t, v in d["terms"]}, direction,
                            d["higher_is_better"], d["method"], d["order"], d["r2"], d["evaluations"],
                            d["forwards"], d["seconds"], info=dict(d.get("info") or {}))


def read_models(path: str) -> tuple[InteractionModel, Optional[InteractionModel]]:
    """The fitted model and the exhaustive one (or None) of a run's ``interactions.json``."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    return model_from_dict(data["sparse"]), (model_from_dict(data["exhaustive"]) if data.get("exhaustive") else None)


__all__ = ["as_2d", "has_normalized", "model_from_dict", "model_to_dict", "read_models", "read_result"]
