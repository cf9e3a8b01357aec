"""Checkpoint inspection's ETA and GPU-memory figures, from the history a checkpoint carries.

Against the code before the change these fail: the inventory had no ETA or GPU-memory column
(ImportError of remaining_time / peak_gpu_memory, KeyError on the rows)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from defect_pipeline.ml.inspection import format_duration, inventory, peak_gpu_memory, remaining_time, render_markdown

# two epochs of 10 optimizer steps, 30 s and 50 s (training and validation)
HISTORY = [{"epoch": 1, "global_step": 10, "epoch_seconds": 30.0, "peak_gpu_mem_mb": 812.4},
           {"epoch": 2, "global_step": 20, "epoch_seconds": 50.0, "peak_gpu_mem_mb": 1030.9}]


def test_the_eta_is_the_remaining_epochs_times_the_mean_epoch_time() -> None:
    eta = remaining_time(HISTORY, global_step=20, total_steps=50, finished=False)  # 3 epochs x 40 s
    assert eta == {"remaining_steps": 30, "seconds_per_step": 4.0, "eta_s": 120.0, "eta": "2 min 00 s"}
    # written mid-epoch (a stop signal): half an epoch is still missing
    assert remaining_time(HISTORY, global_step=25, total_steps=50, finished=False)["eta_s"] == 100.0


def test_rows_of_validations_every_n_steps_give_the_same_rate() -> None:
    """With val_every_n_steps a row covers the steps since the previous validation (several rows per epoch)."""
    by_step = [{"epoch": 1, "global_step": 4, "epoch_seconds": 16.0}, {"epoch": 1, "global_step": 8,
                                                                       "epoch_seconds": 16.0},
               {"epoch": 2, "global_step": 10, "epoch_seconds": 8.0}]  # the last validation after 2 steps
    assert remaining_time(by_step, global_step=10, total_steps=40, finished=False)["eta_s"] == 120.0


def test_no_eta_for_a_finished_stage_and_an_unknown_one_before_the_first_epoch_ends() -> None:
    assert remaining_time(HISTORY, global_step=50, total_steps=50, finished=True) is None
    assert remaining_time(HISTORY, global_step=20, total_steps=None, finished=False) is None
    early = remaining_time([], global_step=4, total_steps=50, finished=False)
    assert early["remaining_steps"] == 46 and early["eta_s"] is None and early["eta"].startswith("unknown")
    no_times = [{"epoch": 1, "global_step": 5}]  # a history without epoch_seconds
    assert remaining_time(no_times, global_step=5, total_steps=9, finished=False)["eta_s"] is None


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0 s"), (45, "45 s"), (725, "12 min 05 s"),
                                               (3 * 3600 + 250, "3 h 04 min"), (2 * 86400 + 3 * 3600, "2 d 03 h")])
def test_durations_read_at_a_glance(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_peak_gpu_memory_per_device_where_it_was_recorded() -> None:
    assert peak_gpu_memory(HISTORY) == {"cuda:0": 1030.9}
    assert peak_gpu_memory(HISTORY, {"world_size": 2}) == {"cuda:0 (rank 0 of 2)": 1030.9}
    per_device = [{**row, "peak_gpu_mem_mb/cuda:1": 900.0 + row["epoch"]} for row in HISTORY]
    assert peak_gpu_memory(per_device) == {"cuda:0": 1030.9, "cuda:1": 902.0}
    assert peak_gpu_memory([{"epoch": 1, "peak_rss_mb": 500.0}]) == {}  # trained on the CPU
    assert peak_gpu_memory(None) == {}


def test_the_inventory_shows_the_eta_of_an_unfinished_last_checkpoint_only(tmp_path: Path) -> None:
    state = {"model_meta": {"backbone": "resnet18"}, "model": {"w": torch.zeros(1)}, "stage": "stage2", "epoch": 2,
             "history": HISTORY, "global_step": 20, "total_steps": 50, "finished": False,
             "trainer": {"world_size": 1}}
    (tmp_path / "stage2").mkdir()
    torch.save({**state, "kind": "last"}, tmp_path / "stage2/last.pt")
    torch.save({**state, "kind": "best"}, tmp_path / "stage2/best.pt")  # an earlier snapshot, not where it stands
    torch.save({**state, "kind": "last", "finished": True, "history": [{"epoch": 1, "epoch_seconds": 3.0}]},
               tmp_path / "done.pt")
    rows = {row["file"]: row for row in inventory(tmp_path)}
    assert rows["stage2/last.pt"]["eta"] == "2 min 00 s" and rows["stage2/last.pt"]["eta_s"] == 120.0
    assert rows["stage2/best.pt"]["eta"] == "" and rows["done.pt"]["eta"] == ""
    assert rows["stage2/last.pt"]["peak_gpu_mem"] == "cuda:0: 1031 MiB" and rows["done.pt"]["peak_gpu_mem"] == ""
    markdown = render_markdown(list(rows.values()), None, folder=str(tmp_path))
    assert "| eta | peak_gpu_mem |" in markdown and "| 2 min 00 s | cuda:0: 1031 MiB |" in markdown
