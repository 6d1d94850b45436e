"""The package's shape: no import cycles, layers that follow the data flow, no
reaching into another module's private names, no overlong functions.

The import graph is read from the source (``ast``), function-level imports
included, so a cycle hidden in a late import counts as a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "invpbr"

#: Layers in data-flow order; a module may import from its own layer and the ones before it.
#: (``testing`` is tooling for tests and benchmarks: it may import anything, nothing imports it.)
LAYERS = [
    {"backend", "config"},
    {"capture"},
    {"estimates"},
    {"problem"},
    {"render"},
    {"results"},
    {"optimization", "reconstruct"},
    {"run", "notebook", "__init__", "__main__"},
]

#: Longest function body allowed without a stated reason.
MAX_FUNCTION_LINES = 120
#: A function longer than that says why in a comment starting with this, in its first lines.
LONG_REASON = "# long:"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for each invpbr import of ``module``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    known = modules()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("invpbr"):
                    out.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, path.name == "__init__.py", node)
            if not target.startswith("invpbr"):
                continue
            names = [a.name for a in node.names]
            # "from . import images": the submodule itself is imported
            subs = [n for n in names if f"{target}.{n}" in known]
            for n in subs:
                out.append((f"{target}.{n}", [], node.lineno))
            rest = [n for n in names if n not in subs]
            if rest or not subs:
                out.append((target, rest, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for m, path in known.items():
        for target, _, _ in imports_of(m, path):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != m:
                edges[m].add(target)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if state.get(n) is None:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if state.get(m) is None:
            found = visit(m)
            if found:
                return found
    return None


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    return None


def test_import_graph_has_no_cycle():
    # (a package's __init__ re-exports its modules; a module that imported its own
    # package's __init__ would close a cycle and is reported like any other)
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_layers_import_only_from_earlier_layers():
    wrong = []
    for m, path in modules().items():
        if m.startswith("invpbr.testing"):
            continue
        mine = layer_of(m)
        assert mine is not None, f"{m}: in no layer of LAYERS; add its folder there"
        for target, _, line in imports_of(m, path):
            if target.startswith("invpbr.testing"):
                wrong.append(f"{path.name}:{line}: {m} imports {target} (tooling, never the library)")
                continue
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                wrong.append(f"{path}:{line}: {m} (layer {mine}) imports {target} (layer {theirs})")
    assert not wrong, "\n".join(wrong)


def test_no_module_takes_another_modules_private_names():
    wrong = []
    for m, path in modules().items():
        for target, names, line in imports_of(m, path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != m:
                wrong.append(f"{path}:{line}: {m} takes {', '.join(private)} from {target}")
    assert not wrong, "\n".join(wrong)


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            head = "\n".join(lines[node.lineno - 1: node.lineno + 30])
            if length > limit and LONG_REASON not in head:
                found.append(f"{path}:{node.lineno}: {node.name} has {length} lines")
    return found


def test_no_function_is_longer_than_the_limit_without_saying_why():
    found = [f for p in sorted(PACKAGE.rglob("*.py")) for f in long_functions(p)]
    assert not found, "\n".join(found)


def test_the_length_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 5))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n")
    assert long_functions(tmp_path / "m.py") == [f"{tmp_path / 'm.py'}:1: f has {MAX_FUNCTION_LINES + 6} lines"]
    (tmp_path / "m.py").write_text(f"def f():\n    {LONG_REASON} a table\n{body}\n")
    assert long_functions(tmp_path / "m.py") == []


@pytest.mark.parametrize("name", ["procedural", "discontinuities"])
def test_tooling_is_off_the_library_import_path(name):
    for m, path in modules().items():
        if m.startswith("invpbr.testing"):
            continue
        assert all(not t.startswith(f"invpbr.testing") for t, _, _ in imports_of(m, path)), m
