"""docs/benchmarks.md sections are replaced in place, others kept, and the write is atomic."""

from __future__ import annotations

from pathlib import Path

from defect_pipeline.benchmarks import describe_machine, write_section


def test_sections_are_replaced_not_duplicated(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    write_section(doc, "a", "first A")
    write_section(doc, "b", "only B")
    write_section(doc, "a", "second A")
    text = doc.read_text()
    assert text.count("<!-- bench:a:start -->") == 1 and "second A" in text and "first A" not in text
    assert "only B" in text and text.index("second A") < text.index("only B")
    assert not list(tmp_path.glob("*.tmp"))


def test_machine_description_names_cores() -> None:
    assert "cores" in describe_machine()
