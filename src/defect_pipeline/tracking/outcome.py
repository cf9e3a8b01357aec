"""What a node says of its own outcome, so that its MLflow child run ends with the right status.

A node that can finish without raising and still not have succeeded (a ``compare_backbones``
candidate that was skipped or failed) returns a :class:`NodeOutcome` as one of its outputs. The
child-run hook ends the run FAILED for such an outcome and FINISHED otherwise, and sets the
outcome's tags on the run; it never reads a node's other outputs to guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal["ok", "skipped", "failed"]


@dataclass(frozen=True)
class NodeOutcome:
    """A node's own verdict: ``ok``, or ``skipped`` / ``failed`` with the error text.

    ``reason`` is an optional short code for the MLflow tag (e.g. ``skipped_memory``); the
    status is used when it is absent. ``tags`` are set on the child run whatever the status
    (e.g. ``defect_pipeline.thresholds_status``: which thresholds the node kept fixed).
    """

    status: Status = "ok"
    error: str | None = None
    reason: str | None = None
    tags: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.status not in ("ok", "skipped", "failed"):
            raise ValueError(f"status must be ok, skipped or failed, got {self.status!r}")

    @property
    def succeeded(self) -> bool:
        return self.status == "ok"

    @property
    def tag(self) -> str:
        """The value of the run's ``defect_pipeline.comparison_status`` tag."""
        return self.reason or self.status

    @property
    def mlflow_status(self) -> str:
        return "FINISHED" if self.succeeded else "FAILED"
