"""Fine-tuning's report pieces: the probe beside the fine-tuned model, learning curves."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tests.support.report import CLASSES, HISTORY, PNG_SIGNATURE, finetune_result
from transfer_pipe.report import comparison_rows, finetune_report, save_learning_curves


def test_comparison_puts_the_probe_first_with_its_own_metrics() -> None:
    result = finetune_result()
    probe_row, tuned_row = comparison_rows(result)
    assert (probe_row["head"], probe_row["head_id"]) == ("linear probe", "source-logreg-x")
    # Mutation: giving the probe's row the fine-tuned metrics makes this fail.
    assert probe_row["accuracy"] == round(result.probe.metrics.accuracy, 4)
    assert tuned_row["accuracy"] == round(result.metrics.accuracy, 4)
    assert tuned_row["head"] == "finetune top-2" and tuned_row["head_id"] == result.run_id
    assert probe_row["fit_seconds"] is None and tuned_row["fit_seconds"] == 12.5


def test_report_shows_the_comparison_curves_and_per_class_table() -> None:
    text = finetune_report(finetune_result(), {"curves": "curves.png", "confusion": "c.png"})
    assert "# Fine-tuning source-top-2-abc" in text and "with LP-FT" in text
    assert "1 images skipped" in text  # Mutation: printing a fixed count makes this fail.
    assert "| linear probe |" in text and "| finetune top-2 |" in text
    assert "![learning curves](curves.png)" in text and "c.png" in text
    assert all(name in text for name in CLASSES)


def test_learning_curves_png(tmp_path: Path) -> None:
    path = save_learning_curves(tmp_path / "curves.png", HISTORY, baseline=0.7, title="run")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(path) as image:
        assert image.size[0] > image.size[1] > 100
