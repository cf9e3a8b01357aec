"""docs/benchmarks.md sections: replaced in place, others kept, written atomically, and what a generated one holds."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pandas as pd

from defect_pipeline.benchmarks import backbones, describe_machine, write_section


def test_sections_are_replaced_not_duplicated(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    write_section(doc, "a", "first A")
    write_section(doc, "b", "only B")
    write_section(doc, "a", "second A")
    text = doc.read_text()
    assert text.count("<!-- bench:a:start -->") == 1 and "second A" in text and "first A" not in text
    assert "only B" in text and text.index("second A") < text.index("only B")
    assert not list(tmp_path.glob("*.tmp"))


def test_machine_description_is_one_line_with_this_machines_cores_memory_and_python(monkeypatch) -> None:
    """The old check only looked for the word "cores"; a fixed "2 cores" (mutant) passed it and fails this."""
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    line = describe_machine()
    assert "\n" not in line and ", 7 cores, " in line and " GiB RAM; " in line
    assert line.endswith(f"; Python {platform.python_version()}, {platform.system()} {platform.release()}")


def test_a_generated_section_holds_its_command_machine_line_and_table_rows(tmp_path: Path) -> None:
    """The ``backbones`` section of a recorded comparison, read back from the document: heading, the
    commands that produced it, the machine line with the core count, every table row and the
    recommendations, between its markers."""
    out = tmp_path / "project/data/08_reporting/compare_backbones"
    out.mkdir(parents=True)
    pd.DataFrame([
        {"slot": 1, "backbone": "resnet18", "status": "ok", "parameters_m": 11.4, "epochs_run": 3,
         "training_seconds": 61.0, "best_val_loss": 0.512, "best_val_combined_score": 0.634, "cpu_threads": 2,
         "initial_weights": "random initialisation (model.pretrained: false, no model.checkpoint_path)"},
        {"slot": 2, "backbone": "convnext_atto", "status": "failed_memory", "error": "MemoryError"},
    ]).to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text("# Backbone comparison\n\n## Recommendations\n\n| criterion | backbone |\n")
    doc = tmp_path / "benchmarks.md"
    backbones.main(["--project", str(tmp_path / "project"), "--title", "Tiny", "--doc", str(doc)])

    section = doc.read_text().split("<!-- bench:backbones:start -->\n", 1)[1].split("<!-- bench:backbones:end -->")[0]
    lines = section.splitlines()
    assert lines[0] == "## Tiny: backbone comparison at an equal CPU budget"
    assert lines[2].startswith(
        "Produced by `kedro run --env neu_seg --pipeline=compare_backbones` (recipe: "
        f"`conf/neu_seg/parameters_comparison.yml`), then `python -m defect_pipeline.benchmarks backbones --project "
        f"{tmp_path / 'project'}`, on {describe_machine()}. ")
    assert f", {os.cpu_count()} cores, " in lines[2]
    assert lines[4:8] == [
        "| backbone | status | parameters (M) | epochs in budget | training s | best val loss | "
        "best val combined score |",
        "|---|---|---|---|---|---|---|",
        "| resnet18 | ok | 11.4 | 3 | 61 | 0.512 | 63.4 % |",
        "| convnext_atto | failed_memory | – | – | – | – | – |",
    ]
    assert lines[-1] == "| criterion | backbone |"


def test_a_section_is_read_from_the_environments_data_root(tmp_path: Path) -> None:
    """``--env neu_seg`` writes below data/neu_seg: ``--data-root`` points the command there (before the
    option existed, only <project>/data was read)."""
    out = tmp_path / "project/data/neu_seg/08_reporting/compare_backbones"
    out.mkdir(parents=True)
    pd.DataFrame([{"slot": 1, "backbone": "resnet18", "status": "ok", "parameters_m": 11.4, "epochs_run": 3,
                   "training_seconds": 61.0, "best_val_loss": 0.5, "best_val_combined_score": 0.6,
                   "cpu_threads": 2}]).to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text("# Backbone comparison\n\n## Recommendations\n\n| criterion | backbone |\n")
    doc = tmp_path / "benchmarks.md"
    backbones.main(["--project", str(tmp_path / "project"), "--data-root", "data/neu_seg", "--doc", str(doc)])
    assert "| resnet18 | ok |" in doc.read_text()
