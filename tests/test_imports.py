"""luban's modules import each other without cycles, counting every import: module-level and function-local.

A cycle hidden in a function-local import still ties two modules into one unit (neither can be understood, tested
or moved without the other) and breaks the day the import moves to the top. The graph is built with ast over every
module of src/luban: `import luban.x.y` is an edge to luban.x.y; `from luban.x import y` (or its relative form) is
an edge to luban.x, and to luban.x.y when that is a module. Imports under `if TYPE_CHECKING:` count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import luban

ROOT = Path(luban.__file__).parent


def module_names() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("luban",) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            edges |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target in modules:
                edges.add(target)
            edges |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules}
    edges.discard(name)
    return edges


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search, modules in sorted order)."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    for start in sorted(graph):
        if color[start] != WHITE:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        color[start] = GREY
        path = [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                color[node] = BLACK
                stack.pop()
                path.pop()
            elif color[child] == GREY:
                return path[path.index(child):] + [child]
            elif color[child] == WHITE:
                color[child] = GREY
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_the_graph_sees_function_local_and_relative_imports(tmp_path):
    modules = {"luban.a": tmp_path / "a.py", "luban.b": tmp_path / "b.py", "luban.pkg": tmp_path / "pkg/__init__.py",
               "luban.pkg.c": tmp_path / "pkg/c.py"}
    (tmp_path / "a.py").write_text("def f():\n    from luban.pkg import c\n    import luban.b\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/c.py").write_text("from . import c\nfrom ..a import f\n")
    assert imports_of("luban.a", modules["luban.a"], modules) == {"luban.pkg", "luban.pkg.c", "luban.b"}
    assert imports_of("luban.pkg.c", modules["luban.pkg.c"], modules) == {"luban.pkg", "luban.a"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50 and "luban.predictor" in graph["luban.cli"] | set().union(*graph.values())
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
