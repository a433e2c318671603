"""No import circles in the package, at any level: the modules of minipsn/ import each other in one direction, and
so do its packages, in the order of FLOORS (the README's Layout).

Read with `ast` from the sources, not by importing them. Counted: every `import` and `from … import` anywhere in a
module, at its top level and inside functions and methods alike (an import inside a function is a dependency all
the same; one placed there to dodge a circle would hide the circle, not remove it). Lazy imports of heavy or optional
third-party packages (matplotlib, trl, math_verify, …) are not edges here: only the kit's own modules are.
"""
import ast
import tomllib

from tests.conftest import REPO

PACKAGE = REPO / "minipsn"
# bottom to top: a module may import modules of its own package and of the packages before it, never after
FLOORS = ("verify", "run", "tasks", "method", "sampling", "rewards", "evaluation", "training", "experiments", "bench")


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_nodes(tree: ast.Module):
    """Every import statement of a module: top level, class bodies, if/try blocks, functions and methods."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def imports(path, modules: set[str], here: str | None = None) -> set[str]:
    """The package's modules that `path` (module `here`) imports anywhere (`from pkg import sub`: the submodule)."""
    here, out = here or module_name(path), set()
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in import_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:  # import a.b.c: the deepest of a.b.c, a.b that is a module of ours
                name = alias.name
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                out |= {name} if name else set()
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


def package_of(module: str) -> str | None:
    """minipsn.sampling.engine → sampling; minipsn (the entry points' module) → None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a, targets in edges.items():
        for b in targets:
            pa, pb = package_of(a), package_of(b)
            if pa and pb and pa != pb:
                out.setdefault(pa, set()).add(pb)
    return out


def test_the_finder_sees_a_cycle_and_the_imports_inside_functions():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) in (["a", "b", "c", "a"], ["b", "c", "a", "b"],
                                                                ["c", "a", "b", "c"])
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    edges = graph()
    assert {"minipsn.run.config", "minipsn.run.presets"} <= edges["minipsn.run.overrides"]
    assert "minipsn.verify.extract" in edges["minipsn.verify"]
    assert "minipsn.evaluation.evaluate" in edges["minipsn.training.train"]  # inside Trainer.evaluate: counted
    assert "minipsn.verify.judge" in edges["minipsn.verify.worker"]  # inside a function too
    assert package_edges({"minipsn.a.x": {"minipsn.b.y", "minipsn.a.z"}}) == {"a": {"b"}}


def test_the_finder_reads_imports_in_methods_and_relative_ones(tmp_path):
    (tmp_path / "m.py").write_text("import os\n\nclass A:\n    def f(self):\n        from minipsn.run import config\n"
                                   "        import minipsn.tasks.data\n        from . import n\n")
    modules = {"minipsn.run.config", "minipsn.tasks", "minipsn.tasks.data", "minipsn.x.n"}
    assert imports(tmp_path / "m.py", modules, "minipsn.x.m") == {"minipsn.run.config", "minipsn.tasks.data",
                                                                  "minipsn.x.n"}


def test_the_package_has_no_import_circle():
    cycle = find_cycle(graph())
    assert cycle is None, " → ".join(cycle)


def test_every_module_sits_in_a_package_of_the_order():
    loose = [m for m in graph() if m != "minipsn" and package_of(m) not in FLOORS]
    assert not loose, f"modules outside the packages of FLOORS: {loose}"
    assert set(FLOORS) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    shipped = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert sorted(shipped) == sorted(["minipsn"] + [f"minipsn.{p}" for p in FLOORS])  # what `pip install .` ships


def test_packages_import_downward_only():
    """A module imports its own package's modules and those of the packages below it, never one above: so no two
    packages import each other either."""
    up = [f"{a} → {b}" for a, targets in sorted(graph().items()) for b in sorted(targets)
          if package_of(a) and package_of(b) and FLOORS.index(package_of(b)) > FLOORS.index(package_of(a))]
    assert not up, "imports of a package above: " + "; ".join(up)
    assert find_cycle(package_edges(graph())) is None


def test_the_entry_points_module_is_imported_by_none_and_names_what_exists():
    """`from minipsn import train` loads its module when asked (minipsn/__init__.py, PUBLIC): no module of the kit
    imports `minipsn` itself, so those lazy loads can close no circle; each name is defined where PUBLIC says."""
    edges = graph()
    assert not [m for m, targets in edges.items() if "minipsn" in targets]
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    assert [a.name for n in import_nodes(tree) for a in n.names] == ["importlib"]
    public = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], "id", None) == "PUBLIC")
    for name, module in public.items():
        path = PACKAGE.joinpath(*module.split(".")[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        defined = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert name in defined, f"{module} defines no {name}"
