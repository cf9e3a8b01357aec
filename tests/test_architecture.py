"""Dependencies point one way: pipelines → library. The ML/data library never imports Kedro or MLflow."""

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
