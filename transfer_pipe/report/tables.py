"""Head results as table rows, a plain-text table, and a markdown report.

The report reads a result through the :class:`Scored` protocol: a fitted head's
``HeadResult`` and a fine-tuning run's ``FinetuneResult`` both are one (the report sits
beside ``heads`` and ``finetune``, not above them, so it names no type of theirs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from transfer_pipe.scores import Metrics, interval_warning

_DIGITS = 4
# CI ranges use an en dash (0.861 to 0.874); written as an escape so linters see no look-alike.
_EN_DASH = "\u2013"
ROW_COLUMNS = (
    "head_id",
    "head",
    "task",
    "accuracy",
    "accuracy_ci95",
    "top5_accuracy",
    "macro_f1",
    "balanced_accuracy",
    "ece",
    "chosen",
    "fit_seconds",
)
_SCORES = ("precision", "recall", "f1")


class Scored(Protocol):
    """What the report reads of a model's result, e.g. ``head_id="source-logreg-3f2a"``,
    ``head="logreg"``, ``chosen={"C": 0.1}``, ``metrics`` its test :class:`Metrics`,
    ``seconds={"select": 1.2, "refit": 0.4}`` (empty when not timed)."""

    @property
    def head_id(self) -> str: ...

    @property
    def head(self) -> str: ...

    @property
    def task(self) -> str: ...

    @property
    def layer(self) -> str: ...

    @property
    def chosen(self) -> Mapping[str, Any]: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def seconds(self) -> Mapping[str, float]: ...


def metrics_rows(results: Sequence[Scored]) -> list[dict[str, Any]]:
    """One summary row per head result (keys: :data:`ROW_COLUMNS`), floats rounded to 4 digits.

    Returns plain dicts, ready for a Prefect table artifact or :func:`terminal_table`.
    ``top5_accuracy`` and ``fit_seconds`` are ``None`` where the result has none.
    """
    rows = []
    for result in results:
        metrics = result.metrics
        seconds = result.seconds
        rows.append(
            {
                "head_id": result.head_id,
                "head": result.head,
                "task": result.task,
                "accuracy": _round(metrics.accuracy),
                "accuracy_ci95": format_ci(metrics.accuracy_ci95),
                "top5_accuracy": _round(metrics.top5_accuracy),
                "macro_f1": _round(metrics.macro_f1),
                "balanced_accuracy": _round(metrics.balanced_accuracy),
                "ece": _round(metrics.ece),
                "chosen": format_chosen(result.chosen),
                "fit_seconds": _round(sum(seconds.values())) if seconds else None,
            }
        )
    return rows


def terminal_table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An aligned plain-text table: header, a dashed rule, one line per row.

    ``columns`` defaults to every key of the rows in first-seen order. Numbers are
    right-aligned, everything else left-aligned; ``None`` prints as an empty cell.
    Every line has the same width.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(line[i]) for line in cells]) for i, col in enumerate(columns)]
    numeric = [
        all(_is_number(row.get(col)) or row.get(col) is None for row in rows) and bool(rows)
        for col in columns
    ]

    def render(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts)

    lines = [render(list(columns)), "  ".join("-" * w for w in widths)]
    lines += [render(line) for line in cells]
    return "\n".join(lines)


def markdown_report(
    result: Scored,
    images: Mapping[str, str] | None = None,
    files: Mapping[str, str] | None = None,
    *,
    chosen_by: str | None = None,
    layer_why: str | None = None,
) -> str:
    """A markdown report for one head result.

    Sections: title (head id), run details (head, task, layer (and ``layer_why``: how it
    was chosen, when it was not given), chosen hyperparameters and
    ``chosen_by``: how and on how many rows, e.g. ``5-fold cv on 48 rows``), a warning
    when the test rows are too few for the 95% CI to mean anything, headline metrics
    with the 95% CI, the confusion matrix (rows = true class), a
    per-class table, ``![name](src)`` lines for each of ``images`` (a path, a URL or a
    ``data:`` URI), and where each of ``files`` lives (e.g. the head's folder, model, card).
    """
    metrics = result.metrics
    classes = metrics.classes
    ci = format_ci(metrics.accuracy_ci95)
    chosen = format_chosen(result.chosen) or "(defaults)"
    lines = [
        f"# Head `{result.head_id}`",
        "",
        f"- Head: {result.head}",
        f"- Task: {result.task}",
        f"- Layer: {layer_why or result.layer}",
        f"- Chosen hyperparameters: {chosen}" + (f", by {chosen_by}" if chosen_by else ""),
        f"- Test rows: {metrics.n}",
        "",
    ]
    warned = interval_warning(metrics)
    if warned is not None:
        lines += [f"> **Warning:** {warned}", ""]
    lines += [
        "## Headline metrics",
        "",
        "| metric | value |",
        "|---|---|",
        f"| accuracy | {metrics.accuracy:.4f} (95% CI {ci}) |",
    ]
    if metrics.top5_accuracy is not None:
        lines.append(f"| top-5 accuracy | {metrics.top5_accuracy:.4f} |")
    lines += [
        f"| macro F1 | {metrics.macro_f1:.4f} |",
        f"| balanced accuracy | {metrics.balanced_accuracy:.4f} |",
        f"| ECE ({metrics.ece_bins} bins) | {metrics.ece:.4f} |",
        "",
        "## Confusion matrix",
        "",
        "Rows are the true class, columns the predicted class.",
        "",
        markdown_table(
            ["true \\ predicted", *classes],
            [
                [name, *counts]
                for name, counts in zip(classes, metrics.confusion_matrix, strict=True)
            ],
        ),
        "",
        "## Per class",
        "",
        markdown_table(
            ["class", *_SCORES, "support"],
            [
                [
                    row.name,
                    *(f"{score:.4f}" for score in (row.precision, row.recall, row.f1)),
                    row.support,
                ]
                for row in metrics.per_class
            ],
        ),
    ]
    if images:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({path})" for name, path in images.items()]
    if files:
        lines += ["", "## Files", "", "| file | where |", "|---|---|"]
        lines += [f"| {name} | `{where}` |" for name, where in files.items()]
    return "\n".join(lines) + "\n"


def format_ci(interval: Sequence[float]) -> str:
    """``[0.8612, 0.8745]`` -> ``"0.861\u20130.874"`` (three decimals, en dash between)."""
    low, high = interval
    return f"{low:.3f}{_EN_DASH}{high:.3f}"


def format_chosen(chosen: Mapping[str, Any]) -> str:
    """``{"C": 0.1, "penalty": "l2"}`` -> ``"C=0.1, penalty=l2"``."""
    return ", ".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in chosen.items()
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), _DIGITS)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def markdown_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; first column left-aligned, the rest right-aligned."""

    def line(values: Sequence[object]) -> str:
        # A pipe inside a class name would end the cell early.
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    rule = "|---|" + "---:|" * (len(header) - 1)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
