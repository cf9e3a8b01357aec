"""kedro-viz shows the pipelines: a static build lists the data pipeline's nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_kedro_viz_build_shows_the_data_pipeline(kedro_project: Path) -> None:
    pytest.importorskip("kedro_viz")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    result = subprocess.run([sys.executable, "-m", "kedro", "viz", "build"], cwd=kedro_project, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    graph = json.loads((kedro_project / "build/api/pipelines/data").read_text())
    tasks = {n["name"] for n in graph["nodes"] if n["type"] == "task"}
    assert tasks == {"resolve_raw_source", "organize", "check", "validate_masks", "split", "report"}
