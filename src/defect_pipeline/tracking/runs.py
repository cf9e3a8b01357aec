"""Child runs of training stages: readable parameters, per-epoch metrics, reproducibility tags.

Every ``kedro run`` is one MLflow run (opened by kedro-mlflow); each training stage that runs in
it logs into a nested child run named after the stage. This module holds what goes into those
runs; :class:`MlflowTrainingLogger` is the engine's :class:`~defect_pipeline.ml.engine.TrainingLogger`
that sends each epoch's row to the active run with the epoch as the step.
"""

from __future__ import annotations

import logging
import math
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import mlflow

from defect_pipeline.util import describe_machine, flatten

if TYPE_CHECKING:
    from defect_pipeline.ml.val_preview import FigureFolder

logger = logging.getLogger(__name__)

TAG_PREFIX = "defect_pipeline."
STAGE_TAG = TAG_PREFIX + "stage"  # set on every stage child run: compare_runs finds them by it
KIND_TAG = TAG_PREFIX + "kind"
# Kedro nodes carrying this tag run inside their own nested MLflow run, named after their namespace
# (or the node name); a second tag kind_tag(kind) says what the run is (default: a training stage)
TRACKED_STAGE_TAG = "mlflow_child_run"
KIND_TAG_PREFIX = "mlflow_kind."
SOURCE_RUN_TAG = TAG_PREFIX + "source_run_id"  # evaluation/thresholds runs: the run that trained the model
# thresholds runs: "tuned", or "kept_fixed:<part>_<reason>,..." when a tuned part would have made the model worse
THRESHOLDS_STATUS_TAG = TAG_PREFIX + "thresholds_status"
MACHINE_TAG = TAG_PREFIX + "machine"  # CPU, cores, memory, Python, OS of the machine the run ran on


def kind_tag(kind: str) -> str:
    """The Kedro node tag that names the kind of child run (``thresholds``, ``evaluation``, ...)."""
    return KIND_TAG_PREFIX + kind


def kind_of(node_tags: set[str] | frozenset[str]) -> str:
    return next((t[len(KIND_TAG_PREFIX):] for t in node_tags if t.startswith(KIND_TAG_PREFIX)), "stage")


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking server cannot be reached (raised before any node runs)."""


def git_info(path: str | Path) -> dict[str, str]:
    """``git.commit`` and ``git.dirty`` of the checkout holding ``path`` (``unknown`` outside git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git.commit": "unknown (not a git checkout)", "git.dirty": "unknown"}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit, "git.dirty": "unknown" if status is None else str(bool(status)).lower()}


def reproducibility_tags(*, project_path: str | Path, env: str | None, pipeline: str,
                         argv: list[str] | None = None) -> dict[str, str]:
    """Tags that make a run reproducible: git commit and dirty flag, kedro env, pipeline, command line, and
    the machine it ran on (benchmark sections report it per run)."""
    package_root = Path(__file__).resolve().parents[1]
    tags = git_info(project_path)
    if tags["git.commit"].startswith("unknown"):  # a project copy outside git: use the installed package's checkout
        tags = git_info(package_root)
    return {
        **tags,
        "kedro.env": env or "local (default)",
        "kedro.pipeline": pipeline,
        "command_line": " ".join(argv if argv is not None else sys.argv),
        MACHINE_TAG: describe_machine(),
    }


STAGE_PARAM_NAMES = {"lr": "lr_head", "backbone_lr": "lr_backbone"}


def stage_params(model: dict[str, Any], stage: dict[str, Any], runtime: dict[str, Any] | None = None,
                 augmentation: dict[str, Any] | None = None, trainer: dict[str, Any] | None = None) -> dict[str, Any]:
    """The readable parameter set of a stage child run.

    Model keys as they are (``backbone``, ``decoder``, ``image_size``, ``crop.scale`` ...), stage keys flattened
    (``epochs``, ``lr_head``, ``lr_backbone``, ``loss.weighting``, ``dropout.rate`` ...), the
    augmentation recipe as the list of its transform names, ``runtime.*`` and ``trainer.*`` as asked for.
    """
    params: dict[str, Any] = flatten(model)  # nested model keys (crop.scale ...) as dotted names
    for key, value in flatten(stage).items():
        params[STAGE_PARAM_NAMES.get(key, key)] = value
    if params.get("lr_backbone") is None:
        params["lr_backbone"] = params.get("lr_head")
    if runtime:
        params.update({f"runtime.{k}": v for k, v in flatten(runtime).items()})
    if trainer:
        params.update({f"trainer.{k}": v for k, v in flatten(trainer).items()})
    if augmentation is not None:
        recipe = augmentation.get("recipe") or []
        params["augmentation"] = ",".join(str(entry.get("name")) for entry in recipe) or "none"
    return {k: ("null" if v is None else v) for k, v in params.items()}


def log_params(params: dict[str, Any], max_length: int = 6000) -> None:
    """Log parameters to the active run in batches, truncating values MLflow would refuse."""
    items = [(k, str(v)[:max_length]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start:start + 100]))


