"""The package's import graph, read from the code: imports point downward, so no module imports itself back
through others (module-level and function-level imports alike; a package ``__init__`` re-exporting its own
modules does not count)."""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mechpatch"

#: cycles still to break. Empty since #14 (result classes no longer draw their own figures or convert to other
#: formats through modules that import them back: figures are shown through mechpatch.display's registry, filled
#: by the plotting modules). The test fails when a new cycle appears, and when one listed here is gone.
KNOWN: set[tuple[str, ...]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m in modules and m != name}


def import_cycles() -> set[tuple[str, ...]]:
    """Each cycle of the import graph (package ``__init__`` files left out), as the sorted tuple of its modules."""
    modules = _modules()
    packages = {n for n, p in modules.items() if p.name == "__init__.py"}
    graph = {n: _imports(n, p, modules) - packages for n, p in modules.items() if n not in packages}
    cycles, state = set(), {}

    def visit(u: str, stack: list[str]) -> None:
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == "open":
                cycles.add(tuple(sorted(stack[stack.index(v):])))
            elif v not in state:
                visit(v, stack)
        stack.pop()
        state[u] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    return cycles


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "mechpatch"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from mechpatch.a import x\n")
    (pkg / "a.py").write_text("def f():\n    from mechpatch import b\n")
    (pkg / "b.py").write_text("from .a import f\n")
    (pkg / "c.py").write_text("import mechpatch.a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert import_cycles() == {("mechpatch.a", "mechpatch.b")}


def test_no_import_cycles_but_the_known_ones():
    cycles = import_cycles()
    assert cycles - KNOWN == set(), f"new import cycles: {sorted(cycles - KNOWN)}"
    assert KNOWN - cycles == set(), f"cycles broken (take them off KNOWN): {sorted(KNOWN - cycles)}"


def test_algorithms_do_not_import_the_run_store():
    """The run commands (runs/, cli) sit on top: no algorithm package imports them."""
    modules = _modules()
    for name, path in modules.items():
        if name.startswith(("mechpatch.patching", "mechpatch.circuit", "mechpatch.attribution",
                            "mechpatch.interactions", "mechpatch.sites", "mechpatch.model", "mechpatch.cache")):
            upward = {m for m in _imports(name, path, modules) if m.startswith(("mechpatch.runs", "mechpatch.cli"))}
            assert not upward, f"{name} imports {sorted(upward)}"
