"""The training engine on a tiny model: resume equivalence, atomic checkpoints, NaN stop, freezing."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from defect_pipeline.ml.checkpoint import CheckpointError, CheckpointStore, atomic_torch_save, safe_torch_load
from defect_pipeline.ml.device import resolve_precision
from defect_pipeline.ml.engine import EngineConfig, NonFiniteLossError, build_optimizer, train
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.losses import ClassificationLoss, MultitaskLoss, SegmentationLoss
from defect_pipeline.ml.metrics import MultitaskMetrics

LABELS = LabelSpace(("scratch", "spot"), has_good=True)
META = {"stage": "test", "model_meta": {"backbone": "tiny", "decoder": "tiny", "seg_mode": "multiclass",
                                        "image_size": 16},
        "labels": LABELS.to_dict(), "config": {}, "manifest_hash": "x"}


class Out(NamedTuple):
    seg_logits: torch.Tensor
    cls_logits: torch.Tensor


class TinyNet(nn.Module):
    """The MultitaskNet interface in a few hundred parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dropout = nn.Dropout2d(0.0)
        self.seg = nn.Conv2d(8, LABELS.num_seg_classes, 1)
        self.cls = nn.Linear(8, LABELS.num_image_classes)
        self._frozen = False

    def forward(self, x: torch.Tensor) -> Out:
        f = self.dropout(self.backbone(x))
        return Out(self.seg(f), self.cls(f.mean(dim=(2, 3))))

    def set_dropout(self, p: float) -> None:
        self.dropout.p = p

    def freeze_backbone(self, frozen: bool = True) -> None:
        self._frozen = frozen
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> TinyNet:
        super().train(mode)
        if self._frozen:
            self.backbone.eval()
        return self


