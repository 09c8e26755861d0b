"""One forward: attention is computed in :mod:`mechpatch.patching.functional` and nowhere else.

Two checks. Read from the code: no module but the forward (and the slow references, the tests' oracles) calls a
softmax over key positions or reaches into the forward's private helpers. Run: every fast method's attention goes
through ``functional.attention_pattern`` (a method with its own copy of attention would not call it, and a method
that did not use the pattern it returns would not change when it changes).
"""

import ast
from pathlib import Path

import torch

from mechpatch.attribution.edges import edge_attribution
from mechpatch.attribution.nodes import atp
from mechpatch.circuit.edges import edge_patch
from mechpatch.interactions.run import evaluate_masks
from mechpatch.patching import fast, functional
from mechpatch.patching.engine import run_patches
from mechpatch.patching.paths import path_patch
from mechpatch.sites import Head

PACKAGE = Path(__file__).resolve().parents[1] / "mechpatch"
FORWARD = "patching/functional.py"
#: modules whose softmax is over the vocabulary (metrics on logits), not over key positions
VOCABULARY_SOFTMAX = {"patching/metrics.py", "tasks/greater_than.py"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        yield rel, ast.parse(path.read_text())


def _softmax_calls(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("softmax", "log_softmax", "scaled_dot_product_attention"):
                lines.append(node.lineno)
    return lines


def test_only_the_forward_and_the_references_compute_a_softmax():
    found = {rel: lines for rel, tree in _modules() if (lines := _softmax_calls(tree))}
    assert FORWARD in found  # the check sees the forward's own softmax
    outside = {rel: lines for rel, lines in found.items()
               if rel != FORWARD and rel not in VOCABULARY_SOFTMAX and "reference" not in rel}
    assert outside == {}, f"attention computed outside the forward (module: lines): {outside}"


def test_nothing_reaches_into_the_forwards_private_helpers():
    offenders = []
    for rel, tree in _modules():
        if rel == FORWARD:
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "F_"
                    and node.attr.startswith("_")):
                offenders.append(f"{rel}:{node.lineno} F_.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module == "mechpatch.patching.functional":
                offenders += [f"{rel}:{node.lineno} {a.name}" for a in node.names if a.name.startswith("_")]
    assert offenders == []


def _every_fast_method(model):
    """Each fast method once on ``model`` (tiny arguments), returning its numbers."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(1, 90, (2, 6), generator=g)
    src = torch.randint(1, 90, (2, 6), generator=g)
    answers = torch.tensor([[3, 4], [5, 6]])
    heads = [Head(0, 0), Head(1, 1)]
    lay_edge = ("L0H0", "L1H1.q")
    return {
        "run_patches": run_patches(model, base, heads, metric="logit_diff", source=src, answers=answers,
                                   method="fast").values,
        "path_patch": path_patch(model, base, [Head(0, 0)], receivers="logits", metric="logit_diff", source=src,
                                 answers=answers, method="fast").values,
        "edge_patch": edge_patch(model, base, [[lay_edge]], metric="logit_diff", source=src, answers=answers).values,
        "edge_attribution": edge_attribution(model, base, metric="logit_diff", source=src, answers=answers).scores,
        "atp_qk_fix": atp(model, base, [Head(1, 0)], metric="logit_diff", source=src, answers=answers,
                          qk_fix=True).estimates,
        "interaction_masks": evaluate_masks(model, base, [Head(0, 0), Head(1, 1)], masks=torch.tensor([[True, False]]),
                                            metric="logit_diff", source=src, answers=answers, method="fast").values,
    }


def test_every_fast_method_attends_through_the_one_forward(llama, monkeypatch):
    before = _every_fast_method(llama)
    calls = {"n": 0}
    original = functional.attention_pattern

    def uniform(fm, q, k, hk=functional.NO_HOOKS, layer=0):
        """Attention spread evenly over the keys each query may see: a different model, through the same door."""
        calls["n"] += 1
        pattern = original(fm, q, k, hk, layer)
        allowed = (pattern > 0).to(pattern.dtype)
        return allowed / allowed.sum(-1, keepdim=True)

    fast.resolve(llama)  # the fast path's one check against the bridge is done (uniform attention would fail it)
    # the fused kernel computes attention_pattern's function where no pattern is read or written (held equal in
    # tests/patching/test_architectures.py); turned off, every method must come through the explicit door
    monkeypatch.setattr(functional, "FUSED", False)
    monkeypatch.setattr(functional, "attention_pattern", uniform)
    after = _every_fast_method(llama)
    assert calls["n"] > 0
    for name in before:
        assert not torch.allclose(before[name].double(), after[name].double()), (
            f"{name} did not change when the forward's attention did: it computes attention itself")


def test_attention_pattern_is_causal_and_sums_to_one(llama):
    fm = fast.weights(llama)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, fm.n_heads, 5, fm.d_head, generator=g)
    k = torch.randn(2, fm.n_kv_heads, 5, fm.d_head, generator=g)
    p = functional.attention_pattern(fm, q, k)
    assert torch.allclose(p.sum(-1), torch.ones(2, fm.n_heads, 5))
    assert (p.triu(1) == 0).all()
