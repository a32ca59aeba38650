"""The package's layers only look down, and no two modules import each other (directly or in a ring).

Every ``import`` / ``from … import`` in ``workbench/`` is parsed, including those inside functions. Imports under
``if TYPE_CHECKING:`` are type-only: they may not go up either, but they do not count as edges of a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "workbench"
#: lowest first; a module may import its own layer and the layers before it
LAYERS = ("core", "tasks", "atv", "methods", "eval", "analysis", "ui", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> list[tuple[str, bool, int]]:
    """(imported workbench module, type_only, line) for every import in `path`."""
    me = module_name(path)
    return imports_in(path.read_text(), me if path.name == "__init__.py" else me.rpartition(".")[0])


def is_module(name: str) -> bool:
    base = PACKAGE.parent / name.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def imports_in(source: str, package: str) -> list[tuple[str, bool, int]]:
    """Imports of workbench modules in `source`, a module of `package` (for relative imports)."""
    tree = ast.parse(source)
    type_only_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and is_type_checking(node):
            for inner in node.body:
                type_only_lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [base]
            # `from workbench.x import y` where y is a submodule
            names += [f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}")]
        for name in names:
            if name == "workbench" or name.startswith("workbench."):
                found.append((name, node.lineno in type_only_lines, node.lineno))
    return found


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_is_in_a_layer():
    loose = [m for m in MODULES if layer_of(m) is None and m not in ("workbench", "workbench.__main__")]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_import(module):
    mine = layer_of(module)
    if mine is None:  # the facade `workbench/__init__.py` and `__main__` sit above every layer
        return
    bad = []
    for target, _, line in imports_of(MODULES[module]):
        theirs = layer_of(target)
        facade = target == "workbench" and LAYERS[mine] != "cli"  # `import workbench as wb` is for cli and users
        if facade or (theirs is not None and theirs > mine):
            bad.append(f"line {line}: {target}")
    assert not bad, f"{module} ({LAYERS[mine]}) imports a higher layer: {bad}"


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, type_only, _ in imports_of(path):
            # importing `workbench.x.y` runs `workbench` and `workbench.x` first: their own imports of `workbench.x.y`
            # are not a cycle, so an edge to a parent package is left out
            if not type_only and target in MODULES and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):  # a package importing its own submodules is not a cycle
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_checker_sees_hidden_and_type_only_imports():
    """The parser finds an import inside a function body and tells type-only imports apart."""
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from workbench.eval.runs import x\n"
              "def f():\n    from ..ui import plots\n    import workbench.cli\n")
    found = {(name, type_only) for name, type_only, _ in imports_in(source, "workbench.core")}
    assert ("workbench.eval.runs", True) in found
    assert ("workbench.ui.plots", False) in found and ("workbench.cli", False) in found
    assert layer_of("workbench.ui.plots") > layer_of("workbench.core.models")