def numeric_metrics(row: dict[str, Any], skip: tuple[str, ...] = ("epoch",)) -> dict[str, float]:
    """The finite numbers of a history row (MLflow refuses strings; NaN carries no information)."""
    out = {}
    for key, value in row.items():
        if key in skip or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


class MlflowTrainingLogger:
    """Per-epoch metrics (step = epoch) and per-step ``step/*`` metrics (step = optimizer step) into the
    MLflow run active when the logger is created; a no-op without one.

    ``rows_by_step``: the history rows are validations every ``val_every_n_steps`` optimizer steps
    (several per epoch), so their metrics are logged at step = optimizer step instead of the epoch.
    Figures (the validation previews) are written into ``figures`` (a
    :class:`~defect_pipeline.ml.val_preview.FigureFolder` from the catalog) and logged as artifacts
    under ``artifact_path``; without a folder they go to MLflow only.

    The run is addressed by id and tracking URI, not through MLflow's per-process active run, so
    the logger keeps working in a training worker process (it is picklable: strings and the folder).
    """

    def __init__(self, *, rows_by_step: bool = False, figures: FigureFolder | None = None,
                 artifact_path: str | None = None) -> None:
        self.rows_by_step = rows_by_step
        active = mlflow.active_run()
        self.run_id: str | None = active.info.run_id if active is not None else None
        self.tracking_uri = mlflow.get_tracking_uri()
        self.figures, self.artifact_path = figures, artifact_path
        self._cached_client: mlflow.MlflowClient | None = None

    def __getstate__(self) -> dict[str, Any]:  # the client stays behind: a worker process makes its own
        return {**self.__dict__, "_cached_client": None}

    def _client(self) -> mlflow.MlflowClient:
        if self._cached_client is None:
            self._cached_client = mlflow.MlflowClient(self.tracking_uri)
        return self._cached_client

    def _log(self, metrics: list[Any]) -> None:
        for start in range(0, len(metrics), 1000):
            self._client().log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def log_epoch(self, epoch: int, step: int, row: dict[str, float]) -> None:
        logger.info("epoch %d (step %d): %s", epoch, step,
                    ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))
        if self.run_id is not None:
            from mlflow.entities import Metric

            now, x = int(time.time() * 1000), int(step if self.rows_by_step else epoch)
            self._log([Metric(key, value, now, x) for key, value in numeric_metrics(row).items()])

    def log_steps(self, rows: list[dict[str, Any]]) -> None:
        """Per-optimizer-step ``step/<name>`` metrics (dropout, LR per group, loss), step = global step."""
        if self.run_id is None or not rows:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._log([Metric(f"step/{key}", value, now, int(row["step"]))
                   for row in rows for key, value in numeric_metrics(row, skip=("step", "epoch")).items()])

    def log_checkpoint(self, kind: str, path: Path) -> None:
        logger.debug("checkpoint %s -> %s", kind, path)
        if self.run_id is not None:
            self._client().set_tag(self.run_id, f"{TAG_PREFIX}checkpoint.{kind}", str(path))

    def log_figure(self, name: str, figure: Any) -> None:
        """``name`` into the figure folder (if any) and into the run's artifacts under ``artifact_path``."""
        path = self.figures.save(name, figure) if self.figures is not None else None
        if path is not None:
            logger.info("%s written", path)
        if self.run_id is None:
            return
        if path is not None:
            self._client().log_artifact(self.run_id, str(path), artifact_path=self.artifact_path)
        else:
            self._client().log_figure(self.run_id, figure, "/".join(p for p in (self.artifact_path, name) if p))


