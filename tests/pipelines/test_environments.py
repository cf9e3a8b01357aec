"""Each environment writes below its own data root (``data_root`` in ``conf/<env>/globals.yml``), so running
one environment never overwrites another's manifest, models or reports.

Against the old configuration the NEU-Seg manifest was overwritten by the demo run (both wrote
``data/03_primary/manifest.parquet``): the first test failed on the hash comparison.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from kedro.config import OmegaConfigLoader
from omegaconf.resolvers import oc
from PIL import Image

from tests.conftest import REPO_ROOT, TINY, run_kedro

ENVIRONMENT_ROOTS = {"local": "data", "neu_seg": "data/neu_seg", "gpu": "data/gpu"}


def tiny_mmseg(root: Path) -> Path:
    """A NEU-Seg-shaped dataset (img_dir/ann_dir, class-index masks 1..3), 4 images per split."""
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        (root / "img_dir" / split).mkdir(parents=True)
        (root / "ann_dir" / split).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / "img_dir" / split / f"{i}.jpg")
            mask = np.zeros((32, 32), np.uint8)
            mask[4:16, 4:16] = 1 + i % 3
            Image.fromarray(mask).save(root / "ann_dir" / split / f"{i}.png")
    return root


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_neu_seg_run_and_a_demo_run_keep_both_manifests(kedro_project: Path, tmp_path: Path) -> None:
    neu = {"data": {"raw_root": str(tiny_mmseg(tmp_path / "neu")), "check": {"num_workers": 0}}}
    run_kedro(kedro_project, "data", env="neu_seg", params=neu)
    neu_manifest = kedro_project / "data/neu_seg/03_primary/manifest.parquet"
    before = _sha(neu_manifest)
    run_kedro(kedro_project, "data", params=TINY)
    demo_manifest = kedro_project / "data/03_primary/manifest.parquet"
    assert neu_manifest.is_file() and demo_manifest.is_file()
    assert _sha(neu_manifest) == before and _sha(demo_manifest) != before
    assert (kedro_project / "data/neu_seg/08_reporting/data_report.json").is_file()
    assert (kedro_project / "data/01_raw/demo").is_dir() and not (kedro_project / "data/neu_seg/01_raw/demo").exists()


@pytest.mark.parametrize("env", sorted(ENVIRONMENT_ROOTS))
def test_every_catalog_path_of_an_environment_lies_below_its_data_root(env: str) -> None:
    loader = OmegaConfigLoader(str(REPO_ROOT / "conf"), base_env="base", default_run_env="local", env=env,
                               custom_resolvers={"oc.env": oc.env}, merge_strategy={"parameters": "soft"})
    root = ENVIRONMENT_ROOTS[env]
    paths = []
    for name, entry in loader["catalog"].items():
        while isinstance(entry, dict):
            location = entry.get("filepath") or entry.get("path") or entry.get("data")
            if isinstance(location, str):
                paths.append((name, location))
                break
            entry = entry.get("dataset")
    assert len(paths) > 40
    others = [(n, p) for n, p in paths if not p.startswith(f"{root}/") and p != "null" and "runtime_params" not in p]
    assert others == [], f"{env}: catalog entries outside {root}/"
    if env != "local":
        assert all(not p.startswith("data/0") for _, p in paths)
    parameters = loader["parameters"]
    assert parameters["inspect"]["path"] == f"{root}/06_models"  # must equal the catalog's checkpoint_folder
    assert parameters["data"]["demo"]["output_dir"] == f"{root}/01_raw/demo"
