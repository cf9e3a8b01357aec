"""Node of the ``inspect_checkpoints`` pipeline (the work is in :mod:`defect_pipeline.ml.inspection`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from defect_pipeline.config import InspectParams
from defect_pipeline.ml.inspection import describe, inventory, render_markdown

logger = logging.getLogger(__name__)


def _chosen(folder: Path, cfg: InspectParams, rows: list[dict[str, Any]]) -> Path | None:
    if cfg.checkpoint is not None:
        path = Path(cfg.checkpoint)
        path = path if path.is_absolute() or path.exists() else folder / path
        if not path.is_file():
            raise FileNotFoundError(f"inspect.checkpoint {cfg.checkpoint} is not a file (looked in {folder} too); "
                                    f"listed files: {[r['file'] for r in rows]}")
        return path
    readable = [folder / r["file"] for r in rows if r.get("kind") == "last"]
    return max(readable, key=lambda p: p.stat().st_mtime) if readable else None


def inspect_checkpoints(params: dict[str, Any], parameters: dict[str, Any]
                        ) -> tuple[pd.DataFrame, dict[str, Any], str]:
    """The inventory (CSV), the report with the chosen checkpoint's details (JSON) and Markdown."""
    cfg = InspectParams.model_validate(params)
    folder = Path(cfg.path)
    rows = inventory(folder)
    chosen = _chosen(folder, cfg, rows)
    details = describe(chosen, current=parameters) if chosen is not None else None
    unreadable = [r["file"] for r in rows if r.get("kind") == "unreadable"]
    if unreadable:
        logger.warning("%d checkpoint file(s) could not be read: %s", len(unreadable), ", ".join(unreadable))
    report = {"folder": str(folder), "checkpoints": rows, "details": details}
    return pd.DataFrame(rows), report, render_markdown(rows, details, folder=str(folder))
