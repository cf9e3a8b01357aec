"""Parameters of the ``data`` pipeline (``conf/base/parameters_data.yml``, block ``data``).

One frozen model per concern: where the raw data is and how it is laid out, the built-in
demo generator, the file checks, the mask rules and the split. Defaults describe the built-in
synthetic demo data, so a fresh clone runs without any configuration.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from defect_pipeline.config.base import StrictModel

Layout = Literal["auto", "class_folders", "images_masks", "mmseg"]
MaskType = Literal["auto", "binary", "class_index"]


class DemoParams(StrictModel):
    """The synthetic demo dataset used when ``data.raw_root`` is null."""

    output_dir: str = "data/01_raw/demo"
    seed: int = 42
    images_per_class: int = Field(100, ge=2)
    good_images: int = Field(100, ge=0)
    image_size: int = Field(64, ge=32, le=1024)


class CheckParams(StrictModel):
    """File-level checks: decoding, sizes, duplicates, parallelism."""

    num_workers: int | None = Field(None, ge=0, description="null = one per CPU core; 0 = in-process")
    chunksize: int = Field(16, ge=1)
    min_image_size: int = Field(8, ge=1, description="smaller width or height is quarantined")
    exact_duplicates: Literal["quarantine", "keep"] = "quarantine"
    near_duplicate_max_distance: int = Field(
        2, ge=-1, le=16, description="perceptual-hash Hamming distance; -1 disables"
    )
    progress: bool = True


class MaskParams(StrictModel):
    """Mask rules: binarization of lossy masks, class indices, label consistency."""

    binarize_threshold: int = Field(127, ge=0, le=254)
    min_defect_pixels: int = Field(16, ge=0, description="smaller non-empty masks are flagged tiny")
    inconsistent_label: Literal["quarantine", "keep"] = "quarantine"


class SplitParams(StrictModel):
    """Train/val/test assignment."""

    strategy: Literal["auto", "keep_existing", "stratified"] = "auto"
    seed: int = 42
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "val_fraction + test_fraction must be < 1 so that training data remains "
                f"(got {self.val_fraction} + {self.test_fraction})"
            )
        return self


class DataParams(StrictModel):
    """Block ``data``: the raw folder, its layout, and the rules of every data node."""

    raw_root: str | None = Field(
        None, description="folder with your images and masks; null = the built-in synthetic demo"
    )
    layout: Layout = "auto"
    classes: list[str] | None = Field(
        None, description="defect class names; class-index masks use index i+1 for classes[i]"
    )
    mask_type: MaskType = "auto"
    good_labels: list[str] = Field(
        ["good", "ok", "free", "normal", "no_defect", "defect_free"],
        description="a class folder (or CSV label) holds defect-free images when one of these appears in its "
                    "name as whole words, split on _ - and spaces, case-insensitive (XY_Free, OK-parts)")
    good_label: str = "good"
    class_prefix: str | None = Field(
        "auto", description="class folders: auto strips the prefix every class folder shares (XY_Pit, XY_Free "
                            "→ Pit, good); null keeps the folder names; a string strips that prefix")
    mask_suffixes: list[str] = ["_mask", "_label", "_gt", ""]
    labels_csv: str | None = Field(
        None, description="images_masks layout: CSV with columns image,label (relative to raw_root)"
    )
    image_extensions: list[str] = [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"]
    demo: DemoParams = DemoParams()
    check: CheckParams = CheckParams()
    masks: MaskParams = MaskParams()
    split: SplitParams = SplitParams()

    @field_validator("image_extensions")
    @classmethod
    def _extensions_are_dotted_lowercase(cls, value: list[str]) -> list[str]:
        bad = [e for e in value if not e.startswith(".") or e != e.lower()]
        if bad:
            raise ValueError(f"extensions must be lower-case and start with '.', got {bad}")
        return value

    @field_validator("classes")
    @classmethod
    def _classes_unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if len(set(value)) != len(value) or not value:
                raise ValueError(f"class names must be non-empty and unique, got {value}")
        return value

    @model_validator(mode="after")
    def _good_label_not_a_class(self) -> DataParams:
        if self.classes and self.good_label in self.classes:
            raise ValueError(f"good_label {self.good_label!r} must not also be a defect class")
        return self
