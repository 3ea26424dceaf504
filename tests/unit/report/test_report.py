"""Report tables, markdown and PNG plots built from real evaluate() results."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.report import CLASSES, assert_png, evaluated
from transfer_pipe.heads.card import HeadResult
from transfer_pipe.report import (
    ROW_COLUMNS,
    markdown_report,
    metrics_rows,
    save_confusion_matrix,
    save_per_class_accuracy,
    terminal_table,
)


def head_result(head_id: str, classes: list[str], seed: int, **changes: Any) -> HeadResult:
    result = HeadResult(
        head_id=head_id,
        head="logreg",
        task="source",
        layer="penultimate",
        shots=None,
        shot_seed=None,
        chosen={"C": 0.1},
        metrics=evaluated(classes, seed),
        seconds={"select": 1.25, "refit": 0.5},
    )
    return replace(result, **changes)


@pytest.fixture
def results() -> list[HeadResult]:
    many = [f"class{i}" for i in range(7)]
    return [
        head_result("logreg-a", CLASSES, seed=0),
        head_result("svm-b", many, seed=1, head="linear_svm", chosen={"C": 1e-05, "loss": "hinge"}),
    ]


def test_metrics_rows_one_row_per_head_with_values_from_input(results: list[HeadResult]) -> None:
    rows = metrics_rows(results)
    assert [row["head_id"] for row in rows] == ["logreg-a", "svm-b"]
    for row, result in zip(rows, results, strict=True):
        m = result.metrics
        assert tuple(row) == ROW_COLUMNS
        assert row["head"] == result.head and row["task"] == "source"
        assert row["accuracy"] == round(m.accuracy, 4)
        assert row["macro_f1"] == round(m.macro_f1, 4)
        assert row["balanced_accuracy"] == round(m.balanced_accuracy, 4)
        assert row["ece"] == round(m.ece, 4)
        low, high = m.accuracy_ci95
        assert row["accuracy_ci95"] == f"{low:.3f}\u2013{high:.3f}"
        assert row["fit_seconds"] == 1.75
    assert rows[0]["top5_accuracy"] is None  # 3 classes: no top-5
    assert rows[1]["top5_accuracy"] == round(results[1].metrics.top5_accuracy, 4)
    assert rows[0]["chosen"] == "C=0.1"
    assert rows[1]["chosen"] == "C=1e-05, loss=hinge"


def test_metrics_rows_rounds_to_four_digits() -> None:
    result = head_result("x", CLASSES, seed=2, seconds={})
    result = replace(result, metrics=replace(result.metrics, accuracy=0.123456789))
    (row,) = metrics_rows([result])
    assert row["accuracy"] == 0.1235
    # Mutation: summing an empty seconds dict to 0.0 instead of None makes this fail.
    assert row["fit_seconds"] is None


def test_terminal_table_aligns_columns(results: list[HeadResult]) -> None:
    rows = metrics_rows(results)
    text = terminal_table(rows, columns=["head_id", "accuracy", "top5_accuracy", "chosen"])
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[0].split() == ["head_id", "accuracy", "top5_accuracy", "chosen"]
    assert set(lines[1]) <= {"-", " "}
    assert len({len(line) for line in lines}) == 1
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", lines[1])]
    assert [lines[0][a:b].strip() for a, b in spans] == lines[0].split()
    (id_a, id_b), (acc_a, acc_b) = spans[:2]
    for line, row in zip(lines[2:], rows, strict=True):
        # Text is left-aligned under its rule, numbers right-aligned.
        assert line[id_a:id_b].startswith(row["head_id"])
        assert line[acc_a:acc_b].endswith(str(row["accuracy"]))


def test_terminal_table_defaults_to_all_columns(results: list[HeadResult]) -> None:
    text = terminal_table(metrics_rows(results))
    header = text.splitlines()[0].split()
    assert header == list(ROW_COLUMNS)


def test_markdown_report_has_classes_counts_and_ci(results: list[HeadResult]) -> None:
    result = results[0]
    m = result.metrics
    text = markdown_report(result, images={"confusion": "cm.png"})
    assert "logreg-a" in text and "penultimate" in text and "C=0.1" in text
    for name in CLASSES:
        assert name in text
    low, high = m.accuracy_ci95
    assert f"{low:.3f}\u2013{high:.3f}" in text
    assert "top-5" not in text
    assert "![confusion](cm.png)" in text
    # Confusion matrix rows: the class name then its counts, in order.
    for name, counts in zip(CLASSES, m.confusion_matrix, strict=True):
        expected = "| " + " | ".join([name, *map(str, counts)]) + " |"
        assert expected in text.splitlines()
    # Per-class rows carry precision/recall/f1/support.
    # Mutation: printing the recall in the F1 column makes this fail.
    for row in m.per_class:
        cells = f"| {row.name} | {row.precision:.4f} | {row.recall:.4f} | {row.f1:.4f} |"
        assert cells in text
        assert f"| {row.support} |" in text


def test_markdown_report_without_images_and_with_top5(results: list[HeadResult]) -> None:
    text = markdown_report(results[1])
    assert "![" not in text
    assert f"{results[1].metrics.top5_accuracy:.4f}" in text


def test_save_confusion_matrix_writes_png(tmp_path: Path, results: list[HeadResult]) -> None:
    m = results[0].metrics
    out = save_confusion_matrix(
        tmp_path / "sub" / "cm.png", m.confusion_matrix, m.classes, title="logreg"
    )
    assert out == tmp_path / "sub" / "cm.png"
    small = assert_png(out)
    many = [f"class{i}" for i in range(40)]
    big = save_confusion_matrix(str(tmp_path / "big.png"), np.eye(40, dtype=int) * 3, many)
    assert assert_png(big)[0] > small[0]  # the figure grows with the class count


def test_save_confusion_matrix_rejects_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        save_confusion_matrix(tmp_path / "x.png", [[1, 2], [3, 4]], CLASSES)


def test_save_per_class_accuracy_writes_png(tmp_path: Path, results: list[HeadResult]) -> None:
    out = save_per_class_accuracy(tmp_path / "acc.png", results[1].metrics.per_class, "svm")
    assert_png(out)


def test_report_imports_no_heavy_or_orchestration_packages() -> None:
    code = (
        "import sys, transfer_pipe.report\n"
        "bad = [m for m in ('prefect', 'torch', 'zarr') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
    # The default backend stays untouched: we never imported pyplot.
    code = "import sys, transfer_pipe.report; print('matplotlib.pyplot' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
