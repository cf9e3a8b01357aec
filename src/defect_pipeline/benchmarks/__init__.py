"""Benchmarks that write their results into ``docs/benchmarks.md``.

Each benchmark is a command (``python -m defect_pipeline.benchmarks <name> ...``) that measures
in one run everything it compares, describes the machine, and replaces its own section of
``docs/benchmarks.md`` (between ``<!-- bench:<name>:start -->`` and ``<!-- bench:<name>:end -->``
markers), leaving the other sections alone.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from defect_pipeline.util import describe_machine

__all__ = ["describe_machine", "project_report_arguments", "write_section"]


def write_section(doc: Path, name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of the benchmarks document, atomically."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(doc)


def project_report_arguments(name: str, argv: list[str] | None, *, title: str, command: str,
                             recipe: str) -> argparse.Namespace:
    """Arguments of the commands that copy a pipeline's result table from a project into a section."""
    parser = argparse.ArgumentParser(prog=f"python -m defect_pipeline.benchmarks {name}")
    parser.add_argument("--project", default=".", help="project folder whose data root holds the run's outputs")
    parser.add_argument("--data-root", default="data", help="the run's data root below --project: data (default environment), data/neu_seg (--env neu_seg)")
    parser.add_argument("--title", default=title)
    parser.add_argument("--command", default=command, help="the command that produced the outputs")
    parser.add_argument("--recipe", default=recipe, help="the parameters file of that run")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    return parser.parse_args(argv)
