"""Dependencies point one way: pipelines → library. The ML/data library never imports Kedro or MLflow.

The import graph between src modules has no cycle; config (parameter schemas) imports nothing of
ours but util and markdown; ml takes plain arguments, and only ``ml/stage.py`` reads typed configs.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "defect_pipeline"
LIBRARY_PACKAGES = ["config", "data", "ml", "benchmarks"]
FRAMEWORKS = ("kedro", "kedro_mlflow", "kedro_datasets", "mlflow")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_library_packages_do_not_import_frameworks() -> None:
    offenders = {}
    for package in LIBRARY_PACKAGES:
        for path in (PACKAGE / package).rglob("*.py"):
            bad = sorted(n for n in _imports(path) if n.split(".")[0] in FRAMEWORKS)
            if bad:
                offenders[str(path.relative_to(PACKAGE))] = bad
    assert not offenders, f"library modules importing a framework: {offenders}"


def test_library_does_not_import_pipelines() -> None:
    for package in LIBRARY_PACKAGES:
        for path in (PACKAGE / package).rglob("*.py"):
            assert not any(n.startswith("defect_pipeline.pipelines") for n in _imports(path)), path


def test_tracking_uses_mlflow_but_not_kedro() -> None:
    """MLflow code (child runs, pyfunc model, comparison) stays usable outside a Kedro session."""
    for path in (PACKAGE / "tracking").rglob("*.py"):
        imports = _imports(path)
        assert not any(n.split(".")[0] in ("kedro", "kedro_mlflow", "kedro_datasets") for n in imports), path
        assert not any(n.startswith("defect_pipeline.pipelines") for n in imports), path


# --- import graph between src modules -------------------------------------------------------------

SRC = PACKAGE.parent
CONFIG_MAY_IMPORT = ("defect_pipeline.config", "defect_pipeline.util", "defect_pipeline.markdown")
ML_CONFIG_ASSEMBLY = {"defect_pipeline.ml.stage"}  # the one ml module that turns typed configs into arguments


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(SRC).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The src modules ``path`` imports (anywhere in the file): ``from a.b import c`` counts ``a.b``,
    and ``a.b.c`` when that is a module; a package counts as its ``__init__``; a module importing
    one of its own parent packages is not an edge (the parent is already being imported)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets.append(base)
            targets.extend(f"{base}.{alias.name}" for alias in node.names)
    edges = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name and not name.startswith(target + "."):
            edges.add(target)
    return edges


def _import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imported_modules(path, modules) for name, path in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle (``[a, b, ..., a]``) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for component in components:
        start = min(component)
        previous: dict[str, str] = {}
        frontier, seen = [start], {start}
        while frontier and start not in previous:  # breadth-first back to start, inside the component
            following = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w == start and start not in previous:
                        previous[start] = v
                    elif w not in seen:
                        seen.add(w)
                        previous[w] = v
                        following.append(w)
            frontier = following
        path, v = [start], previous[start]
        while v != start:
            path.append(v)
            v = previous[v]
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


def test_cycle_finder_names_the_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_src_modules() -> None:
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles between src modules:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _inside(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_config_imports_only_util_and_markdown() -> None:
    """Parameter schemas sit below data and ml: they import nothing of ours but util and markdown."""
    graph = _import_graph()
    offenders = {module: sorted(t for t in targets if not _inside(t, CONFIG_MAY_IMPORT))
                 for module, targets in graph.items() if _inside(module, ("defect_pipeline.config",))}
    offenders = {module: bad for module, bad in offenders.items() if bad}
    assert not offenders, f"config modules importing other layers: {offenders}"


def test_ml_core_does_not_import_config() -> None:
    """ml takes plain keyword arguments and dataclasses; only the stage assembly reads typed configs."""
    graph = _import_graph()
    offenders = {module: sorted(t for t in targets if _inside(t, ("defect_pipeline.config",)))
                 for module, targets in graph.items()
                 if _inside(module, ("defect_pipeline.ml",)) and module not in ML_CONFIG_ASSEMBLY}
    offenders = {module: bad for module, bad in offenders.items() if bad}
    assert not offenders, f"ml modules importing defect_pipeline.config (only ml/stage.py may): {offenders}"
