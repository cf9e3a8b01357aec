"""Same configuration and seed → the same manifest and, on CPU, the same metrics; another seed → another split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from defect_pipeline.data.manifest import manifest_hash
from tests.conftest import TINY, make_project, run_kedro

pytestmark = pytest.mark.slow


def _run(root: Path, monkeypatch: pytest.MonkeyPatch, params: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    project = make_project(root, monkeypatch)
    run_kedro(project, "data", params=params)
    run_kedro(project, "stage1", params=params)
    return (pd.read_parquet(project / "data/03_primary/manifest.parquet"),
            pd.read_csv(project / "data/08_reporting/stage1/history.csv"))


def test_same_seed_same_manifest_and_metrics_other_seed_other_split(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    manifest_a, history_a = _run(tmp_path / "a", monkeypatch, TINY)
    manifest_b, history_b = _run(tmp_path / "b", monkeypatch, TINY)
    assert manifest_hash(manifest_a) == manifest_hash(manifest_b)
    timing = [c for c in history_a.columns if c.endswith(("_per_s", "_seconds")) or c.startswith("peak_")]
    pd.testing.assert_frame_equal(history_a.drop(columns=timing), history_b.drop(columns=timing))

    other = {**TINY, "data": {**TINY["data"], "split": {"seed": 7}}}
    project = make_project(tmp_path / "c", monkeypatch)
    run_kedro(project, "data", params=other)
    manifest_c = pd.read_parquet(project / "data/03_primary/manifest.parquet")
    assert list(manifest_c["split"]) != list(manifest_a["split"])
    assert manifest_c["split"].value_counts().to_dict() == manifest_a["split"].value_counts().to_dict()