class Squares(Dataset):
    """Images with a bright square of class 1 or 2 (or nothing: good), and its mask."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            label = i % 3
            image = torch.rand(3, 16, 16, generator=g) * 0.2
            mask = torch.zeros(16, 16, dtype=torch.long)
            if label:
                y, x = torch.randint(0, 10, (2,), generator=g).tolist()
                image[label - 1, y:y + 6, x:x + 6] += 0.8
                mask[y:y + 6, x:x + 6] = label
            self.items.append({"image": image, "mask": mask, "label": torch.tensor(label), "index": i})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.items[i])
        item["image"] = item["image"] + 0.05 * torch.rand(3, 16, 16)  # "augmentation" drawn from the global RNG
        return item


def loaders(seed: int = 0) -> tuple[DataLoader, DataLoader]:
    train_loader = DataLoader(Squares(24, 1), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(Squares(9, 2), batch_size=4, shuffle=False)
    return train_loader, val_loader


def make_loss(weighting: str) -> MultitaskLoss:
    return MultitaskLoss(ClassificationLoss(LABELS.num_image_classes), SegmentationLoss("multiclass"),
                         weighting=weighting)


def config(**overrides) -> EngineConfig:
    base = dict(epochs=4, lr=1e-2, backbone_lr=5e-3, weight_decay=0.01, warmup_epochs=0.5, grad_clip=1.0,
                dropout_rate=0.2, dropout_warmup_step=3, seed=3, progress=False, patience=10)
    return EngineConfig(**{**base, **overrides})


class InterruptAfter:
    """A training logger that kills the run (like Ctrl-C) once epoch ``n`` is checkpointed."""

    def __init__(self, n: int) -> None:
        self.n = n

    def log_steps(self, rows: list[dict]) -> None:
        pass

    def log_epoch(self, epoch: int, step: int, row: dict) -> None:
        if epoch == self.n:
            raise KeyboardInterrupt

    def log_checkpoint(self, kind: str, path: Path) -> None:
        pass


def run(store_path: Path, cfg: EngineConfig, *, loss_weighting: str = "fixed", model: TinyNet | None = None,
        training_logger=None):
    torch.manual_seed(0)
    net = model or TinyNet()
    loss_fn = make_loss(loss_weighting)
    train_loader, val_loader = loaders()
    result = train(net, loss_fn, train_loader, val_loader, metrics=MultitaskMetrics(LABELS, "multiclass"),
                   config=cfg, store=CheckpointStore(str(store_path)), meta=META, training_logger=training_logger)
    return net, result


def test_training_learns_and_writes_self_describing_checkpoints(tmp_path: Path) -> None:
    net, result = run(tmp_path, config(epochs=6, dropout_rate=0.0))
    assert len(result.history) == 6
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    last = safe_torch_load(tmp_path / "last.pt")
    best = safe_torch_load(tmp_path / "best.pt")
    for key in ("model", "optimizer", "scheduler", "scaler", "rng", "epoch", "global_step", "total_steps",
                "config", "labels", "best_metric", "manifest_hash", "history", "model_meta"):
        assert key in last, key
    assert last["finished"] and last["epoch"] == 6 and last["global_step"] == last["total_steps"] == 36
    assert best["epoch"] == result.best_epoch
    assert {"val_combined_score", "lr_head", "dropout", "train_samples_per_s"} <= set(result.history[0])


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path: Path, weighting: str) -> None:
    full_net, full = run(tmp_path / "full", config(epochs=4), loss_weighting=weighting)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "split", config(epochs=4), loss_weighting=weighting, training_logger=InterruptAfter(2))
    resumed_net, resumed = run(tmp_path / "split", config(epochs=4), loss_weighting=weighting)
    assert resumed.resumed_from_epoch == 2 and len(resumed.history) == 4
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5, abs=1e-6)
    for (name, p), q in zip(full_net.state_dict().items(), resumed_net.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


class SignalAtBatch(Squares):
    """Squares that sends this process SIGTERM (or SIGINT) while batch ``at`` is being drawn."""

    def __init__(self, at_item: int, signum: int) -> None:
        super().__init__(24, 1)
        self.at_item, self.signum, self.drawn = at_item, signum, 0

    def __getitem__(self, i: int) -> dict:
        self.drawn += 1
        if self.drawn == self.at_item:
            os.kill(os.getpid(), self.signum)
        return super().__getitem__(i)


# accumulating 2 batches per step, the stop waits for the step boundary after the signalled batch
@pytest.mark.parametrize(("signum", "accumulate", "batches_done", "global_step"),
                         [(signal.SIGTERM, 1, 3, 6 + 3), (signal.SIGINT, 2, 4, 3 + 2)])
def test_a_signal_mid_epoch_saves_last_there_and_the_resume_equals_an_uninterrupted_run(
        tmp_path: Path, signum: int, accumulate: int, batches_done: int, global_step: int) -> None:
    cfg = config(epochs=3, accumulate_grad_batches=accumulate)
    full_net, full = run(tmp_path / "full", cfg, loss_weighting="uncertainty")
    # 6 batches of 4 per epoch: the signal arrives while epoch 2's third batch (items 33-36) is drawn
    torch.manual_seed(0)
    net, loss_fn = TinyNet(), make_loss("uncertainty")
    train_loader = DataLoader(SignalAtBatch(35, signum), batch_size=4, shuffle=True,
                              generator=torch.Generator().manual_seed(0))
    store = CheckpointStore(str(tmp_path / "split"))
    sigint_before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under a background job
    with pytest.raises(KeyboardInterrupt, match=rf"stopped by signal {int(signum)} at epoch 2, batch {batches_done} of 6"):
        train(net, loss_fn, train_loader, loaders()[1], metrics=MultitaskMetrics(LABELS, "multiclass"), config=cfg,
              store=store, meta=META)
    assert signal.getsignal(signal.SIGINT) is sigint_before  # handlers restored
    last = store.load("last")  # written at the signal: epoch 1 done, and epoch 2 up to a step boundary
    assert last["epoch"] == 1 and last["partial_epoch"]["epoch"] == 2
    assert last["partial_epoch"]["batches_done"] == batches_done and last["global_step"] == global_step
    resumed_net, resumed = run(tmp_path / "split", cfg, loss_weighting="uncertainty")
    assert resumed.resumed_from_epoch == 1 and [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert [s["step"] for s in resumed.steps] == [s["step"] for s in full.steps]
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-7)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6, abs=1e-7)
    for (name, p), q in zip(full_net.state_dict().items(), resumed_net.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_finished_stage_says_so_and_does_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run(tmp_path, config(epochs=2))
    before = (tmp_path / "last.pt").stat().st_mtime_ns
    _, again = run(tmp_path, config(epochs=2))
    assert again.already_finished and "already finished" in caplog.text
    assert (tmp_path / "last.pt").stat().st_mtime_ns == before


def test_crash_during_checkpoint_write_leaves_the_previous_file_intact(tmp_path: Path, monkeypatch) -> None:
    run(tmp_path, config(epochs=1))
    good = (tmp_path / "last.pt").read_bytes()

    def exploding_save(obj, handle, *args, **kwargs):
        handle.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"x": torch.ones(3)}, tmp_path / "last.pt")
    assert (tmp_path / "last.pt").read_bytes() == good
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def _fingerprint(path: Path) -> tuple[str, int]:
    """A file's content hash and modification time."""
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


class NanImages(Squares):
    """Squares whose images are all NaN: every batch's loss is non-finite."""

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        item["image"] = torch.full_like(item["image"], float("nan"))
        return item


