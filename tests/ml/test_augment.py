"""Augmentation recipes: validation messages, the built Compose, seeding, and the preview figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from defect_pipeline.ml.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    available_transforms,
    build_transform,
    validate_recipe,
)
from defect_pipeline.ml.preview import render_preview

RECIPE = [
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "RandomBrightnessContrast", "p": 0.3},
    {"name": "Affine", "rotate": [-30, 30], "scale": [0.8, 1.2], "p": 1.0},
    {"name": "OneOf", "p": 0.5, "transforms": [{"name": "GaussianBlur"}, {"name": "GaussNoise"}]},
]


def _sample(seed: int = 0, shape: tuple[int, int] = (50, 70)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[5:25, 10:40] = 1
    mask[30:45, 45:65] = 3
    return image, mask


# --- validate_recipe -------------------------------------------------------------------------------


def test_valid_recipes_pass_without_images() -> None:
    validate_recipe(RECIPE)
    validate_recipe([])
    validate_recipe(None)
    validate_recipe([{"name": "RandomBrightnessContrast", "brightness_limit": [-0.1, 0.1]}])  # image-only: fine
    validate_recipe([{"name": "RandomCrop", "height": 512, "width": 512}])  # size-dependent: left to real data
    assert "HorizontalFlip" in available_transforms() and "OneOf" in available_transforms()


def test_typo_suggests_the_close_name() -> None:
    with pytest.raises(ValueError, match=r"recipe \[1\].*unknown albumentations transform 'HorizontalFlp'.*"
                                         r"did you mean 'HorizontalFlip'"):
        validate_recipe([{"name": "RandomBrightnessContrast"}, {"name": "HorizontalFlp", "p": 0.5}])
    with pytest.raises(ValueError, match=r"\[0\]\.transforms\[1\].*'Blurr'.*'Blur'"):
        validate_recipe([{"name": "OneOf", "transforms": [{"name": "GaussNoise"}, {"name": "Blurr"}]}])


def test_bad_arguments_name_the_transform_and_the_argument() -> None:
    with pytest.raises(ValueError, match=r"HorizontalFlip has no argument 'prob'.*did you mean 'p'"):
        validate_recipe([{"name": "HorizontalFlip", "prob": 0.5}])
    with pytest.raises(ValueError,
                       match=r"invalid arguments for RandomBrightnessContrast: argument 'brightness_limit'"):
        validate_recipe([{"name": "RandomBrightnessContrast", "brightness_limit": "strong"}])
    with pytest.raises(ValueError, match=r"invalid arguments for HorizontalFlip: argument 'p'"):
        validate_recipe([{"name": "HorizontalFlip", "p": 1.5}])
    with pytest.raises(ValueError, match=r"invalid arguments for RandomCrop: argument 'width'"):
        validate_recipe([{"name": "RandomCrop", "height": 32}])


def test_transforms_that_cannot_handle_masks_are_rejected() -> None:
    with pytest.raises(ValueError, match="CenterCrop3D does not support masks"):
        validate_recipe([{"name": "CenterCrop3D", "size": [2, 8, 8]}])
    with pytest.raises(ValueError, match="BBoxSafeRandomCrop needs the input 'bboxes'"):
        validate_recipe([{"name": "BBoxSafeRandomCrop"}])
    with pytest.raises(ValueError, match="Mosaic needs extra input"):
        validate_recipe([{"name": "Mosaic"}])


def test_malformed_entries_and_reserved_transforms() -> None:
    with pytest.raises(ValueError, match="Normalize is not allowed"):
        validate_recipe([{"name": "Normalize"}])
    with pytest.raises(ValueError, match="ToTensorV2 is not allowed"):
        validate_recipe([{"name": "ToTensorV2"}])
    with pytest.raises(ValueError, match="needs a 'name'"):
        validate_recipe([{"p": 0.5}])
    with pytest.raises(ValueError, match="expected a mapping"):
        validate_recipe(["HorizontalFlip"])
    with pytest.raises(ValueError, match="must be a list"):
        validate_recipe({"name": "HorizontalFlip"})
    with pytest.raises(ValueError, match="non-empty 'transforms'"):
        validate_recipe([{"name": "OneOf"}])
    with pytest.raises(ValueError, match="unknown albumentations transform"):
        build_transform([{"name": "Nope"}], image_size=32, train=False)  # validated even for eval


# --- build_transform ---------------------------------------------------------------------------------


def test_train_and_eval_outputs() -> None:
    image, mask = _sample()
    train = build_transform(RECIPE, image_size=40, train=True, seed=0)
    names = [type(t).__name__ for t in train.transforms]
    assert names == ["HorizontalFlip", "RandomBrightnessContrast", "Affine", "OneOf",
                     "Resize", "Normalize", "ToTensorV2"]
    out = train(image=image, mask=mask)
    assert out["image"].dtype == torch.float32 and out["image"].shape == (3, 40, 40)
    assert out["mask"].shape == (40, 40)
    assert set(np.unique(out["mask"].numpy())) <= {0, 1, 3}  # nearest neighbour: no blended indices

    evaluation = build_transform(RECIPE, image_size=40, train=False)
    assert [type(t).__name__ for t in evaluation.transforms] == ["Resize", "Normalize", "ToTensorV2"]
    flat = np.full((50, 70, 3), 128, dtype=np.uint8)
    out = evaluation(image=flat, mask=mask)
    expected = (128 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out["image"].mean(dim=(1, 2)).numpy(), expected, rtol=1e-5)
    assert set(np.unique(out["mask"].numpy())) == {0, 1, 3}

    custom = build_transform(None, image_size=8, train=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    np.testing.assert_allclose(custom(image=np.full((8, 8, 3), 255, np.uint8), mask=mask[:8, :8])["image"].numpy(), 1.0)


def test_display_variant_keeps_uint8_pixels() -> None:
    image, mask = _sample()
    display = build_transform(RECIPE, image_size=32, train=True, for_display=True, seed=1)
    out = display(image=image, mask=mask)
    assert isinstance(out["image"], np.ndarray) and out["image"].dtype == np.uint8 and out["image"].shape == (32, 32, 3)
    assert isinstance(out["mask"], np.ndarray) and out["mask"].shape == (32, 32)


def test_seed_makes_augmentations_repeatable() -> None:
    image, mask = _sample()

    def run(seed: int | None) -> list[np.ndarray]:
        transform = build_transform(RECIPE, image_size=32, train=True, seed=seed)
        return [transform(image=image, mask=mask)["image"].numpy() for _ in range(4)]

    first, again, other = run(3), run(3), run(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert not all(np.array_equal(first[0], later) for later in first[1:])  # one stream, new draws per call


# --- render_preview ------------------------------------------------------------------------------------


def _pixels(fig) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def test_preview_grid_has_one_row_per_sample_and_is_seeded() -> None:
    samples = [_sample(0), _sample(1, (40, 40)), (_sample(2)[0], None)]
    display = build_transform(RECIPE, image_size=48, train=True, for_display=True)
    fig = render_preview(samples, display, views=3, seed=0, class_names=["background", "a", "b", "c"],
                         titles=["one", "two", "three"])
    assert len(fig.axes) == 3 * (1 + 3)
    assert fig.axes[0].get_title() == "original" and fig.axes[1].get_title() == "augmented 1"
    again = render_preview(samples, display, views=3, seed=0, class_names=["background", "a", "b", "c"],
                           titles=["one", "two", "three"])
    assert np.array_equal(_pixels(fig), _pixels(again))

    normalised = build_transform(RECIPE, image_size=24, train=True)  # tensors are shown rescaled
    assert len(render_preview(samples[:1], normalised, views=2, seed=1).axes) == 3
    assert len(render_preview([], display, views=2, seed=0).axes) == 1
    with pytest.raises(ValueError, match="views"):
        render_preview(samples, display, views=-1, seed=0)