def log_stage_result(summary: dict[str, Any]) -> None:
    """Best and final figures of a finished stage into the active run.

    ``best_<metric>`` for each entry of ``summary["best_values"]`` (the best value over the
    epochs), ``best_epoch`` (epoch of the monitored metric's best), step counts and
    ``parameters_<total|trainable|frozen|backbone|head>``. The final value of every per-epoch
    metric is its latest value in MLflow (what the UI's run table shows). Tags ``decoder``,
    ``device``, ``precision`` and ``input_mode`` (``resize``/``crop``) record what ``auto``
    resolved to, and so do the ``auto.*`` tags of :func:`auto_tags`; ``world_size`` and
    ``global_batch_size`` (samples per optimizer step) how many processes trained together.
    """
    if mlflow.active_run() is None:
        return
    metrics: dict[str, float] = {f"best_{k}": float(v) for k, v in (summary.get("best_values") or {}).items()}
    if summary.get("best_epoch") is not None:
        metrics["best_epoch"] = float(summary["best_epoch"])
    for key in ("epochs_run", "global_step", "total_steps", "best_step"):  # best_step: the best checkpoint's
        if summary.get(key) is not None:
            metrics[key] = float(summary[key])
    for key, value in (summary.get("parameters") or {}).items():
        metrics[f"parameters_{key}"] = float(value)
    trainer = summary.get("trainer") or {}
    for key in ("world_size", "global_batch_size"):  # how many processes trained, samples per optimizer step
        if trainer.get(key) is not None:
            metrics[key] = float(trainer[key])
    mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
    tags = {f"{TAG_PREFIX}stopped_early": str(summary.get("stopped_early")).lower(),
            f"{TAG_PREFIX}already_finished": str(summary.get("already_finished")).lower()}
    # what "auto" resolved to (the parameters keep what was asked for)
    tags.update({key: str(summary[key]) for key in ("decoder", "device", "precision", "input_mode")
                 if summary.get(key)})
    tags.update(auto_tags(summary))
    mlflow.set_tags(tags)


def auto_tags(summary: dict[str, Any]) -> dict[str, str]:
    """``auto.<key>`` (the value) and ``auto.<key>.reason`` of each setting the stage resolved from ``auto``
    (``summary["auto"]``, :mod:`defect_pipeline.ml.plan`); settings given explicitly get no tag."""
    resolved = (summary.get("auto") or {}).get("resolved") or {}
    tags: dict[str, str] = {}
    for item in resolved.values():
        if item.get("auto"):
            tags[item["tag"]] = str(item["value"])
            tags[f"{item['tag']}.reason"] = str(item["reason"])[:5000]
    return tags


def check_tracking_uri(uri: str, *, timeout: float = 3.0) -> None:
    """Fail within ``timeout`` seconds when an ``http(s)`` tracking server cannot be reached.

    MLflow's own client retries a dead server with back-off for minutes; this check opens one TCP
    connection first. A ``sqlite:///`` URI must point into an existing, writable folder.
    """
    parsed = urlparse(uri)
    hint = ("set MLFLOW_TRACKING_URI (or server.mlflow_tracking_uri in conf/<env>/mlflow.yml) to a running server, "
            "or unset it to track into sqlite:///mlflow.db at the project root")
    if parsed.scheme in ("http", "https"):
        host = parsed.hostname or "localhost"
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        started = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as error:
            raise TrackingUnavailableError(
                f"MLflow tracking server {uri} is unreachable ({type(error).__name__}: {error}, after "
                f"{time.monotonic() - started:.1f} s); nothing was run. Start the server, or {hint}."
            ) from None
    elif parsed.scheme == "sqlite":
        database = uri[len("sqlite:///"):]
        if database and database != ":memory:":
            folder = Path(database).expanduser().resolve().parent
            if not folder.is_dir():
                raise TrackingUnavailableError(
                    f"MLflow tracking database {uri}: folder {folder} does not exist; create it, or {hint}.")
