"""The rules that turn a dataset fingerprint and the machine into ``auto`` training settings (ml/plan.py).

Each rule is checked on synthetic manifests whose numbers make the expected value follow from the
rule as documented (docs/training.md, "Settings chosen from the data"), and each also keeps an
explicit value untouched.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from defect_pipeline.ml.plan import (
    AUTO,
    Machine,
    class_shares,
    fingerprint,
    loss_class_weights,
    plan_stage,
    resolve_batch_size,
    resolve_epochs,
    resolve_image_size,
    resolve_imbalance,
    sampling_weights,
)

GIB = 2**30
CPU = Machine("cpu", cpu_cores=2, free_memory_bytes=8 * GIB)
GPU = Machine("cuda", cpu_cores=16, free_memory_bytes=80 * GIB, precision="bf16")
ALL_AUTO = {"image_size": AUTO, "batch_size": AUTO, "epochs": AUTO, "sampler": AUTO, "class_weights": AUTO}


def manifest(counts: dict[str, int], *, width: int = 200, height: int = 200, defect_area: int = 100,
             components: int = 1) -> pd.DataFrame:
    rows = []
    for label, n in counts.items():
        good = label == "good"
        rows += [{"label": label, "split": "train", "status": "accepted", "width": width, "height": height,
                  "mask_area": 0 if good else defect_area, "mask_components": 0 if good else components}] * n
    # rows the fingerprint must ignore: other splits, quarantined files
    rows += [{"label": "crack", "split": "val", "status": "accepted", "width": 9000, "height": 9000}] * 3
    rows += [{"label": "good", "split": "train", "status": "quarantined", "width": 9000, "height": 9000}] * 3
    return pd.DataFrame(rows)


def test_fingerprint_reads_sizes_classes_and_defect_sizes_of_accepted_training_rows() -> None:
    frame = manifest({"good": 70, "crack": 20, "spot": 10}, width=600, height=400, defect_area=400, components=4)
    fp = fingerprint(frame, good_label="good")
    assert fp.train_samples == 100 and fp.class_counts == {"crack": 20, "good": 70, "spot": 10}
    assert (fp.median_width, fp.median_height, fp.median_short_side) == (600, 400, 400)
    assert (fp.min_side, fp.max_side) == (400, 600)
    assert fp.defect_free_share == pytest.approx(0.7)
    assert fp.class_frequencies["spot"] == pytest.approx(0.1)
    assert fp.median_defect_px == pytest.approx(10.0)  # sqrt(400 / 4)
    assert fp.imbalance_ratio == pytest.approx(7.0)


def test_fingerprint_without_training_images_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="run the data pipeline"):
        fingerprint(manifest({"good": 3}).assign(split="test"))
    with pytest.raises(ValueError, match="lacks columns"):
        fingerprint(pd.DataFrame({"label": ["good"]}))


@pytest.mark.parametrize(("width", "height", "machine", "expected"), [
    (64, 64, CPU, 64),          # the demo: the image itself
    (200, 200, CPU, 192),       # NEU-Seg: 200 rounded down to a multiple of 32
    (600, 400, CPU, 256),       # larger than the CPU cap: 256 (input_mode auto then crops)
    (600, 400, GPU, 384),       # under the GPU cap of 512: the shorter side
    (4000, 3000, GPU, 512),     # the GPU cap
    (40, 40, CPU, 64),          # smaller than two strides: two strides
])
def test_image_size_is_the_median_shorter_side_on_the_stride_within_the_device_cap(
        width: int, height: int, machine: Machine, expected: int) -> None:
    fp = fingerprint(manifest({"crack": 10}, width=width, height=height))
    resolved = resolve_image_size(AUTO, fp, machine, stride=32)
    assert resolved.value == expected and resolved.auto
    assert f"{width:g} x {height:g}" in resolved.reason


def test_image_size_follows_the_stride_of_the_network() -> None:
    fp = fingerprint(manifest({"crack": 10}, width=200, height=200))
    assert resolve_image_size(AUTO, fp, CPU, stride=14).value == 196


@pytest.mark.parametrize(("samples", "machine", "expected"), [
    (400, CPU, 16),     # 400 / 8 steps = 50 per batch allowed: the CPU cap 16
    (100, CPU, 8),      # 100 / 8 = 12: the largest power of two under it
    (10, CPU, 2),       # tiny data: the minimum of 2
    (10_000, GPU, 64),  # the GPU cap
])
def test_batch_is_a_power_of_two_that_keeps_enough_steps_per_epoch(samples: int, machine: Machine,
                                                                   expected: int) -> None:
    fp = fingerprint(manifest({"crack": samples}))
    resolved = resolve_batch_size(AUTO, fp, machine, stage_name="stage2", image_size=64, backbone="convnext_atto")
    assert resolved.value == expected and resolved.key == "stage2.batch_size"


def test_batch_fits_the_free_memory() -> None:
    fp = fingerprint(manifest({"crack": 10_000}))
    tight = Machine("cuda", cpu_cores=8, free_memory_bytes=1 * GIB, precision="bf16")
    resolved = resolve_batch_size(AUTO, fp, tight, stage_name="stage2", image_size=512, backbone="convnext_atto")
    assert 2 <= resolved.value < 64 and "memory" in resolved.reason


def test_batch_counts_the_processes_training_together() -> None:
    fp = fingerprint(manifest({"crack": 128}))
    one = resolve_batch_size(AUTO, fp, CPU, stage_name="stage2", image_size=64, backbone="convnext_atto")
    four = resolve_batch_size(AUTO, fp, Machine("cpu", 8, 8 * GIB, world_size=4), stage_name="stage2",
                              image_size=64, backbone="convnext_atto")
    assert (one.value, four.value) == (16, 4)  # 128 / 8 steps = 16; 32 per rank / 8 = 4


def test_epochs_aim_at_a_step_target_with_stage_shares_and_bounds() -> None:
    fp = fingerprint(manifest({"crack": 600}))  # 600 / 16 = 38 steps per epoch -> 3000 / 38 = 79 epochs
    epochs = {stage: resolve_epochs(AUTO, fp, CPU, stage_name=stage, batch_size=16).value
              for stage in ("stage1", "stage2", "stage3")}
    assert epochs == {"stage1": 7, "stage2": 79, "stage3": 15}
    many = fingerprint(manifest({"crack": 100_000}))
    assert resolve_epochs(AUTO, many, CPU, stage_name="stage2", batch_size=16).value == 15  # the floor
    few = fingerprint(manifest({"crack": 40}))
    assert resolve_epochs(AUTO, few, CPU, stage_name="stage2", batch_size=4).value == 100  # the ceiling
    assert resolve_epochs(AUTO, few, CPU, stage_name="stage1", batch_size=4).value == 10


def test_epochs_count_accumulation_and_name_the_time_budget() -> None:
    fp = fingerprint(manifest({"crack": 6400}))
    plain = resolve_epochs(AUTO, fp, CPU, stage_name="stage2", batch_size=16)
    accumulated = resolve_epochs(AUTO, fp, CPU, stage_name="stage2", batch_size=16, accumulate=4)
    assert (plain.value, accumulated.value) == (15, 30)  # 400 steps -> 8 (floor 15); 100 steps -> 30
    budgeted = resolve_epochs(AUTO, fp, CPU, stage_name="stage2", batch_size=16, time_budget_s=1800)
    assert budgeted.value == AUTO and "time budget of 1800 s" in budgeted.reason  # the engine sizes it to the budget


def test_imbalance_turns_on_sqrt_class_weights_and_keeps_the_shuffle() -> None:
    """Before the rule was measured (docs/training.md), auto chose the balanced sampler and no weights."""
    skewed = fingerprint(manifest({"good": 300, "crack": 20, "spot": 20}), good_label="good")
    sampler, weights = resolve_imbalance(AUTO, AUTO, skewed, stage_name="stage2")
    assert (sampler.value, sampler.auto, weights.value, weights.auto) == ("uniform", True, "sqrt", True)
    assert "15.0x" in weights.reason and "1/sqrt" in weights.reason and "memorise" in sampler.reason
    even = fingerprint(manifest({"good": 30, "crack": 20, "spot": 20}))
    assert tuple(r.value for r in resolve_imbalance(AUTO, AUTO, even, stage_name="stage2")) == ("uniform", "none")


def test_an_explicit_balanced_sampler_leaves_the_loss_unweighted() -> None:
    skewed = fingerprint(manifest({"good": 300, "crack": 20}))
    sampler, weights = resolve_imbalance("balanced", AUTO, skewed, stage_name="stage2")
    assert (sampler.value, sampler.auto, weights.value) == ("balanced", False, "none")
    assert "over-correct" in weights.reason


def test_loss_class_weights_dampen_the_inverse_frequency_and_keep_the_loss_scale() -> None:
    counts = [100, 25, 4]
    sqrt = loss_class_weights("sqrt", counts)
    assert sqrt[1] / sqrt[0] == pytest.approx(2.0) and sqrt[2] / sqrt[0] == pytest.approx(5.0)  # sqrt(100 / n)
    balanced = loss_class_weights("balanced", counts)
    assert balanced[2] / balanced[0] == pytest.approx(25.0)  # 100 / 4: the full inverse frequency
    for weights in (sqrt, balanced):  # both average 1 over the training images
        assert sum(n * w for n, w in zip(counts, weights)) == pytest.approx(sum(counts))
    assert loss_class_weights("sqrt", [0, 4])[0] == pytest.approx(2 * loss_class_weights("sqrt", [0, 4])[1])
    with pytest.raises(ValueError, match="loss.class_weights"):
        loss_class_weights("auto", counts)


@pytest.mark.parametrize("explicit", [
    {"image_size": 128}, {"batch_size": 4}, {"epochs": 7}, {"sampler": "uniform"}, {"class_weights": [1.0, 2.0]},
])
def test_an_explicit_value_wins_over_every_rule(explicit: dict) -> None:
    skewed = fingerprint(manifest({"good": 300, "crack": 20}, width=600, height=600))
    plan = plan_stage(skewed, CPU, stage_name="stage2", requested={**ALL_AUTO, **explicit}, stride=32,
                      backbone="convnext_atto")
    (name, value), = explicit.items()
    item = plan.settings[name]
    assert item.value == value and not item.auto and "set explicitly" in item.reason
    auto_items = [i for n, i in plan.settings.items() if n != name]
    assert all(i.auto for i in auto_items)


def test_the_batch_follows_the_resolved_image_size_and_the_epochs_the_resolved_batch() -> None:
    fp = fingerprint(manifest({"crack": 100}))
    plan = plan_stage(fp, CPU, stage_name="stage2", requested={**ALL_AUTO, "batch_size": 2}, stride=32,
                      backbone="convnext_atto")
    assert plan.settings["epochs"].value == 60  # 100 / 2 = 50 steps per epoch -> 3000 / 50


def test_summary_section_and_tags_name_every_setting() -> None:
    fp = fingerprint(manifest({"good": 300, "crack": 20}))
    plan = plan_stage(fp, CPU, stage_name="stage2", requested={**ALL_AUTO, "epochs": 5}, stride=32,
                      backbone="convnext_atto")
    section = plan.to_dict()
    assert set(section["resolved"]) == {"model.image_size", "stage2.batch_size", "stage2.epochs", "stage2.sampler",
                                        "stage2.loss.class_weights"}
    assert section["resolved"]["stage2.loss.class_weights"] == {
        "value": "sqrt", "requested": "auto", "auto": True, "tag": "auto.stage.loss.class_weights",
        "reason": plan.settings["class_weights"].reason}
    assert section["resolved"]["stage2.epochs"]["auto"] is False
    assert section["fingerprint"]["imbalance_ratio"] == 15.0 and section["machine"]["cpu_cores"] == 2
    assert plan.settings["image_size"].tag == "auto.model.image_size"


def test_sampling_weights_give_each_class_a_share_proportional_to_the_root_of_its_size() -> None:
    labels = [0] * 100 + [1] * 25 + [2] * 4
    weights = sampling_weights(labels)
    assert weights[0] == pytest.approx(0.1) and weights[-1] == pytest.approx(0.5)
    shares = class_shares(labels, weights)
    total = math.sqrt(100) + math.sqrt(25) + math.sqrt(4)
    assert shares == pytest.approx({0: 10 / total, 1: 5 / total, 2: 2 / total})
    with pytest.raises(ValueError, match="at least one"):
        sampling_weights([])
