"""The ``kedro run`` lines of the diagnosis name real pipelines and parameter keys, with values that validate.

Every command any finding generates (on histories that trigger each kind, for stages with every
loss weighting and input mode, and for a backbone-comparison candidate) is parsed the way
``kedro run --params`` parses it (Kedro's own ``_split_params``), merged into the shipped
``conf/base`` parameters and validated against the parameter models of ``defect_pipeline.config``.
Before this change there were no commands (``diagnose`` took no ``target``: a TypeError).
"""

from __future__ import annotations

import copy
import shlex
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.framework.cli.utils import _split_params

from defect_pipeline.config import ModelParams, StageParams, validate_parameters
from defect_pipeline.ml.diagnosis import diagnose
from defect_pipeline.ml.diagnosis_commands import RerunTarget, format_value, scaled
from defect_pipeline.ml.stage import stage_rerun_target
from defect_pipeline.pipeline_registry import register_pipelines
from tests.conftest import REPO_ROOT
from tests.ml.test_diagnosis import history as curve
from tests.ml.test_diagnosis_findings import collapsed_metrics, flat_and_high, frame, healthy_metrics, \
    stalled_classification


def base_parameters() -> dict:
    params: dict = {}
    for path in sorted((REPO_ROOT / "conf/base").glob("parameters*.yml")):
        params.update(yaml.safe_load(path.read_text()) or {})
    return params


