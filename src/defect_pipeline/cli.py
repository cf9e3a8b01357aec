"""Project commands added to ``kedro`` (Kedro loads ``<package>.cli.cli``).

``kedro join-training --stage stage1``: on a node other than node 0 of a multi-node training,
run this node's ranks of the stage that node 0 trains through ``kedro run --pipeline=stage1``
(docs/distributed.md). The inputs come from the project's catalog and parameters, exactly as the
stage node gets them; no pipeline runs, so no MLflow run is created and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import click
from kedro.framework.cli.utils import _split_params, env_option
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from defect_pipeline.config import STAGES
from defect_pipeline.pipelines.training.nodes import join_stage_training


@click.group(name="defect_pipeline")
def cli() -> None:
    """defect_pipeline project commands."""


@cli.command("join-training")
@click.option("--stage", required=True, type=click.Choice(sorted(STAGES)), help="the stage node 0 is training")
@env_option
@click.option("--params", type=click.UNPROCESSED, default="", callback=_split_params,
              help="the same --params as node 0's kedro run (key=value,...)")
def join_training(stage: str, env: str | None, params: dict) -> None:
    """Join a multi-node training stage from a node other than node 0 (NODE_RANK > 0)."""
    project = Path.cwd()
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=params) as session:
        context = session.load_context()
        catalog, parameters = context.catalog, context.params
        previous = STAGES[STAGES.index(stage) - 1] if STAGES.index(stage) else None
        join_stage_training(
            catalog.load("manifest"), catalog.load("raw_source"), catalog.load("scan_summary"),
            catalog.load(f"{stage}.checkpoint_dir"), parameters["model"], parameters["augmentation"],
            parameters["data"], parameters["runtime"], parameters["trainer"], parameters[stage],
            catalog.load(f"{previous}.checkpoints") if previous else None, stage_name=stage)
    click.echo(f"{stage}: this node's ranks finished; node 0 holds the checkpoints and the MLflow run")
