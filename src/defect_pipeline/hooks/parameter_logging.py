"""Typed parameter blocks in the ``kedro run``'s MLflow run as dotted keys (``model.backbone``).

kedro-mlflow logs every node's ``params:`` inputs into the run it opened, flattening dictionaries
into ``<block>.<key>`` names. Since Kedro 1.7 hands a node the pydantic model its argument is
annotated with (``model: ModelParams``), kedro-mlflow sees an object instead and logs its whole
text under the block's name. This hook logs the model's fields under the dotted names a dictionary
would have given, so runs stay comparable key by key in the MLflow UI and ``compare_runs``.
"""

from __future__ import annotations

from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
from pydantic import BaseModel

from defect_pipeline.util import flatten

PREFIX = "params:"


def flattened_blocks(inputs: dict[str, Any]) -> dict[str, str]:
    """``{"params:model": ModelParams(backbone=...)}`` → ``{"model.backbone": "..."}`` (typed blocks only)."""
    params: dict[str, str] = {}
    for name, value in inputs.items():
        if name.startswith(PREFIX) and isinstance(value, BaseModel):
            dumped = flatten(value.model_dump(mode="json"), name[len(PREFIX):])
            params.update({key: str(item)[:MAX_PARAM_VAL_LENGTH] for key, item in dumped.items()})
    return params


class ParameterLoggingHook:
    """Before each node (and before its child run opens), its typed blocks go to the active run."""

    @hook_impl(tryfirst=True)
    def before_node_run(self, inputs: dict[str, Any]) -> None:
        params = flattened_blocks(inputs)
        if params and mlflow.active_run() is not None:
            mlflow.log_params(params)
