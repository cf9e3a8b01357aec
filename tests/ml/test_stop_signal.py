"""A second stop signal stops at once: while the first one's checkpoint is being written (at the optimizer-step
boundary, or at the end of the epoch when the first came during validation), the second raises
``KeyboardInterrupt`` there and then, and the last checkpoint on disk stays the previous whole one.

The SIGTERM row of docs/reliability.md promised this without a test. Checked by mutation: with
``StopRequest._handle`` ignoring a repeated signal (it only records the first), every test here
fails — the write completes, and the run stops with "stopped by signal", not "again".
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from defect_pipeline.ml.checkpoint import CheckpointStore
from defect_pipeline.ml.engine import train
from defect_pipeline.ml.engine.stop_signal import StopRequest
from defect_pipeline.ml.metrics import MultitaskMetrics
from tests.ml.test_engine import LABELS, META, SignalAtBatch, Squares, TinyNet, config, make_loss


def test_the_first_signal_is_recorded_and_the_second_raises_at_once() -> None:
    before = signal.getsignal(signal.SIGTERM)
    sigint_before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under a background job
    with StopRequest(enabled=True) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGTERM  # recorded: training goes on to a clean point
        with pytest.raises(KeyboardInterrupt, match=r"signal 2 again: stopping without a last checkpoint"):
            os.kill(os.getpid(), signal.SIGINT)
            pytest.fail("the second signal did not stop at once")
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.getsignal(signal.SIGINT) is sigint_before


class SignalWhileValidating(Squares):
    """Validation images that send SIGTERM while the ``at_item``-th is drawn."""

    def __init__(self, at_item: int) -> None:
        super().__init__(9, 2)
        self.at_item, self.drawn = at_item, 0

    def __getitem__(self, i: int) -> dict:
        self.drawn += 1
        if self.drawn == self.at_item:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__getitem__(i)


@pytest.mark.parametrize("first_signal", ["mid_epoch", "during_validation"])
def test_a_second_signal_while_the_stop_checkpoint_is_written_stops_at_once_and_keeps_the_previous_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_signal: str) -> None:
    # epoch 1 ends normally; in epoch 2 the first SIGTERM arrives (at its third batch, or while its validation
    # draws its 3rd image: 9 per pass, epoch 1's pass took 9), and the second while that checkpoint is written
    train_set = SignalAtBatch(35, signal.SIGTERM) if first_signal == "mid_epoch" else Squares(24, 1)
    val_set = Squares(9, 2) if first_signal == "mid_epoch" else SignalWhileValidating(9 + 3)
    train_loader = DataLoader(train_set, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    val_loader = DataLoader(val_set, batch_size=4, shuffle=False)
    store = CheckpointStore(str(tmp_path))
    real_save = torch.save
    second_sent = []

    def save_interrupted_by_a_second_signal(obj, handle, *args, **kwargs):
        if obj.get("epoch", 0) >= 2 or "partial_epoch" in obj:  # the checkpoint the first signal asked for
            handle.write(b"the first bytes")
            second_sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_interrupted_by_a_second_signal)
    handler_before = signal.getsignal(signal.SIGTERM)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt, match=r"signal 15 again: stopping without a last checkpoint of this step"):
        train(TinyNet(), make_loss("fixed"), train_loader, val_loader, metrics=MultitaskMetrics(LABELS, "multiclass"),
              config=config(epochs=3), store=store, meta=META)
    assert second_sent == [True]  # it stopped inside the first write it interrupted
    last = store.load("last")
    assert last["epoch"] == 1 and "partial_epoch" not in last  # the previous whole checkpoint: epoch 1's end
    assert not list(tmp_path.glob(".*.tmp"))
    assert signal.getsignal(signal.SIGTERM) is handler_before  # handlers restored on the way out