def merged(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def parse(command: str) -> tuple[str, dict]:
    """The pipeline and the nested ``--params`` of a ``kedro run`` line, parsed as Kedro's CLI does."""
    words = shlex.split(command)
    assert words[:2] == ["kedro", "run"], command
    pipeline = next(w.split("=", 1)[1] for w in words if w.startswith("--pipeline="))
    raw = words[words.index("--params") + 1]
    return pipeline, _split_params(None, SimpleNamespace(name="params"), raw)


def histories() -> list[tuple[pd.DataFrame, dict]]:
    """Histories that trigger every kind of finding that has something to change."""
    n = 8
    lr_decayed = list(1e-3 * (0.5 ** np.arange(10)))
    dropout_noisy = curve(list(np.linspace(1.0, 0.5, 10)), list(np.linspace(1.0, 0.5, 10)),
                          [0.3, 0.35, 0.36, 0.37, 0.38, 0.3, 0.5, 0.3, 0.55, 0.3], dropout=[0.0] * 5 + [0.2] * 5)
    return [
        (frame(n, train_loss=np.linspace(1.2, 0.9, n), val_loss=np.linspace(1.25, 0.95, n), val_combined_score=0.1,
               lr_head=1e-3, **collapsed_metrics(n)), {}),  # collapse, plateau (high lr)
        (frame(4, train_loss=np.linspace(1.0, 0.6, 4), val_loss=np.linspace(1.0, 0.65, 4),
               val_combined_score=np.linspace(0.3, 0.4, 4),
               **{**healthy_metrics(4), "val_iou/crack": 0.0, "val_iou/scratch": 0.0, "val_iou/spot": 0.0}), {}),
        (curve([1.0, 0.6, 0.4, 0.5, 0.9, 1.4], [1.0, 0.6, 0.4, 0.5, 0.9, 1.4], [0.3, 0.4, 0.5, 0.45, 0.3, 0.2]),
         {}),  # divergence
        (curve([1.0, 0.5, float("nan")], [1.0, 0.5, float("nan")], [0.1, 0.2, 0.0]), {}),  # non_finite
        (curve([1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08], [1.0, 0.75, 0.6, 0.55, 0.56, 0.6, 0.66, 0.7],
               [0.3, 0.45, 0.55, 0.6, 0.61, 0.6, 0.6, 0.59]), {}),  # generalization gap
        (curve(list(np.linspace(1.0, 0.4, 10)), list(np.linspace(1.05, 0.42, 10)),
               [0.3, 0.5, 0.6, 0.65, 0.652, 0.6525, 0.652, 0.6522, 0.652, 0.6521], lr=lr_decayed), {}),  # eta_min
        (curve(list(np.linspace(1.0, 0.5, 8)), list(np.linspace(1.0, 0.5, 8)),
               [0.4, 0.5, 0.42, 0.52, 0.43, 0.53, 0.44, 0.54]), {}),  # oscillation
        (curve([1.0, 0.98, 0.97, 0.96], [1.0, 0.99, 0.98, 0.97], [0.1, 0.11, 0.12, 0.13]), {}),  # underfitting
        (curve(list(np.linspace(1.0, 0.3, 6)), list(np.linspace(1.0, 0.32, 6)), list(np.linspace(0.2, 0.6, 6))),
         {}),  # still improving
        (dropout_noisy, {}),  # dropout switch without a calmer validation
        (flat_and_high().assign(train_accuracy=0.99, val_accuracy=0.7), {}),  # accuracy gap, relax (loss high)
        (stalled_classification(), {}),  # rebalance
    ]


def targets() -> list[RerunTarget]:
    crop = ModelParams(image_size=64, input_mode="crop", crop={"scale": 0.5, "defect_rate": 0.3})
    return [
        stage_rerun_target("stage1", StageParams(freeze_backbone=True, dropout={"rate": 0.2},
                                                 loss={"weighting": "fixed", "label_smoothing": 0.1}),
                           ModelParams(image_size=64)),
        stage_rerun_target("stage2", StageParams(backbone_lr=2e-4, grad_clip=None,
                                                 loss={"weighting": "dynamic", "dice_weight": 0.0},
                                                 dropout={"rate": 0.1, "warmup_step": 200}), crop),
        stage_rerun_target("stage3", StageParams(loss={"weighting": "uncertainty", "class_weights": "balanced"}),
                           ModelParams(image_size=96), input_mode_used="resize"),
        stage_rerun_target("compare:resnet18", StageParams(), ModelParams(backbone="resnet18"),
                           pipeline="compare_backbones", stage_key="compare_backbones.stage",
                           all_pipeline="compare_backbones", all_stage_keys=("compare_backbones.stage",)),
    ]


def all_commands() -> dict[str, set[str]]:
    """Finding kind → every command generated for it over :func:`histories` x :func:`targets`."""
    found: dict[str, set[str]] = {}
    for frame_, kwargs in histories():
        for target in targets():
            for finding in diagnose(frame_, target=target, **kwargs)["findings"]:
                found.setdefault(finding["kind"], set()).update(
                    a["command"] for a in finding["actions"] if "command" in a)
    return found


def test_every_generated_command_names_a_pipeline_and_parameters_that_validate() -> None:
    found = all_commands()
    acting = {"collapse", "non_finite", "divergence", "generalization_gap", "accuracy_gap", "relax_regularisation",
              "rebalance_loss_weights", "plateau", "oscillation", "underfitting", "still_improving", "dropout_switch"}
    assert {kind for kind, commands in found.items() if commands} == acting
    pipelines, base = set(register_pipelines()), base_parameters()
    for kind, commands in found.items():
        for command in commands:
            pipeline, params = parse(command)
            assert pipeline in pipelines, command
            validate_parameters(merged(base, params))  # raises ParameterError naming any bad key or value
            resumed = [v for k, v in _flat(params).items() if k.endswith(".resume")]
            assert resumed and not any(resumed), f"{kind}: {command} must retrain (resume=false)"


def _flat(params: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else key
        out.update(_flat(value, name) if isinstance(value, dict) else {name: value})
    return out


def test_a_stage_change_reruns_the_stage_and_a_model_change_every_stage() -> None:
    target = stage_rerun_target("stage2", StageParams(lr=2e-3), ModelParams(image_size=64))
    assert target.command({"lr": 2e-3 / 3}) == \
        "kedro run --pipeline=stage2 --params stage2.lr=0.00067,stage2.resume=false"
    assert target.command({"model.image_size": 128, "epochs": 50}) == (
        "kedro run --pipeline=training --params model.image_size=128,stage2.epochs=50,stage1.resume=false,"
        "stage2.resume=false,stage3.resume=false")


def test_values_are_written_as_kedro_parses_them_back() -> None:
    assert [format_value(v) for v in (False, 1.0, 0.00067, 1e-5, 128, "balanced")] == \
        ["false", "1.0", "0.00067", "1e-05", "128", "balanced"]
    assert _split_params(None, SimpleNamespace(name="params"), "a.b=1.0,a.c=false,a.d=1e-05,a.e=128") == \
        {"a": {"b": 1.0, "c": False, "d": 1e-05, "e": 128}}
    with pytest.raises(ValueError, match="cannot be passed through kedro run --params"):
        format_value("a,b")
    assert scaled(2, high=4096)(64) == 128 and isinstance(scaled(0.5, low=1)(1), int)
    assert scaled(1 / 3)(2e-3) == 0.00067


def test_settings_left_auto_are_not_scaled_into_commands() -> None:
    """``auto`` is resolved only when a stage starts, so a history diagnosed on its own cannot double it: the
    advice stays, without a ``model.image_size`` change. Before, doubling 'auto' raised a ValueError."""
    target = stage_rerun_target("stage2", StageParams(batch_size="auto", epochs="auto"),
                                ModelParams(image_size="auto", input_mode="resize"))
    frame_, kwargs = histories()[0]  # a collapse: one action asks for a larger input size
    findings = diagnose(frame_, target=target, **kwargs)["findings"]
    collapse = next(f for f in findings if f["kind"] == "collapse")
    larger = next(a for a in collapse["actions"] if "larger input size" in a["advice"])
    assert "command" not in larger
    assert all("model.image_size" not in a.get("command", "") for f in findings for a in f["actions"])
