"""Parameter validation: every problem named by its dotted key, with spelling hints."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from defect_pipeline.config import DataParams, ParameterError, validate_parameters
from tests.conftest import REPO_ROOT


def test_shipped_parameters_are_valid() -> None:
    for path in (REPO_ROOT / "conf").glob("*/parameters*.yml"):
        params = yaml.safe_load(path.read_text()) or {}
        if path.parent.name == "base":
            validate_parameters(params)
        else:  # environments override some keys of base
            base = yaml.safe_load((REPO_ROOT / "conf/base" / path.name).read_text())
            merged = {k: {**base.get(k, {}), **v} if isinstance(v, dict) else v for k, v in params.items()}
            validate_parameters(merged)


def test_defaults_describe_the_demo_data() -> None:
    params = DataParams()
    assert params.raw_root is None and params.demo.output_dir == "data/01_raw/demo"


def test_every_problem_is_reported_at_once_with_its_key() -> None:
    with pytest.raises(ParameterError) as error:
        validate_parameters({"data": {"layuot": "mmseg", "split": {"seed": "abc"}, "masks": {"binarize_threshold": 300}}})
    message = str(error.value)
    assert "data.layuot: unknown key. Did you mean 'layout'?" in message
    assert "data.split.seed" in message
    assert "data.masks.binarize_threshold" in message
    assert len(error.value.problems) == 3


def test_nested_unknown_key_lists_the_known_keys_of_its_block() -> None:
    with pytest.raises(ParameterError) as error:
        validate_parameters({"data": {"check": {"workers": 2}}})
    assert "data.check.workers: unknown key. Did you mean 'num_workers'?" in str(error.value)
    assert "chunksize" in str(error.value)


@pytest.mark.parametrize(
    ("block", "fragment"),
    [
        ({"split": {"val_fraction": 0.6, "test_fraction": 0.5}}, "training data remains"),
        ({"split": {"val_fraction": -0.1}}, "data.split.val_fraction"),
        ({"layout": "coco"}, "data.layout"),
        ({"classes": ["a", "a"]}, "unique"),
        ({"classes": ["good"]}, "must not also be a defect class"),
        ({"image_extensions": ["jpg"]}, "start with '.'"),
        ({"demo": {"images_per_class": 1}}, "data.demo.images_per_class"),
    ],
)
def test_bad_values_are_rejected(block: dict, fragment: str) -> None:
    with pytest.raises(ParameterError, match="Invalid parameters") as error:
        validate_parameters({"data": block})
    assert fragment in str(error.value)


@pytest.mark.parametrize(("key", "value"), [("max_accuracy_drop", 1.5), ("max_miou_drop", -0.1),
                                            ("signal_sigmas", -1)])
def test_threshold_checks_are_validated_by_name(key: str, value: float) -> None:
    with pytest.raises(ParameterError, match=f"thresholds.{key}"):
        validate_parameters({"thresholds": {key: value}})
    assert validate_parameters({"thresholds": {key: 0}})["thresholds"].model_dump()[key] == 0


def test_unknown_block_and_non_mapping_block() -> None:
    with pytest.raises(ParameterError) as error:
        validate_parameters({"dta": {}, "data": 3})
    message = str(error.value)
    assert "dta: unknown parameter block. Did you mean 'data'?" in message
    assert "data: must be a mapping" in message


def test_validated_config_is_frozen() -> None:
    """Assigning to a validated block, or to a nested one, is refused by pydantic naming the key.

    The earlier ``pytest.raises(Exception)`` also passed for any unrelated error (shown with a
    StrictModel mutated to raise a bare ``AttributeError("read-only")``: old check passed, this fails).
    """
    params = validate_parameters({"data": {}})["data"]
    with pytest.raises(ValidationError, match=r"DataParams\nraw_root\n  Instance is frozen") as error:
        params.raw_root = "elsewhere"  # type: ignore[misc]
    assert [(e["type"], e["loc"]) for e in error.value.errors()] == [("frozen_instance", ("raw_root",))]
    assert params.raw_root is None
    with pytest.raises(ValidationError, match=r"DemoParams\noutput_dir\n  Instance is frozen"):
        params.demo.output_dir = "elsewhere"  # type: ignore[misc]
    assert params.demo.output_dir == "data/01_raw/demo"


def test_ensemble_block_checks_weights_and_flips() -> None:
    from defect_pipeline.config import ParameterError, validate_parameters

    with pytest.raises(ParameterError, match="ensemble: .*weights has 1 values for 2 members"):
        validate_parameters({"ensemble": {"members": ["a", "b"], "weights": [1.0]}})
    with pytest.raises(ParameterError, match="ensemble.tta"):
        validate_parameters({"ensemble": {"members": ["a"], "tta": ["rotate"]}})
    with pytest.raises(ParameterError, match="tta lists a flip twice"):
        validate_parameters({"ensemble": {"members": ["a"], "tta": ["hflip", "hflip"]}})


def test_blocks_kedro_already_typed_are_accepted_and_stages_are_registered() -> None:
    """Kedro's own type-hint validation puts model instances into ``context.params``."""
    from defect_pipeline.config import STAGES, ModelParams, StageParams

    model = ModelParams(backbone="resnet18")
    validated = validate_parameters({"model": model, "data": {}, **{stage: {} for stage in STAGES}})
    assert validated["model"] is model
    assert all(isinstance(validated[stage], StageParams) for stage in STAGES)
    with pytest.raises(ParameterError, match="model: must be a mapping"):
        validate_parameters({"model": DataParams()})


