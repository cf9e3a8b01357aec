"""Node of the ``inspect_checkpoints`` pipeline (the work is in :mod:`defect_pipeline.ml.inspection`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from defect_pipeline.config import InspectParams
from defect_pipeline.ml.inspection import describe, inventory, render_markdown
from defect_pipeline.util import names_same_place

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


def inspect_checkpoints(folder: Path, params: InspectParams, parameters: dict[str, Any]
                        ) -> tuple[pd.DataFrame, dict[str, Any], str]:
    """The inventory (CSV), the report with the chosen checkpoint's details (JSON) and Markdown.

    ``folder`` is the catalog's ``checkpoint_folder``; ``parameters`` (all of them) are what the chosen
    checkpoint's configuration is compared with.
    """
    if not names_same_place(params.path, folder):  # the catalog made its path absolute
        raise ValueError(f"inspect.path is {params.path} but the catalog's checkpoint_folder is {folder}: give the "
                         "folder with --params inspect.path=<folder> (the catalog reads it from there), or point "
                         "checkpoint_folder at it in conf/local/catalog.yml")
    rows = inventory(folder)
    chosen = _chosen(folder, params, rows)
    current = {name: block.model_dump(mode="json") if isinstance(block, BaseModel) else block
               for name, block in parameters.items()}  # Kedro hands typed blocks as models
    details = describe(chosen, current=current) if chosen is not None else None
    unreadable = [r["file"] for r in rows if r.get("kind") == "unreadable"]
    if unreadable:
        logger.warning("%d checkpoint file(s) could not be read: %s", len(unreadable), ", ".join(unreadable))
    report = {"folder": str(folder), "checkpoints": rows, "details": details}
    return pd.DataFrame(rows), report, render_markdown(rows, details, folder=str(folder))
