"""Shared fixtures: an isolated copy of the Kedro project, and the NEU-Seg location.

Pipeline tests never write into the repository: :func:`kedro_project` copies ``conf/`` and
``pyproject.toml`` into a temporary folder, points MLflow at a sqlite file there and changes
into it, so ``data/`` outputs and ``mlflow.db`` land in ``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# tiny models on a 2-core machine: one intra-op thread is many times faster than two (set before
# torch is imported; see docs/training.md)
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]

# parameters of a tiny end-to-end run: 30 demo images, resnet18 at 64 px, 2 batches per epoch
TINY_STAGE = {"epochs": 1, "batch_size": 8, "max_batches_per_epoch": 2, "warmup_epochs": 0.0}
TINY = {
    "data": {"demo": {"images_per_class": 6, "good_images": 6, "image_size": 64}, "check": {"num_workers": 0}},
    "model": {"backbone": "resnet18", "image_size": 64, "decoder_channels": 32},
    "augmentation": {"preview_samples": 2, "preview_views": 2},
    "stage1": TINY_STAGE, "stage2": TINY_STAGE, "stage3": TINY_STAGE,
}
# the data and model part of TINY as `kedro run --params` items (for tests that start `kedro run` subprocesses)
TINY_CLI_PARAMS = [
    "data.demo.images_per_class=6", "data.demo.good_images=6", "data.check.num_workers=0",
    "model.backbone=resnet18", "model.image_size=64", "model.decoder_channels=32",
]
NEU_SEG_ROOT = (REPO_ROOT.parent / "shared" / "datasets" / "neu_seg").resolve()


def make_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Copy conf + pyproject into ``project``, change into it and give it its own MLflow database."""
    project.mkdir()
    shutil.copytree(REPO_ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("credentials*"))
    (project / "conf" / "local").mkdir(exist_ok=True)
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(REPO_ROOT / name, project / name)
    (project / "src").mkdir()  # kedro wants it; the package itself is installed (editable)
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    return project


# the shared tiny default run: stage1 runs two epochs so that metric histories have two steps
TINY_DEFAULT_RUN = {**TINY, "stage1": {**TINY_STAGE, "epochs": 2}}


@pytest.fixture(scope="session")
def tiny_default_run(tmp_path_factory: pytest.TempPathFactory):
    """One tiny default `kedro run` (data → … → stage3 → thresholds → evaluate → inference on the test
    split), shared by the tests that only read its outputs and MLflow runs. Tests that run more
    pipelines copy it (:func:`copy_project`)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        project = make_project(tmp_path_factory.mktemp("tiny_default") / "project", monkeypatch)
        run_kedro(project, params=TINY_DEFAULT_RUN)
    yield project


def copy_project(source: Path, target: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A full copy of a project (data, models, MLflow database and artifacts), made current."""
    shutil.copytree(source, target, symlinks=True)
    monkeypatch.chdir(target)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{target / 'mlflow.db'}")
    return target


@pytest.fixture
def kedro_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throw-away copy of the project (conf + pyproject) with its own MLflow database."""
    return make_project(tmp_path / "project", monkeypatch)


def run_kedro(project: Path, pipeline: str | None = None, *, env: str | None = None,
              params: dict | None = None, pipelines: list[str] | None = None) -> dict:
    """Run a pipeline of the project in-process with a fresh KedroSession (``pipelines``: several together,
    as ``kedro run --pipelines=a,b``)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    import mlflow

    bootstrap_project(project)
    try:
        with KedroSession.create(project_path=project, env=env, runtime_params=params or {}) as session:
            return session.run(pipeline_name=pipeline, pipeline_names=pipelines)
    finally:
        # one process normally runs one session; in tests, leave no MLflow run active for the next
        while mlflow.active_run() is not None:
            mlflow.end_run()


@pytest.fixture
def neu_seg_root() -> Path:
    """The real NEU-Seg dataset; tests using it skip cleanly when it is absent."""
    if not (NEU_SEG_ROOT / "img_dir").is_dir():
        pytest.skip(f"NEU-Seg not found at {NEU_SEG_ROOT}")
    return NEU_SEG_ROOT


