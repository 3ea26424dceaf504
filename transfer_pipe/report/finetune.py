"""Fine-tuning results as report pieces: the probe and the fine-tuned model side by side,
and a markdown report with the learning curves."""

from __future__ import annotations

from typing import Any

from transfer_pipe.report.tables import markdown_report, markdown_table, metrics_rows


def comparison_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The probe and the fine-tuned model as two rows of the heads' metrics table."""
    probe = {"head_id": result["probe"]["head_id"], "head": "linear probe", "task": result["task"],
             "metrics": result["probe"]["metrics"]}  # fmt: skip
    return metrics_rows([probe, result])


def finetune_report(result: dict[str, Any], images: dict[str, str] | None = None) -> str:
    """Markdown: the comparison with the probe, the learning curves, then the usual
    per-class report of the fine-tuned model."""
    rows = comparison_rows(result)
    columns = ("head", "accuracy", "accuracy_ci95", "macro_f1", "balanced_accuracy", "ece")
    table = markdown_table(columns, [[row[c] for c in columns] for row in rows])
    lines = [
        f"# Fine-tuning {result['run_id']}",
        "",
        f"Policy **{result['policy']}**{' with LP-FT' if result['lp_ft'] else ''}, "
        f"{result['epochs']} epochs (best {result['best_epoch']}, stopped by "
        f"{result['stopped']}), image size {result['image_size']}, on {result['device']}; "
        f"{len(result['skipped_images'])} images skipped as undecodable.",
        "",
        table,
        "",
    ]
    if images and "curves" in images:
        lines += [f"![learning curves]({images['curves']})", ""]
    rest = {k: v for k, v in (images or {}).items() if k != "curves"}
    return "\n".join(lines) + "\n" + markdown_report(result, rest)
