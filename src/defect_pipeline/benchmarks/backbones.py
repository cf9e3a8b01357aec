"""The result table of a ``compare_backbones`` run, as a section of docs/benchmarks.md.

The comparison itself is the pipeline (``kedro run --env neu_seg --pipeline=compare_backbones``,
equal time budget per backbone); this command copies its table and recommendations, with the
machine and the command, into the ``backbones`` section, with how the candidates were set up
(initial weights, torch threads) as the comparison recorded it.

``python -m defect_pipeline.benchmarks backbones --project <project dir> --title "NEU-Seg (CPU)"``
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from defect_pipeline.benchmarks import describe_machine, project_report_arguments, write_section
from defect_pipeline.benchmarks.recorded import threads_used
from defect_pipeline.markdown import markdown_table


def setup_sentence(table: pd.DataFrame) -> str:
    """How the compared candidates were set up, from ``comparison.csv``'s ``initial_weights`` and
    ``cpu_threads`` columns (what each candidate's training recorded)."""
    from defect_pipeline.ml.stage_records import describe_initial_weights

    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    starts = ok["initial_weights"].dropna().unique() if "initial_weights" in ok.columns else []
    if len(starts) == 0:
        weights = "Initial weights: not recorded in comparison.csv (a comparison from before they were recorded)"
    elif len(starts) == 1:
        weights = f"Every backbone started from {starts[0]}"
        if starts[0] == describe_initial_weights("scratch", pretrained=False, checkpoint_path=None):
            weights += (": the ranking says which architecture learns fastest from scratch on this data and machine, "
                        "not which pretrained backbone is best")
    else:
        weights = "Initial weights: " + "; ".join(f"{row['backbone']} from {row['initial_weights']}"
                                                  for _, row in ok.iterrows())
    threads = threads_used(ok["cpu_threads"]) if "cpu_threads" in ok.columns else threads_used([])
    return f"{weights}. Training ran with {threads} (`runtime.cpu_threads`)."


def main(argv: list[str] | None = None) -> None:
    args = project_report_arguments("backbones", argv, title="backbone comparison",
                                    command="kedro run --env neu_seg --pipeline=compare_backbones",
                                    recipe="conf/neu_seg/parameters_comparison.yml")
    out = Path(args.project) / args.data_root / "08_reporting/compare_backbones"
    table = pd.read_csv(out / "comparison.csv")
    markdown = (out / "comparison.md").read_text()
    recommendations = markdown.split("## Recommendations", 1)[1].strip() if "## Recommendations" in markdown else ""
    columns = [("backbone", "backbone", str), ("status", "status", str),
               ("parameters_m", "parameters (M)", lambda v: f"{v:.1f}"),
               ("epochs_run", "epochs in budget", lambda v: f"{v:.0f}"),
               ("training_seconds", "training s", lambda v: f"{v:.0f}"),
               ("best_val_loss", "best val loss", lambda v: f"{v:.3f}"),
               ("best_val_combined_score", "best val combined score", lambda v: f"{100 * v:.1f} %"),
               ("best_val_miou", "best val mIoU", lambda v: f"{100 * v:.1f} %"),
               ("best_val_macro_f1", "best val macro F1", lambda v: f"{100 * v:.1f} %"),
               ("train_samples_per_s", "train samples/s", lambda v: f"{v:.1f}"),
               ("val_samples_per_s", "eval samples/s", lambda v: f"{v:.1f}"),
               ("epoch_seconds", "epoch s", lambda v: f"{v:.0f}"),
               ("peak_rss_mb", "peak RSS MB", lambda v: f"{v:.0f}")]
    present = [c for c in columns if c[0] in table.columns]
    rows = [[("–" if pd.isna(row[c]) else fmt(row[c])) for c, _, fmt in present] for _, row in table.iterrows()]
    body = "\n".join([
        f"## {args.title}: backbone comparison at an equal CPU budget",
        "",
        f"Produced by `{args.command}` (recipe: `{args.recipe}`), then `python -m defect_pipeline.benchmarks "
        f"backbones --project {args.project}`, on {describe_machine()}. {setup_sentence(table)}",
        "",
        markdown_table([label for _, label, _ in present], rows),
        "",
        "Recommendations:",
        "",
        recommendations,
    ])
    write_section(Path(args.doc), "backbones", body)
    print(body)


if __name__ == "__main__":
    main()
