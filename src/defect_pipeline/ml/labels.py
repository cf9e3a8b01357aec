"""The label space shared by data, model, losses and metrics.

Image-level classes are ``[good_label] + defect_classes`` when the data has defect-free images,
else just ``defect_classes``. Segmentation classes are background (index 0) followed by the
defect classes (index ``1 + i``), so binary masks of a class-per-folder dataset become
class-index masks through the image's label, and class-index masks (mmseg) are used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabelSpace:
    """Names and indices of the image classes and segmentation classes."""

    defect_classes: tuple[str, ...]
    good_label: str = "good"
    has_good: bool = True

    @property
    def image_classes(self) -> tuple[str, ...]:
        """Names of the classification outputs, in index order."""
        return ((self.good_label,) if self.has_good else ()) + self.defect_classes

    @property
    def seg_classes(self) -> tuple[str, ...]:
        """Names of the segmentation outputs: ``background`` then the defect classes."""
        return ("background",) + self.defect_classes

    @property
    def num_image_classes(self) -> int:
        return len(self.image_classes)

    @property
    def num_seg_classes(self) -> int:
        return len(self.seg_classes)

    def image_index(self, label: str) -> int:
        """Classification target of an image label."""
        try:
            return self.image_classes.index(label)
        except ValueError:
            raise KeyError(f"label {label!r} is not one of the classes {list(self.image_classes)}") from None

    def seg_index(self, label: str) -> int:
        """Segmentation index of a defect class (0 for the defect-free label)."""
        return 0 if label == self.good_label else 1 + self.defect_classes.index(label)

    def to_dict(self) -> dict:
        return {"defect_classes": list(self.defect_classes), "good_label": self.good_label,
                "has_good": self.has_good}

    @classmethod
    def from_dict(cls, data: dict) -> LabelSpace:
        return cls(tuple(data["defect_classes"]), data.get("good_label", "good"), bool(data.get("has_good", True)))
