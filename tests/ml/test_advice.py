"""Recipe advice on synthetic manifests of different sizes follows the stated rules."""

from __future__ import annotations

import pandas as pd
import pytest

from defect_pipeline.ml.advice import advise, dataset_facts, render_advice_markdown

GIB = 2**30


def manifest(counts: dict[str, int], *, size: int = 200, defect_fraction: float = 0.1) -> pd.DataFrame:
    rows = []
    for label, n in counts.items():
        area = 0 if label == "good" else int(defect_fraction * size * size)
        rows += [{"label": label, "split": "train", "status": "accepted", "width": size, "height": size,
                  "mask_area": area}] * n
    rows += [{"label": "crack", "split": "val", "status": "accepted", "width": 8000, "height": 8000, "mask_area": 1}] * 5
    return pd.DataFrame(rows)


def test_facts_come_from_the_accepted_training_rows() -> None:
    facts = dataset_facts(manifest({"good": 30, "crack": 10}, size=300, defect_fraction=0.05))
    assert facts.train_samples == 40 and facts.class_counts == {"crack": 10, "good": 30}
    assert (facts.median_width, facts.median_height) == (300, 300)
    assert facts.median_defect_coverage == pytest.approx(0.05)


@pytest.mark.parametrize(("samples", "device", "memory", "backbone"), [
    (1_000, "cuda", 80 * GIB, "vit_small_patch16_dinov3"),   # under 5k: DINOv3-S
    (4_998, "cuda", 80 * GIB, "vit_small_patch16_dinov3"),
    (5_000, "cuda", 80 * GIB, "vit_base_patch16_dinov3"),    # 5k-50k: DINOv3-B
    (40_000, "cuda", 80 * GIB, "vit_base_patch16_dinov3"),   # (30k-50k was "large" before the DINOv3 rule)
    (60_000, "cuda", 80 * GIB, "vit_large_patch16_dinov3"),  # from 50k: DINOv3-L
    (60_000, "cuda", 20 * GIB, "vit_base_patch16_dinov3"),   # L needs 24 GiB free: the next smaller size
    (12_000, "cuda", 8 * GIB, "vit_small_patch16_dinov3"),   # B needs 16 GiB free
    (60_000, "cpu", 24 * GIB, "convnext_atto"),              # a CPU: always the smallest
])
def test_backbone_follows_dataset_size_and_device(samples: int, device: str, memory: float, backbone: str) -> None:
    facts = dataset_facts(manifest({"crack": samples // 2, "spot": samples - samples // 2}))
    advice = advise(facts, device=device, free_memory_bytes=memory)
    assert advice["recommendations"]["backbone"] == backbone
    assert f"{samples} training samples" in advice["reasons"]["backbone"]
    stride = 16 if "dinov3" in backbone else 32
    assert advice["recommendations"]["image_size"] % stride == 0


def test_gpu_advice_at_518_px_is_the_nearest_multiple_of_the_dinov3_patch() -> None:
    """The guides' 518 px (DINOv2's 37 patches of 14) becomes 512 for DINOv3's patch 16; the 100k note."""
    facts = dataset_facts(manifest({"crack": 60_000, "spot": 60_000}, size=518))
    advice = advise(facts, device="cuda", free_memory_bytes=80 * GIB)
    assert advice["recommendations"]["image_size"] == 512
    assert "multiple of the stride 16" in advice["reasons"]["image_size"]
    assert "g-class" in advice["reasons"]["backbone"]


def test_input_size_keeps_resolution_only_for_small_defects() -> None:
    big_defects = dataset_facts(manifest({"crack": 100}, size=1000, defect_fraction=0.2))
    tiny_defects = dataset_facts(manifest({"crack": 100}, size=1000, defect_fraction=0.001))
    assert advise(big_defects, device="cuda", free_memory_bytes=80 * GIB)["recommendations"]["image_size"] == 512
    kept = advise(tiny_defects, device="cuda", free_memory_bytes=80 * GIB)
    assert kept["recommendations"]["image_size"] == 992 and "full resolution" in kept["reasons"]["image_size"]
    assert advise(big_defects, device="cpu", free_memory_bytes=8 * GIB)["recommendations"]["image_size"] == 256


def test_batch_fits_memory_and_accumulation_restores_the_effective_batch() -> None:
    facts = dataset_facts(manifest({"crack": 500, "spot": 500}, size=512))
    roomy = advise(facts, device="cuda", free_memory_bytes=80 * GIB)["recommendations"]
    tight = advise(facts, device="cuda", free_memory_bytes=2 * GIB)["recommendations"]
    assert roomy["batch_size"] == 64 and roomy["accumulate_grad_batches"] == 1
    assert tight["batch_size"] < 16 and tight["batch_size"] * tight["accumulate_grad_batches"] >= 16


def test_imbalance_asks_for_class_weights_and_epochs_follow_the_step_target() -> None:
    balanced = advise(dataset_facts(manifest({"good": 300, "crack": 300})), device="cpu", free_memory_bytes=24 * GIB)
    skewed = advise(dataset_facts(manifest({"good": 1000, "crack": 100})), device="cpu", free_memory_bytes=24 * GIB)
    assert balanced["recommendations"]["class_weights"] == "none"
    assert skewed["recommendations"]["class_weights"] == "sqrt" and "10.0" in skewed["reasons"]["class_weights"]
    epochs = balanced["recommendations"]["epochs"]  # 600 samples / 16 = 38 steps per epoch -> 3000 / 38 = 79
    assert epochs == {"stage1": 7, "stage2": 79, "stage3": 15}
    many = advise(dataset_facts(manifest({"crack": 50_000, "spot": 50_000})), device="cpu",
                  free_memory_bytes=24 * GIB)["recommendations"]["epochs"]
    assert many["stage2"] == 15  # 6250 steps per epoch: the 15-epoch floor


def test_advice_table_shows_advice_next_to_the_configuration() -> None:
    advice = advise(dataset_facts(manifest({"good": 10, "crack": 10})), device="cpu", free_memory_bytes=None)
    text = render_advice_markdown(advice, {"backbone": "resnet18", "image_size": 64})
    assert "| backbone | convnext_atto | resnet18 |" in text and "never changed" in text