@pytest.mark.parametrize(("model", "fragment"), [
    ({"input_mode": "crops"}, "model.input_mode: Input should be 'auto', 'resize' or 'crop'"),
    ({"input_mode": "tile"}, "set 'crop' to train on crops"),
    ({"crop": {"defect_rate": 1.5}}, "model.crop.defect_rate: Input should be less than or equal to 1"),
    ({"crop": {"scale": 0}}, "model.crop.scale: Input should be greater than 0"),
    ({"crop": {"scael": 0.5}}, "model.crop.scael: unknown key. Did you mean 'scale'?"),
])
def test_input_mode_and_crop_settings_are_checked_with_their_key(model: dict, fragment: str) -> None:
    with pytest.raises(ParameterError) as error:
        validate_parameters({"model": model})
    assert fragment in str(error.value)


def test_input_mode_defaults_to_auto_with_native_scale_crops() -> None:
    from defect_pipeline.config import ModelParams

    model = ModelParams.model_validate({"input_mode": "crop", "crop": {"scale": 0.5}})
    assert (model.input_mode, model.crop.scale, model.crop.defect_rate) == ("crop", 0.5, 0.5)
    default = ModelParams()
    assert (default.input_mode, default.crop.scale, default.crop.defect_rate) == ("auto", 1.0, 0.5)


@pytest.mark.parametrize(("stage", "fragment"), [
    ({"scheduler": "cosine_restarts"}, "stage2: Value error, scheduler: cosine_restarts needs restart_epochs"),
    ({"scheduler": "step"}, "stage2: Value error, scheduler: step needs step_epochs"),
    ({"restart_epochs": 5}, "restart_epochs applies to scheduler: cosine_restarts only, but scheduler is cosine"),
    ({"scheduler": "step", "step_epochs": 4, "restart_mult": 2.0}, "restart_mult applies to scheduler: "
                                                                    "cosine_restarts only, but scheduler is step"),
    ({"scheduler": "constant", "step_gamma": 0.5}, "step_gamma applies to scheduler: step only"),
    ({"scheduler": "linear"}, "stage2.scheduler: Input should be 'cosine', 'cosine_restarts', 'step' or 'constant'"),
    ({"scheduler": "step", "step_epochs": 4, "step_gamma": 1.5}, "stage2.step_gamma: Input should be less than 1"),
    ({"scheduler": "cosine_restarts", "restart_epochs": 0}, "stage2.restart_epochs: Input should be greater than 0"),
])
def test_scheduler_settings_are_checked_with_the_key_named(stage: dict, fragment: str) -> None:
    """Written before ``stage.scheduler`` existed: there every case failed as an unknown key."""
    with pytest.raises(ParameterError) as error:
        validate_parameters({"stage2": stage})
    assert fragment in str(error.value)


def test_scheduler_defaults_to_cosine_and_accepts_its_own_settings() -> None:
    from defect_pipeline.config import StageParams

    assert StageParams().scheduler == "cosine"
    restarts = validate_parameters({"stage1": {"scheduler": "cosine_restarts", "restart_epochs": 2.5,
                                               "restart_mult": 2.0}})["stage1"]
    assert (restarts.restart_epochs, restarts.restart_mult) == (2.5, 2.0)
    step = validate_parameters({"stage1": {"scheduler": "step", "step_epochs": 3, "step_gamma": 0.5}})["stage1"]
    assert (step.step_epochs, step.step_gamma) == (3, 0.5)
    assert validate_parameters({"stage1": {"scheduler": "constant", "restart_mult": 1.0}})["stage1"].scheduler == \
        "constant"  # a setting left at its default is not an error under another scheduler


