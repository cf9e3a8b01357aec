"""Class-balanced sampling: what the sampler draws, that it repeats per (seed, epoch, rank), and that a
training job with sample weights uses it instead of a shuffle."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from defect_pipeline.ml.distributed import SingleProcess
from defect_pipeline.ml.engine import job as job_module
from defect_pipeline.ml.engine.job import TrainingJob, run_training_job
from defect_pipeline.ml.engine.loop import _seed_epoch
from defect_pipeline.ml.plan import sampling_weights
from defect_pipeline.ml.sampling import BalancedSampler

LABELS = [0] * 90 + [1] * 10  # 9:1; under 1/sqrt(n) weights class 1 gets sqrt(10) / (sqrt(90) + sqrt(10)) = 25 %


def test_rare_classes_are_drawn_as_the_weights_say() -> None:
    sampler = BalancedSampler(sampling_weights(LABELS), seed=0)
    drawn = [LABELS[i] for epoch in range(40) for i in (sampler.set_epoch(epoch), list(sampler))[1]]
    share = Counter(drawn)[1] / len(drawn)
    assert len(sampler) == len(LABELS) and share == pytest.approx(0.25, abs=0.03)  # uniform would give 10 %


def test_the_draw_repeats_for_the_same_seed_epoch_and_rank_only() -> None:
    weights = sampling_weights(LABELS)
    first, again = BalancedSampler(weights, seed=3), BalancedSampler(weights, seed=3)
    first.set_epoch(2), again.set_epoch(2)
    assert list(first) == list(again)  # a resumed stage draws what an uninterrupted one drew
    again.set_epoch(3)
    assert list(first) != list(again)
    ranks = [BalancedSampler(weights, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 50 and list(ranks[0]) != list(ranks[1])


@pytest.mark.parametrize(("weights", "kwargs", "message"), [
    ([], {}, "at least one"), ([0.0, 0.0], {}, "not all zero"), ([1.0, float("nan")], {}, "finite"),
    ([1.0], {"rank": 2, "world_size": 2}, "rank 2"),
])
def test_bad_weights_are_refused(weights: list[float], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BalancedSampler(weights, seed=0, **kwargs)


class Labelled(Dataset):
    def __len__(self) -> int:
        return len(LABELS)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "label": torch.tensor(LABELS[index])}


def _loaders(monkeypatch: pytest.MonkeyPatch, sample_weights: list[float] | None) -> Any:
    captured: dict[str, Any] = {}

    def fake_train(model, loss_fn, train_loader, val_loader, **kwargs):
        captured["loader"] = train_loader
        return None

    monkeypatch.setattr(job_module, "train", fake_train)
    job = TrainingJob(torch.nn.Linear(1, 1), torch.nn.MSELoss(), Labelled(), Labelled(), None,
                      job_module.EngineConfig(epochs=1, lr=1e-3, backbone_lr=1e-3, weight_decay=0.0, seed=5), None, {}, batch_size=10,
                      sample_weights=sample_weights)
    run_training_job(SingleProcess(), job)
    return captured["loader"]


def test_a_job_with_sample_weights_trains_on_the_balanced_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    loader = _loaders(monkeypatch, sampling_weights(LABELS))
    assert isinstance(loader.sampler, BalancedSampler)
    rare = 0
    for epoch in range(10):
        _seed_epoch(loader, 5, epoch)  # what the engine does at each epoch start
        rare += sum(int((batch["label"] == 1).sum()) for batch in loader)
    assert rare / (10 * len(LABELS)) > 0.18  # a shuffle shows the rare class 10 % of the time, exactly
    plain = _loaders(monkeypatch, None)
    assert not isinstance(plain.sampler, BalancedSampler)
    assert sum(int((batch["label"] == 1).sum()) for batch in plain) == 10
