"""The package's shape: module-level imports between edgerep's modules form no cycle.

Imports inside functions (lazy, for optional dependencies and start-up time) are left out: they run after every
module is initialised. A package ``__init__`` that imports its own submodules is fine; a submodule that imports
something that imports it back is what this test refuses.
"""

from __future__ import annotations

import ast
from pathlib import Path

import edgerep

ROOT = Path(edgerep.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.parse(path.read_text()).body:  # top level only: no function bodies
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for alias in node.names:  # `from . import x` may name a module
                    targets.append(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def test_no_import_cycles() -> None:
    graph = _graph()
    assert len(graph) > 50, "the walk found edgerep's modules"
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_scripts_import_names_that_exist() -> None:
    """bench/ and examples/ scripts are run by hand, not by the suite: a moved or renamed edgerep name must fail here.

    Every ``from edgerep... import name`` in them, function bodies included, must resolve to an attribute or a
    submodule.
    """
    import importlib.util

    repo = Path(__file__).resolve().parents[1]  # the checkout: edgerep itself may be installed elsewhere
    scripts = sorted([*(repo / "bench").glob("*.py"), *(repo / "examples").glob("*.py")])
    assert scripts, "the walk found the scripts"
    missing = []
    for script in scripts:
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("edgerep"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    found = hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}")
                    if not found:
                        missing.append(f"{script.name}:{node.lineno}: {node.module}.{alias.name}")
    assert not missing, missing
