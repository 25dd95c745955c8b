"""The import contract of the package, read from the source (AST), function-level imports included.

- no import cycle among cxr modules;
- `cxr.report` and the run-folder contract `cxr.rundir` never import torch, directly or through
  another cxr module;
- `cxr.models` never imports `cxr.data` or `cxr.config` (config -> models, one way); nothing imports `cxr.cli`;
- every module is at most 400 lines and every function at most 80 lines (small, readable files).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "cxr"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
TORCH_FREE = ("cxr.report", "cxr.rundir", "cxr.rank", "cxr.config", "cxr.errors", "cxr.progress", "cxr.hashing",
              "cxr.threads")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _resolve(name: str, importer: str, level: int, is_package: bool) -> str:
    if level == 0:
        return name
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every module `module` imports anywhere in its file (top level, functions, TYPE_CHECKING)."""
    path = modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", module, node.level, is_package)
            found.add(base)
            for alias in node.names:  # `from cxr.study import phases` imports the submodule
                candidate = f"{base}.{alias.name}"
                if candidate in modules():
                    found.add(candidate)
    return frozenset(found)


def cxr_imports(module: str) -> set[str]:
    """The cxr modules `module` imports (a package import counts as its __init__)."""
    return {name for name in imports_of(module) if name in modules() and name != module}


def reachable(module: str) -> set[str]:
    seen: set[str] = set()
    stack = [module]
    while stack:
        for dep in cxr_imports(stack.pop()):
            if dep not in seen:
                seen.add(dep)
                stack.append(dep)
    return seen


def import_graph() -> dict[str, set[str]]:
    return {module: cxr_imports(module) for module in modules()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph, or None (iterative DFS with colours)."""
    colour = dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done
    for root in graph:
        if colour[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return [*path[path.index(child):], child]
            elif colour[child] == 0:
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_the_graph_is_read_from_every_module():
    names = modules()
    assert {"cxr", "cxr.rundir", "cxr.study.run", "cxr.report.document", "cxr.cli"} <= set(names)
    assert "cxr.training.loop" in cxr_imports("cxr.study.phases")  # a top-level import is seen
    assert "cxr.study.phases" in cxr_imports("cxr.study.summary")


def test_no_import_cycles_among_cxr_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_dag():
    cycle = find_cycle({"d": {"a"}, "a": {"b"}, "b": {"c"}, "c": {"a"}})
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("root", TORCH_FREE)
def test_torch_free_modules_never_reach_torch(root):
    members = [m for m in modules() if m == root or m.startswith(root + ".")]
    assert members
    for module in members:
        for dep in {module} | reachable(module):
            torchy = sorted(n for n in imports_of(dep) if n == "torch" or n.startswith("torch."))
            assert not torchy, f"{module} reaches torch through {dep} ({torchy})"


def test_models_never_import_config():
    """cxr.config imports the model catalog (and cxr.models.spec); the models never import the config back."""
    assert "cxr.models.catalog" in cxr_imports("cxr.config")
    for module in (m for m in modules() if m.startswith("cxr.models")):
        assert "cxr.config" not in cxr_imports(module), f"{module} imports cxr.config (use cxr.models.spec)"


def test_models_never_import_data():
    for module in (m for m in modules() if m.startswith("cxr.models")):
        bad = sorted(n for n in imports_of(module) if n == "cxr.data" or n.startswith("cxr.data."))
        assert not bad, f"{module} imports {bad}"


def test_nothing_imports_the_cli():
    for module in (m for m in modules() if not m.startswith("cxr.cli") and m != "cxr.__main__"):
        bad = sorted(n for n in imports_of(module) if n == "cxr.cli" or n.startswith("cxr.cli."))
        assert not bad, f"{module} imports {bad}"


def test_modules_and_functions_stay_small():
    long_modules, long_functions = [], []
    for module, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{module} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{module}.{node.name} ({length} lines)")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"