def prepared_demo(root: Path, *, images_per_class: int, good_images: int, image_size: int):
    """A demo dataset written to ``root`` and taken through the data nodes (organize → check → masks → split),
    in-process: ``(data params, raw_source, manifest, scan_summary)``."""
    from defect_pipeline.config import DataParams
    from defect_pipeline.data.demo import DemoSpec, write_demo_dataset
    from defect_pipeline.pipelines.data import nodes

    write_demo_dataset(root, DemoSpec(images_per_class=images_per_class, good_images=good_images,
                                      image_size=image_size))
    params = DataParams.model_validate({"raw_root": str(root), "check": {"num_workers": 0, "progress": False}})
    raw_source = {"source": "user", "raw_root": str(root)}
    manifest, scan_summary = nodes.organize(raw_source, params)
    manifest = nodes.check(manifest, raw_source, scan_summary, params)
    manifest = nodes.validate_masks(manifest, scan_summary, params)
    manifest, _ = nodes.split(manifest, params)
    return params, raw_source, manifest, scan_summary


def make_tiny_package(labels, *, seg_mode: str = "multiclass", thresholds=None, seed: int = 0,
                      backbone: str = "resnet18", image_size: int = 64, input_mode: str | None = None):
    """A randomly initialised model package (resnet18 + FPN at 64 px by default; no training), for prediction tests.

    ``input_mode``: written into the model meta when given (``tile``: trained on crops, predicted by sliding window).
    """
    import torch

    from defect_pipeline.ml.models import create_model
    from defect_pipeline.ml.package import ModelPackage

    torch.manual_seed(seed)
    with pytest.warns(UserWarning, match="random initialisation"):
        net = create_model(backbone, num_image_classes=labels.num_image_classes,
                           num_seg_classes=labels.num_seg_classes, seg_mode=seg_mode, decoder_channels=32,
                           image_size=image_size)
    state = {"model": net.state_dict(), "labels": labels.to_dict(), "stage": "stage1", "epoch": 3,
             "model_meta": {"backbone": backbone, "decoder": net.decoder_name, "seg_mode": seg_mode,
                            "image_size": image_size, **({"input_mode": input_mode} if input_mode else {})},
             "config": {"model": {"decoder_channels": 32}}, "manifest_hash": "abc"}
    return ModelPackage.from_checkpoint(state, source="best.pt", thresholds=thresholds)


class CodeRunningPickle:
    """Unpickling this runs ``touch marker``: the side effect an untrusted checkpoint must never get."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def wait_for_checkpoint_epochs(project: Path, process: subprocess.Popen, epochs: int, timeout: float = 240) -> None:
    """Until stage1's ``last.pt`` was written ``epochs`` times by a ``kedro run`` subprocess."""
    last = project / "data/06_models/stage1/last.pt"
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"training ended before it was interrupted: {process.stderr.read()[-2000:]}")
        if last.exists():
            modified = last.stat().st_mtime_ns
            if modified != seen:
                seen, epochs = modified, epochs - 1
                if epochs <= 0:
                    return
        time.sleep(0.05)
    pytest.fail("no checkpoint appeared in time")


def start_kedro(project: Path, pipeline: str, params: list[str], *, command: str = "run") -> subprocess.Popen:
    """``kedro run --pipeline=<pipeline> --params=...`` as a subprocess of the project (no network, own MLflow db).

    ``command="join-training"``: ``kedro join-training --stage=<pipeline>`` instead.
    """
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "OMP_NUM_THREADS": "1",
           "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    target = f"--pipeline={pipeline}" if command == "run" else f"--stage={pipeline}"
    return subprocess.Popen([sys.executable, "-m", "kedro", command, target, f"--params={','.join(params)}"],
                            cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def pipeline_runs(project: Path, pipeline: str) -> list:
    """The project's MLflow runs (parents and children) of ``kedro run --pipeline=<pipeline>``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("defect_pipeline")
    return [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("kedro.pipeline") == pipeline]
