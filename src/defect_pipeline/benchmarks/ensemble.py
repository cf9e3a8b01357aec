"""The result table of an ``ensemble`` run, as a section of docs/benchmarks.md.

The comparison itself is the pipeline (``kedro run --env neu_seg --pipeline=ensemble``: each member,
the ensemble, and the ensemble with flips, each tuned on val and measured on test); this command
copies its table, with the machine and the command, into the ``ensemble`` section.

``python -m defect_pipeline.benchmarks ensemble --project <project dir> --title "NEU-Seg (CPU)"``
"""

from __future__ import annotations

import json
from pathlib import Path

from defect_pipeline.benchmarks import describe_machine, project_report_arguments, write_section
from defect_pipeline.markdown import markdown_table


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def main(argv: list[str] | None = None) -> None:
    args = project_report_arguments("ensemble", argv, title="ensembles and test-time augmentation",
                                    command="kedro run --env neu_seg --pipeline=ensemble",
                                    recipe="conf/neu_seg/parameters_evaluation.yml")
    summary = json.loads((Path(args.project) / args.data_root / "08_reporting/ensemble/summary.json").read_text())
    rows = [[row["variant"], row["tta"], f"{row['images_per_s']:.1f}",
             *(f"{_pct(row['fixed_' + k])} / {_pct(row['tuned_' + k])}"
               for k in ("combined_score", "miou", "miou_defects", "macro_f1"))]
            for row in summary["variants"]]
    members = ", ".join(f"{m['name']} (`{m['ref']}`, {m['image_size']} px)" for m in summary["members"])
    body = "\n".join([
        f"## {args.title}", "",
        f"Produced by `{args.command}` (recipe: `{args.recipe}`), then `python -m defect_pipeline.benchmarks "
        f"ensemble --project {args.project}`, on {describe_machine()}. Members: {members}; weights "
        f"{', '.join(f'{w:.2f}' for w in summary['weights'])}. Every variant's thresholds were tuned on its own "
        f"validation output; the {summary['split']} split has {summary['samples']} images. Cells read fixed (0.5) / "
        "tuned; images/s is the whole evaluation (decoding, every forward pass, decisions and metrics) on this "
        "machine.", "",
        markdown_table(["variant", "TTA", "images/s", "combined score", "mIoU", "defect mIoU", "macro F1"], rows),
    ])
    write_section(Path(args.doc), "ensemble", body)
    print(body)