def test_non_finite_loss_stops_at_once_and_keeps_best_and_last(tmp_path: Path) -> None:
    """A resumed run whose first batch has a NaN loss leaves its own folder's ``best.pt`` and ``last.pt``
    byte-identical (same mtime) and its weights where ``last.pt`` left them.

    The earlier version compared ``tmp_path/best.pt`` while the NaN run wrote to ``tmp_path/nan``, so
    it could not fail; this one fails against an engine that saves ``last`` before raising or steps
    the optimizer on the NaN batch (both checked by hand with such mutants).
    """
    with pytest.raises(KeyboardInterrupt):  # epoch 1 of 2 done and checkpointed: best.pt and last.pt exist
        run(tmp_path, config(epochs=2), training_logger=InterruptAfter(1))
    files = {kind: (tmp_path / f"{kind}.pt") for kind in ("best", "last")}
    before = {kind: _fingerprint(path) for kind, path in files.items()}
    saved_weights = safe_torch_load(files["last"])["model"]
    torch.manual_seed(0)
    net = TinyNet()
    nan_loader = DataLoader(NanImages(24, 1), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NonFiniteLossError, match=r"step 6, epoch 2, batch 0 .*weights were not updated"):
        train(net, make_loss("fixed"), nan_loader, loaders()[1], metrics=MultitaskMetrics(LABELS, "multiclass"),
              config=config(epochs=2), store=CheckpointStore(str(tmp_path)), meta=META)
    assert {kind: _fingerprint(path) for kind, path in files.items()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temp file left either
    for name, value in net.named_parameters():  # resumed from last.pt, then not stepped on the NaN batch
        torch.testing.assert_close(value, saved_weights[name], rtol=0, atol=0, msg=name)


def test_each_epoch_records_the_torch_threads_it_trained_with(tmp_path: Path) -> None:
    """The history's ``cpu_threads`` is what torch used (the benchmark sections report it), not a setting."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _, result = run(tmp_path, config(epochs=2))
    finally:
        torch.set_num_threads(threads)
    assert [row["cpu_threads"] for row in result.history] == [2, 2]


def test_frozen_backbone_stays_unchanged(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinyNet()
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    head_before = net.cls.weight.clone()
    run(tmp_path, config(epochs=2, freeze_backbone=True), model=net)
    for key, value in net.backbone.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)  # weights and BN running stats
    assert not torch.equal(net.cls.weight, head_before)


def test_optimizer_groups_skip_decay_on_norms_and_biases() -> None:
    net = TinyNet()
    loss_fn = make_loss("uncertainty")
    opt = build_optimizer(net, loss_fn, lr=1e-3, backbone_lr=1e-4, weight_decay=0.05, freeze_backbone=False)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["backbone"]["lr"] == 1e-4 and groups["head"]["lr"] == 1e-3
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0 and groups["backbone"]["weight_decay"] == 0.05
    assert all(p.ndim > 1 for p in groups["head"]["params"])
    learned = {id(p) for p in loss_fn.parameters()}
    assert learned and learned <= {id(p) for p in groups["head_no_decay"]["params"]}
    frozen = build_optimizer(net, loss_fn, lr=1e-3, backbone_lr=1e-4, weight_decay=0.05, freeze_backbone=True)
    assert not any(g["name"].startswith("backbone") for g in frozen.param_groups)


def test_precision_is_fp32_on_a_cpu_without_native_bf16(monkeypatch) -> None:
    monkeypatch.setattr("defect_pipeline.ml.device.cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr("defect_pipeline.ml.device.cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")


def test_unsafe_checkpoint_is_refused_and_never_runs(tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="refused"):
        safe_torch_load(tmp_path / "evil.pt")
    assert not marker.exists()


class StepRecorder:
    """A training logger that keeps what it receives, including the per-step rows."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.epochs: list[int] = []

    def log_steps(self, rows: list[dict]) -> None:
        self.steps.extend(rows)

    def log_epoch(self, epoch: int, step: int, row: dict) -> None:
        self.epochs.append(epoch)

    def log_checkpoint(self, kind: str, path: Path) -> None:
        pass


def test_every_optimizer_step_is_recorded_with_its_dropout_and_lr(tmp_path: Path) -> None:
    recorder = StepRecorder()
    _, result = run(tmp_path, config(epochs=2, accumulate_grad_batches=2), training_logger=recorder)
    # 24 samples / batch 4 = 6 batches, 2 per optimizer step: 3 steps per epoch
    assert [r["step"] for r in result.steps] == [1, 2, 3, 4, 5, 6] == [r["step"] for r in recorder.steps]
    assert [r["epoch"] for r in result.steps] == [1, 1, 1, 2, 2, 2]
    assert [r["dropout"] for r in result.steps] == [0.0, 0.0, 0.0, 0.2, 0.2, 0.2]  # warmup_step 3
    assert all(r["lr_head"] > 0 and r["lr_backbone"] > 0 and r["train_loss"] > 0 for r in result.steps)
    assert result.steps[0]["lr_head"] < result.steps[1]["lr_head"]  # linear warmup over half an epoch
    # the steps survive an interruption: a resumed run reports all of them
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "split", config(epochs=2, accumulate_grad_batches=2), training_logger=InterruptAfter(1))
    _, resumed = run(tmp_path / "split", config(epochs=2, accumulate_grad_batches=2))
    assert [r["step"] for r in resumed.steps] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(result.steps, resumed.steps, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
