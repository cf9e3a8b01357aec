"""Runs the data pipeline, then executes notebooks/data_overview.ipynb end to end.

Like the other pipeline tests this never writes into the repository: the ``kedro_project``
fixture (tests/conftest.py) is a throw-away copy of the project (conf + pyproject) with its own
sqlite MLflow database. The data pipeline runs there (base + local: the synthetic demo data),
and the notebook's kernel starts in that copy's ``notebooks/`` folder, so the notebook finds
the copy as its project root and reads its outputs. The notebook file itself is read from the
repository, not copied.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_kedro

nbformat = pytest.importorskip("nbformat", reason="needs the dev extras (pip install -e '.[dev]')")
nbclient = pytest.importorskip("nbclient", reason="needs the dev extras (pip install -e '.[dev]')")
pytest.importorskip("ipykernel", reason="needs the dev extras (pip install -e '.[dev]')")

NOTEBOOK = REPO_ROOT / "notebooks" / "data_overview.ipynb"


def _kernel_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel that runs this interpreter (and so sees the installed project).

    The ``python3`` spec is used when it starts ``python`` (jupyter_client swaps that for the
    running interpreter, as ipykernel's own spec does) or this very executable. Otherwise, e.g.
    a user-level ``python3`` spec pointing at another Python, a private spec is written under
    ``tmp_path`` and put first on ``JUPYTER_PATH`` for this test only; nothing is installed.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
    except NoSuchKernel:
        argv0 = None
    if argv0 in ("python", "python3") or (argv0 and Path(argv0).resolve() == Path(sys.executable).resolve()):
        return "python3"
    name = "defect-pipeline-test"
    spec_dir = tmp_path / "jupyter" / "kernels" / name
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "defect_pipeline test", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return name


def _outputs(notebook) -> list[dict]:
    return [output for cell in notebook.cells for output in cell.get("outputs", [])]


@pytest.mark.slow
def test_data_overview_notebook_runs(kedro_project: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run_kedro(kedro_project, "data")
    accounting = json.loads((kedro_project / "data/08_reporting/data_report.json").read_text())["accounting"]

    notebook_dir = kedro_project / "notebooks"
    notebook_dir.mkdir(exist_ok=True)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name=_kernel_name(tmp_path, monkeypatch),
        timeout=300,
        resources={"metadata": {"path": str(notebook_dir)}},  # the kernel's working directory
    )
    client.execute()  # raises CellExecutionError, with the cell's traceback, if any cell fails

    outputs = _outputs(notebook)
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors
    text = "\n".join(o.get("text", "") if o.get("output_type") == "stream" else o.get("data", {}).get("text/plain", "")
                     for o in outputs)
    assert f"Project root: {kedro_project.resolve()}" in text
    assert "accepted" in text
    assert (f"{accounting['samples']} samples = {accounting['accepted']} accepted + "
            f"{accounting['quarantined']} quarantined") in text
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 2, "expected the class-count chart and the example grid"
