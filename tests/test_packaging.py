"""Packaging truths: what the code imports is declared, the floors are what the code needs, licences are pinned.

Read from pyproject.toml and the source itself (no install): the old pyproject failed the first test
(cv2 imported, opencv-python-headless arriving only through albumentations), the floors test (python 3.10,
torch 2.4) and the ONNX extra test.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO_ROOT

PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
ONNX_PACKAGES = {"onnx", "onnxscript", "onnxruntime"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(group: str | None = None) -> dict[str, Requirement]:
    lines = PROJECT["dependencies"] if group is None else PROJECT["optional-dependencies"][group]
    return {_normalise(r.name): r for r in map(Requirement, lines)}


def _imported_top_level_modules() -> set[str]:
    found: set[str] = set()
    for path in (REPO_ROOT / "src" / "defect_pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in {"defect_pipeline", "__future__"}}


def test_every_imported_distribution_is_declared() -> None:
    """cv2 is imported by the library, so opencv-python-headless must be a declared dependency."""
    declared = set(_requirements()) | {name for group in PROJECT["optional-dependencies"] for name in _requirements(group)}
    distributions = packages_distributions()
    missing = {}
    for module in sorted(_imported_top_level_modules()):
        names = {_normalise(d) for d in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"
    assert "opencv-python-headless" in _requirements()


def test_python_and_torch_floors_are_what_the_code_needs() -> None:
    assert PROJECT["requires-python"] == ">=3.11"  # constraints.txt pins packages that need 3.11
    torch = _requirements()["torch"]
    assert not torch.specifier.contains("2.5.1") and torch.specifier.contains("2.6.0")  # export(dynamo=True)


def test_albumentations_stays_on_its_last_mit_release_line() -> None:
    """Releases after 2.0.8 continue as AlbumentationsX under AGPL-3.0 / commercial terms."""
    spec = _requirements()["albumentations"].specifier
    assert spec.contains("2.0.8") and not spec.contains("2.0.9") and not spec.contains("2.1.0")
    pinned = re.search(r"^albumentations==(\S+)$", (REPO_ROOT / "constraints.txt").read_text(), re.M)
    assert pinned and spec.contains(pinned.group(1))


def test_onnx_packages_are_an_extra_that_dev_installs() -> None:
    assert not ONNX_PACKAGES & set(_requirements())
    assert set(_requirements("onnx")) == ONNX_PACKAGES
    dev = [Requirement(line) for line in PROJECT["optional-dependencies"]["dev"]]
    assert any(r.name == "defect_pipeline" and r.extras == {"onnx"} for r in dev)  # README's ".[dev]" keeps export


@pytest.mark.parametrize("missing", sorted(ONNX_PACKAGES))
def test_export_without_the_onnx_extra_names_the_install_command(missing: str, monkeypatch) -> None:
    from defect_pipeline.ml.export import export_onnx

    monkeypatch.setitem(sys.modules, missing, None)  # import of it raises ImportError
    with pytest.raises(ImportError, match=rf"'{missing}'.*\.\[onnx\]"):
        export_onnx(object())  # refused before the package is touched
