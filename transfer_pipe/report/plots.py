"""PNG plots of head metrics (confusion matrix, per-class accuracy) and fine-tuning's
learning curves.

We draw on a bare :class:`matplotlib.figure.Figure` with an Agg canvas instead of
pyplot: no global figure registry, no GUI backend, so it is safe in worker threads
and headless machines, and it leaves the process's matplotlib backend alone.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transfer_pipe.report.tables import Scored
from transfer_pipe.scores import ClassScores

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_DPI = 100
# Above this many classes the per-cell counts are too small to read, so we leave them out.
_MAX_ANNOTATED_CLASSES = 30


def save_confusion_matrix(
    path: str | Path,
    matrix: Sequence[Sequence[int]],
    classes: Sequence[str],
    title: str = "",
) -> Path:
    """Write a confusion-matrix heatmap (rows = true class) as PNG; returns the path.

    Colours are row-normalized (share of each true class), so rare classes are as
    visible as common ones; cells show the raw counts.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    k = len(classes)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix has shape {counts.shape}, expected {(k, k)}")
    row_sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)

    side = min(4.0 + 0.45 * k, 40.0)
    fig = _figure(figsize=(side + 1.0, side), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of true class")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    _class_ticks(ax, classes, axis="x")
    _class_ticks(ax, classes, axis="y")
    if k <= _MAX_ANNOTATED_CLASSES:
        fontsize = 9 if k <= 12 else 7
        for (i, j), count in np.ndenumerate(counts):
            # Dark cells get white text so the count stays readable.
            color = "white" if shares[i, j] > 0.5 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=fontsize)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def save_per_class_accuracy(
    path: str | Path,
    per_class: Sequence[ClassScores],
    title: str = "",
) -> Path:
    """Write a bar chart of each class's recall (its accuracy) as PNG; returns the path.

    ``per_class`` is the ``per_class`` list of a result's metrics; a dashed line
    marks the mean over classes (the balanced accuracy when every class has support).
    """
    names = [row.name for row in per_class]
    recall = np.array([row.recall for row in per_class], dtype=np.float64)
    fig = _figure(figsize=(min(4.0 + 0.4 * len(names), 40.0), 4.5), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(len(names))
    bars = ax.bar(positions, recall, color="tab:blue")
    if len(names) <= _MAX_ANNOTATED_CLASSES:
        ax.bar_label(bars, labels=[f"{r:.2f}" for r in recall], fontsize=8, padding=2)
    if len(names):
        mean = float(recall.mean())
        ax.axhline(mean, color="tab:gray", linestyle="--", linewidth=1, label=f"mean {mean:.3f}")
        ax.legend(loc="lower right")
    ax.set_ylim(0.0, 1.08)
    ax.set_ylabel("accuracy (recall)")
    _class_ticks(ax, names, axis="x")
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def png_data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI: an image a markdown report carries inline (the Prefect
    UI renders it), so it shows where the report is read, not only where it was written."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def save_result_plots(folder: Path, result: Scored) -> dict[str, Path]:
    """A result's confusion matrix and per-class accuracy on test, as PNGs in ``folder``;
    returns ``{"confusion": path, "per_class": path}``."""
    metrics = result.metrics
    title = f"{result.head_id} (test)"
    return {
        "confusion": save_confusion_matrix(
            folder / "confusion.png", metrics.confusion_matrix, metrics.classes, title
        ),
        "per_class": save_per_class_accuracy(folder / "per_class.png", metrics.per_class, title),
    }


def save_learning_curves(
    path: str | Path,
    history: Sequence[Mapping[str, float]],
    baseline: float | None = None,
    title: str = "",
) -> Path:
    """Loss (train, validation) and accuracy (train, validation, and ``baseline``, e.g. the
    linear probe's test accuracy, as a dashed line) per epoch, side by side, as PNG."""
    epochs = [row["epoch"] for row in history]
    fig = _figure(figsize=(10, 4), dpi=_DPI, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, metric, label in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
        for split, style in (("train", "o-"), ("val", "s-")):
            ax.plot(epochs, [row[f"{split}_{metric}"] for row in history], style, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if baseline is not None:
        acc_ax.axhline(baseline, linestyle="--", color="grey", label="linear probe (test)")
    loss_ax.legend()
    acc_ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _class_ticks(ax: Axes, classes: Sequence[str], axis: str) -> None:
    """One tick per class; x labels rotated so long names do not overlap."""
    positions = np.arange(len(classes))
    if axis == "x":
        ax.set_xticks(positions, list(classes), rotation=45, ha="right", rotation_mode="anchor")
    else:
        ax.set_yticks(positions, list(classes))


def _figure(**options: Any) -> Figure:
    # matplotlib is imported when a plot is drawn, not with the library: a flow that draws
    # none (a scheduled rerun with nothing to fit) starts a second sooner.
    from matplotlib.figure import Figure

    return Figure(**options)


def _save(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` with Agg to a PNG at ``path`` (parent folders created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(out, format="png")
    return out
