"""Class folders named like a real dataset's (``XX_Pit``, ``XX_Crack``, ``XX_Free``): the defect-free folder
is recognised by a word of its name, the shared prefix is not part of the class names, and a class whose
masks are all empty is named in the data report as looking defect-free, with the setting to change.

Against the old code the dataset test failed: every ``XX_Free`` image was quarantined as ``empty_mask``
("label 'XX_Free' is a defect class but its mask has no defect pixels") and the classes were
``XX_Crack, XX_Free, XX_Pit``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defect_pipeline.config import DataParams
from defect_pipeline.data.class_names import is_good_label, shared_class_prefix
from defect_pipeline.pipelines.data import nodes

DEFAULT_GOOD = DataParams().good_labels


@pytest.mark.parametrize("name", ["good", "XX_Free", "xx-free", "OK parts", "XY_No_Defect", "Defect_Free", "NORMAL"])
def test_a_good_label_as_a_word_of_the_name_is_defect_free(name: str) -> None:
    assert is_good_label(name, DEFAULT_GOOD)


@pytest.mark.parametrize("name", ["XX_Pit", "Freckle", "not_ok", "Non-Free", "okay", "Crack"])
def test_other_names_are_defect_classes(name: str) -> None:
    assert not is_good_label(name, DEFAULT_GOOD)


@pytest.mark.parametrize(("names", "prefix"), [
    (["XX_Pit", "XX_Crack", "XX_Free"], "XX_"),
    (["XX_Pit", "XX_Pinhole"], "XX_"),          # the shared "XX_Pi" is cut back to a word boundary
    (["Line 2 - Pit", "Line 2 - Dent"], "Line 2 - "),
    (["scratch", "spot", "good"], ""),
    (["Free", "Free_Edge"], ""),                # "Free" would become empty
    (["XX_Pit"], ""),                           # one folder: nothing to compare
])
def test_the_prefix_every_class_folder_shares(names: list[str], prefix: str) -> None:
    assert shared_class_prefix(names) == prefix


def _write_dataset(root: Path, folders: dict[str, str]) -> Path:
    """Class folders of 24x24 images; ``folders`` maps a folder to ``defect`` (a square in the mask),
    ``empty`` (an all-zero mask) or ``none`` (no masks)."""
    rng = np.random.default_rng(0)
    for folder, kind in folders.items():
        (root / folder).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / folder / f"img_{i}.jpg")
            if kind == "none":
                continue
            mask = np.zeros((24, 24), np.uint8)
            if kind == "defect":
                mask[4:14, 4:14] = 255
            Image.fromarray(mask).save(root / folder / f"img_{i}_mask.png")
    return root


def _run_data_nodes(params: DataParams) -> tuple:
    """The data pipeline's nodes in order (what `kedro run --pipeline=data` runs)."""
    source = nodes.resolve_raw_source(params)
    organized, scan = nodes.organize(source, params)
    checked = nodes.check(organized, source, scan, params)
    validated = nodes.validate_masks(checked, scan, params)
    manifest, split_summary = nodes.split(validated, params)
    report, markdown, quarantine = nodes.report(manifest, source, scan, split_summary, params)
    return manifest, report, markdown, quarantine


def _params(root: Path, **data) -> DataParams:
    return DataParams.model_validate({"raw_root": str(root), "check": {"num_workers": 0, "progress": False}, **data})


def test_prefixed_class_folders_need_no_good_labels_setting(tmp_path: Path) -> None:
    root = _write_dataset(tmp_path / "raw", {"XX_Pit": "defect", "XX_Crack": "defect", "XX_Free": "empty"})
    manifest, report, markdown, quarantine = _run_data_nodes(_params(root))
    assert quarantine.empty, quarantine["reason"].tolist()
    assert report["classes"] == ["Crack", "Pit"] and report["class_prefix"] == "XX_"
    assert report["good_folders"] == ["XX_Free"]
    assert manifest["label"].value_counts().to_dict() == {"Crack": 6, "Pit": 6, "good": 6}
    assert report["defect_free_looking_classes"] == []
    assert "`XX_`" in markdown and "XX_Free" in markdown


def test_a_defect_free_folder_without_masks_is_accepted_too(tmp_path: Path) -> None:
    root = _write_dataset(tmp_path / "raw", {"XX_Pit": "defect", "XX_Free": "none"})
    manifest, report, _, quarantine = _run_data_nodes(_params(root))
    assert quarantine.empty and sorted(manifest["label"].unique()) == ["Pit", "good"]


def test_a_class_whose_masks_are_all_empty_is_reported_as_looking_defect_free(tmp_path: Path) -> None:
    root = _write_dataset(tmp_path / "raw", {"XX_Pit": "defect", "XX_Blank": "empty", "XX_Bare": "none"})
    _, report, markdown, quarantine = _run_data_nodes(_params(root))
    assert set(quarantine["label"]) == {"Blank", "Bare"}  # quarantined as before, but now explained
    looking = {c["class"]: c for c in report["defect_free_looking_classes"]}
    assert set(looking) == {"Bare", "Blank"} and looking["Blank"]["empty_or_missing_masks"] == 6
    assert "data.good_labels" in looking["Blank"]["advice"] and "looks defect-free" in looking["Blank"]["advice"]
    assert markdown.count("**Looks defect-free**") == 2 and "data.good_labels" in markdown
    assert any("'Blank'" in w and "data.good_labels" in w for w in report["warnings"])
    # the advice works: naming the word as a good label accepts the folder
    _, fixed, _, quarantine = _run_data_nodes(_params(root, good_labels=[*DEFAULT_GOOD, "blank", "bare"]))
    assert quarantine.empty and fixed["defect_free_looking_classes"] == [] and fixed["classes"] == ["Pit"]


def test_the_prefix_is_kept_when_asked_or_when_data_classes_names_the_folders(tmp_path: Path) -> None:
    root = _write_dataset(tmp_path / "raw", {"XX_Pit": "defect", "XX_Crack": "defect", "XX_Free": "empty"})
    _, kept, _, _ = _run_data_nodes(_params(root, class_prefix=None))
    assert kept["classes"] == ["XX_Crack", "XX_Pit"] and kept["class_prefix"] == ""
    _, listed, _, quarantine = _run_data_nodes(_params(root, classes=["XX_Crack", "XX_Pit"]))
    assert listed["classes"] == ["XX_Crack", "XX_Pit"] and quarantine.empty
    _, explicit, _, _ = _run_data_nodes(_params(root, class_prefix="XX_C"))
    assert explicit["classes"] == ["XX_Pit", "rack"]
