"""No import circles in the package: the modules of minipsn/ import each other in one direction.

Read with `ast` from the sources, not by importing them. Counted: every import that runs when a module is
imported (its top level, class bodies, if/try blocks). Not counted: imports inside functions, which run after
every module has loaded (lazy imports of heavy or optional parts, and config.py's `__getattr__`, which fetches
the builders from overrides.py for `from minipsn.config import build_config`).
"""
import ast

from tests.conftest import REPO

PACKAGE = REPO / "minipsn"


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_time_nodes(tree: ast.Module):
    """The import statements a module runs when it is imported: not those inside a function."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def imports(path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports at import time (`from pkg import sub`: the submodule)."""
    here, out = module_name(path), set()
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in import_time_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
            continue
        base = node.module or ""
        if node.level:  # relative: from . import x, from .m import x
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in modules:
                out.add(sub)
            elif base in modules:
                out.add(base)
    out.discard(here)
    return out


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports(p, modules) for p in paths}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `edges` as [a, b, …, a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start, [])
            if found:
                return found
    return None


def test_the_finder_sees_a_cycle_and_a_relative_import(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) in (["a", "b", "c", "a"], ["b", "c", "a", "b"],
                                                                ["c", "a", "b", "c"])
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    edges = graph()
    assert {"minipsn.config", "minipsn.presets"} <= edges["minipsn.overrides"]
    assert "minipsn.verify.extract" in edges["minipsn.verify"] and "minipsn.evaluate" not in edges["minipsn.train"]


def test_the_package_has_no_import_circle():
    cycle = find_cycle(graph())
    assert cycle is None, " → ".join(cycle)
