"""Benchmark sections describe the run they report from what it recorded, not with fixed sentences.

Each test writes a project's records the way a run writes them (training summaries whose
``initial_weights`` come from :func:`defect_pipeline.ml.stage.initial_weights_record`, histories
with the ``cpu_threads`` the engine records), runs a benchmark command on them (the measurement
itself replaced: it is not what is tested here) and checks the sentence that follows from the
settings. Shown failing first: with the benchmark modules of before this change (the recording
side kept), every section test here fails (7 of 7) — they printed "random initialisation (… the
model hub is unreachable here)", "PyTorch runs with one thread because on these 2-core machines
…" and the ``--threads`` argument instead of what the run used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from defect_pipeline.benchmarks import backbones, distributed, evaluation, test_metrics
from defect_pipeline.config import ModelParams
from defect_pipeline.ml.stage import initial_weights_record

REPORTING = "data/08_reporting"
PRETRAINED = "pretrained backbone weights (model.pretrained: true), the rest randomly initialised"
RANDOM = "random initialisation (model.pretrained: false, no model.checkpoint_path)"
FIXED_TEXT = ("model hub is unreachable", "Random initialisation (the model hub", "2-core machines")


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The benchmark commands set torch's thread count for their measurement; give it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _record_stages(project: Path, model: ModelParams, *, threads: int, first: str = "scratch") -> None:
    """Three chained stages as a run records them: stage1 from ``first``, stage2/3 from the previous best."""
    for number in (1, 2, 3):
        stage = f"stage{number}"
        init_from = first if number == 1 else f"data/06_models/stage{number - 1}/best.pt"
        folder = project / REPORTING / stage
        folder.mkdir(parents=True)
        pd.DataFrame({"epoch": [1, 2], "epoch_seconds": [30.0, 30.0], "cpu_threads": [threads, threads]}).to_csv(
            folder / "history.csv", index=False)
        summary = {"stage": stage, "backbone": "convnext_atto", "decoder": "fpn", "precision": "fp32",
                   "init_from": init_from, "initial_weights": initial_weights_record(init_from, model),
                   "cpu_threads": threads, "best_epoch": 2, "monitor": "val_combined_score", "best_metric": 0.7}
        (folder / "training_summary.json").write_text(json.dumps(summary))


def _section(doc: Path, name: str) -> str:
    return doc.read_text().split(f"<!-- bench:{name}:start -->", 1)[1].split(f"<!-- bench:{name}:end -->")[0]


@pytest.mark.parametrize(("model", "stage1_start"), [
    (ModelParams(pretrained=True), PRETRAINED),
    (ModelParams(checkpoint_path="weights/convnext_atto.safetensors"),
     "backbone weights from weights/convnext_atto.safetensors (model.checkpoint_path), the rest randomly initialised"),
    (ModelParams(), RANDOM),
])
def test_test_metrics_section_follows_each_stage_back_to_its_initial_weights_and_states_the_threads(
        tmp_path: Path, monkeypatch, model: ModelParams, stage1_start: str) -> None:
    project = tmp_path / "project"
    _record_stages(project, model, threads=4)
    (project / "data/03_primary").mkdir(parents=True)
    pd.DataFrame({"split": ["test"]}).to_parquet(project / "data/03_primary/manifest.parquet")
    monkeypatch.setattr(test_metrics, "evaluate_checkpoint", lambda *args, **kwargs: {
        "miou": 0.7, "miou_defects": 0.6, "accuracy": 0.9, "macro_f1": 0.8, "images": 10})
    doc = tmp_path / "benchmarks.md"
    test_metrics.main(["--project", str(project), "--root", "raw", "--doc", str(doc)])

    section = _section(doc, "test_metrics")
    assert (f"initial weights: stage1 from {stage1_start}; stage2 from stage1's best checkpoint; "
            "stage3 from stage2's best checkpoint. Trained with 4 torch threads per process") in section
    assert not any(text in section for text in FIXED_TEXT)


def test_a_stage_that_resumed_or_an_older_summary_says_what_is_not_recorded(tmp_path: Path) -> None:
    from defect_pipeline.benchmarks.recorded import weights_lineage

    project = tmp_path / "project"
    _record_stages(project, ModelParams(), threads=1, first="resume")
    assert weights_lineage(project, "stage2").startswith(
        "stage1 from its own last checkpoint (resumed; where the interrupted run started is not recorded); ")
    summary_path = project / REPORTING / "stage1/training_summary.json"
    older = {k: v for k, v in json.loads(summary_path.read_text()).items() if k != "initial_weights"}
    summary_path.write_text(json.dumps({**older, "init_from": "scratch"}))  # no checkpoint to read it from either
    assert weights_lineage(project, "stage1") == (
        "stage1 from scratch (whether model.pretrained or model.checkpoint_path was set is not recorded)")


@pytest.mark.parametrize(("model", "expected"), [
    (ModelParams(pretrained=True), f"Every backbone started from {PRETRAINED}. "),
    (ModelParams(), f"Every backbone started from {RANDOM}: the ranking says which architecture learns fastest "
                    "from scratch on this data and machine, not which pretrained backbone is best. "),
])
def test_backbones_section_states_how_the_candidates_started_and_their_threads(
        tmp_path: Path, model: ModelParams, expected: str) -> None:
    out = tmp_path / "project" / REPORTING / "compare_backbones"
    out.mkdir(parents=True)
    start = initial_weights_record("scratch", model)["description"]
    pd.DataFrame([{"backbone": name, "status": "ok", "initial_weights": start, "cpu_threads": 3}
                  for name in ("resnet18", "convnext_atto")]).to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text("## Recommendations\n")
    doc = tmp_path / "benchmarks.md"
    backbones.main(["--project", str(tmp_path / "project"), "--doc", str(doc)])

    section = _section(doc, "backbones")
    assert expected + "Training ran with 3 torch threads (`runtime.cpu_threads`)." in section
    assert not any(text in section for text in FIXED_TEXT)


def test_evaluation_section_states_the_models_initial_weights_and_the_threads_it_measured_with(
        tmp_path: Path, monkeypatch) -> None:
    project = tmp_path / "project"
    _record_stages(project, ModelParams(pretrained=True), threads=2)
    (project / "data/03_primary").mkdir(parents=True)
    pd.DataFrame({"split": ["test"], "status": ["accepted"], "image_path": ["a.png"]}).head(0).to_parquet(
        project / "data/03_primary/manifest.parquet")
    (project / "data/01_raw").mkdir(parents=True)
    (project / "data/01_raw/raw_source.json").write_text(json.dumps({"raw_root": "raw"}))
    (project / REPORTING / "export").mkdir(parents=True)
    (project / REPORTING / "export/onnx_export.json").write_text(json.dumps(
        {"max_abs_difference": {"seg_logits": 1e-5, "cls_logits": 1e-6}, "tolerance": 1e-3}))
    (project / REPORTING / "evaluation").mkdir(parents=True)
    metrics = {"miou": 0.7, "combined_score": 0.75}
    (project / REPORTING / "evaluation/summary.json").write_text(json.dumps({
        "split": "test", "samples": 10, "final_metrics_fixed": metrics, "final_metrics_thresholded": metrics,
        "model": {"backbone": "convnext_atto", "decoder": "fpn", "stage": "stage3", "epoch": 2, "image_size": 96},
        "thresholds_tuned": {"pixel": 0.4, "min_area": 0, "per_class": {}, "image": 0.5}}))
    rates = {"torch": 10.0, "onnx": 20.0, "onnx_same_threads": 15.0}
    monkeypatch.setattr(evaluation, "measure", lambda *args, **kwargs: {
        "images": 0, "batch_size": 16, "rounds": 3, "threads": torch.get_num_threads(), "images_per_s": rates,
        "forward_images_per_s": rates, "ratio_onnx_over_torch": 2.0, "forward_ratio": 2.0, "same_threads_ratio": 1.5,
        "same_threads_forward_ratio": 1.5})
    doc = tmp_path / "benchmarks.md"
    evaluation.main(["--project", str(project), "--threads", "2", "--onnx-threads", "2", "--doc", str(doc)])

    section = _section(doc, "evaluation")
    assert (f"(stage3, epoch 2, 96 px); initial weights: stage1 from {PRETRAINED}; stage2 from stage1's best "
            "checkpoint; stage3 from stage2's best checkpoint.") in section
    assert ("PyTorch ran with 2 threads (`--threads`) and onnxruntime with 2 (`--onnx-threads`) on this machine's "
            f"{os.cpu_count()} cores: the same thread count, so the ratio compares the two runtimes alone.") in section
    assert not any(text in section for text in FIXED_TEXT)


def test_distributed_cpu_section_states_the_threads_the_processes_trained_with(tmp_path: Path, monkeypatch) -> None:
    """``--threads`` not given: the section reports the count rank 0's history recorded, not a default phrase."""
    monkeypatch.setattr(distributed, "_measure", lambda processes, args, folder: {
        "processes": processes, "accelerator": "cpu", "precision": "fp32", "batch": 4, "global_batch": 4 * processes,
        "samples_per_s": 10.0 * processes, "peak_gpu_mem_mb": None, "cpu_threads": 3})
    doc = tmp_path / "benchmarks.md"
    distributed.main(["--processes", "1", "2", "--accelerator", "cpu", "--doc", str(doc)])

    section = _section(doc, "distributed_cpu")
    assert ("Each process trained with 3 torch threads (recorded by rank 0; `--threads` not given: torch's default) "
            f"and the processes share this machine's {os.cpu_count()} cores") in section