@pytest.mark.parametrize(("stage", "fragment"), [
    ({"val_every_n_steps": 0}, "stage2.val_every_n_steps: Input should be greater than or equal to 1 (got 0)"),
    ({"max_steps": 0}, "stage2.max_steps: Input should be greater than or equal to 1 (got 0)"),
    ({"checkpoint_every_n_steps": -5}, "stage2.checkpoint_every_n_steps: Input should be greater than or equal to 1"),
    ({"checkpoint_every_n_steps": 100, "keep_last_n": 0}, "stage2.keep_last_n: Input should be greater than or equal "
                                                          "to 1"),
    ({"keep_last_n": 5}, "stage2.keep_last_n: Value error, keep_last_n applies to step checkpoints only, but "
                         "checkpoint_every_n_steps is not set"),
    ({"val_every_n_step": 100}, "stage2.val_every_n_step: unknown key. Did you mean 'val_every_n_steps'"),
])
def test_step_settings_are_checked_with_the_key_named(stage: dict, fragment: str) -> None:
    """Written before the step settings existed: there every case failed as an unknown key."""
    with pytest.raises(ParameterError) as error:
        validate_parameters({"stage2": stage})
    assert fragment in str(error.value)


def test_step_settings_default_to_once_per_epoch_and_are_accepted() -> None:
    from defect_pipeline.config import StageParams

    default = StageParams()
    assert (default.max_steps, default.val_every_n_steps, default.checkpoint_every_n_steps) == (None, None, None)
    stage = validate_parameters({"stage2": {"max_steps": 3000, "val_every_n_steps": 500,
                                            "checkpoint_every_n_steps": 250, "keep_last_n": 2}})["stage2"]
    assert (stage.max_steps, stage.val_every_n_steps, stage.checkpoint_every_n_steps, stage.keep_last_n) == \
        (3000, 500, 250, 2)
    assert validate_parameters({"stage2": {"checkpoint_every_n_steps": 250, "keep_last_n": None}})["stage2"] \
        .keep_last_n is None  # keep every step file


def _merged_stage(env: str, stage: str) -> dict:
    """``stage``'s block as ``kedro run --env <env>`` reads it (the environment's keys over base's)."""
    base = yaml.safe_load((REPO_ROOT / "conf/base/parameters_training.yml").read_text())[stage]
    path = REPO_ROOT / "conf" / env / "parameters_training.yml"
    return {**base, **(yaml.safe_load(path.read_text()).get(stage) or {})} if env != "base" else base


def test_dynamic_loss_weights_follow_the_recipe_segmentation_first() -> None:
    """The recipe ramps alpha (classification) 0.5 -> 1.0 and beta (segmentation) 1.0 -> 0.3; before this
    change the defaults and conf/gpu ran the other way (alpha 1.0 -> 0.5, beta 0.5 -> 1.0)."""
    from defect_pipeline.config import LossParams

    loss = LossParams(weighting="dynamic")
    assert (loss.alpha_start, loss.alpha_end, loss.beta_start, loss.beta_end) == (0.5, 1.0, 1.0, 0.3)
    for env in ("gpu", "base"):  # base: the demo measurement did not say otherwise (docs/training.md)
        shipped = validate_parameters({"stage2": _merged_stage(env, "stage2")})["stage2"].loss
        assert (shipped.weighting, shipped.alpha_start, shipped.alpha_end, shipped.beta_start, shipped.beta_end) == \
            ("dynamic", 0.5, 1.0, 1.0, 0.3), env


@pytest.mark.parametrize(("blocks", "fragment"), [
    ({"model": {"image_size": "big"}}, "model.image_size: Value error, must be 'auto' or a whole number from 16 to 4096"),
    ({"model": {"image_size": 8}}, "model.image_size"),
    ({"stage2": {"batch_size": 0}}, "stage2.batch_size: Value error, must be 'auto' or a whole number of at least 1"),
    ({"stage2": {"epochs": 2.5}}, "stage2.epochs"),
    ({"stage2": {"sampler": "balnced"}}, "stage2.sampler: Input should be 'auto', 'uniform' or 'balanced'"),
    ({"stage2": {"loss": {"class_weights": "inverse"}}}, "stage2.loss.class_weights"),
])
def test_auto_settings_take_auto_or_a_valid_value(blocks: dict, fragment: str) -> None:
    with pytest.raises(ParameterError) as error:
        validate_parameters(blocks)
    assert fragment in str(error.value)


def test_auto_settings_are_accepted_and_the_imbalance_handling_defaults_to_auto() -> None:
    """Before ``auto`` settings, ``image_size: auto`` and ``batch_size: auto`` were refused."""
    validated = validate_parameters({"model": {"image_size": "auto"},
                                     "stage2": {"batch_size": "auto", "epochs": "auto", "sampler": "balanced"},
                                     "stage3": {"batch_size": 8, "epochs": 4}})
    assert validated["model"].image_size == "auto"
    assert (validated["stage2"].batch_size, validated["stage2"].epochs, validated["stage2"].sampler) == (
        "auto", "auto", "balanced")
    assert (validated["stage3"].batch_size, validated["stage3"].epochs, validated["stage3"].sampler) == (8, 4, "auto")
    assert validated["stage3"].loss.class_weights == "auto"
