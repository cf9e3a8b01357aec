"""Wiring of the ``data`` pipeline (no logic here)."""

from kedro.pipeline import Node, Pipeline

from defect_pipeline.pipelines.data import nodes


def create_pipeline(**kwargs) -> Pipeline:
    """organize → check → validate_masks → split → report, all driven by ``params:data``."""
    return Pipeline(
        [
            Node(nodes.resolve_raw_source, "params:data", "raw_source", name="resolve_raw_source"),
            Node(nodes.organize, ["raw_source", "params:data"], ["manifest_organized", "scan_summary"],
                 name="organize"),
            Node(nodes.check, ["manifest_organized", "raw_source", "scan_summary", "params:data"],
                 "manifest_checked", name="check"),
            Node(nodes.validate_masks, ["manifest_checked", "scan_summary", "params:data"],
                 "manifest_validated", name="validate_masks"),
            Node(nodes.split, ["manifest_validated", "params:data"], ["manifest", "split_summary"], name="split"),
            Node(nodes.report, ["manifest", "raw_source", "scan_summary", "split_summary", "params:data"],
                 ["data_report", "data_report_md", "quarantine"], name="report"),
        ]
    )
