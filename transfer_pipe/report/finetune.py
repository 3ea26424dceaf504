"""Fine-tuning results as report pieces: the probe, pretrained fine-tuning and training
from scratch side by side (those the store holds), and a markdown report with the
learning curves that says plainly when the fine-tuned model ends below the probe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from transfer_pipe.report.tables import Scored, markdown_report, markdown_table, metrics_rows
from transfer_pipe.scores import Metrics


class ProbeScored(Protocol):
    """The linear probe a run is compared with: its head id and test metrics."""

    @property
    def head_id(self) -> str: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def val_accuracy(self) -> float | None: ...


class ComparedScored(Protocol):
    """Another run on the same feature set, task and split, with the other init."""

    @property
    def run_id(self) -> str: ...

    @property
    def head(self) -> str: ...

    @property
    def init(self) -> str: ...

    @property
    def val_accuracy(self) -> float | None: ...

    @property
    def metrics(self) -> Metrics: ...


class FinetuneScored(Scored, Protocol):
    """What the report reads of a fine-tuning run's result (``FinetuneResult`` is one)."""

    @property
    def run_id(self) -> str: ...

    @property
    def policy(self) -> str: ...

    @property
    def lp_ft(self) -> bool: ...

    @property
    def epochs(self) -> int: ...

    @property
    def best_epoch(self) -> int: ...

    @property
    def stopped(self) -> str: ...

    @property
    def image_size(self) -> int: ...

    @property
    def device(self) -> str: ...

    @property
    def skipped_images(self) -> Sequence[object]: ...

    @property
    def history(self) -> Sequence[Mapping[str, float]]: ...

    @property
    def probe(self) -> ProbeScored: ...

    @property
    def init(self) -> str: ...

    @property
    def val_accuracy(self) -> float | None: ...

    @property
    def verdict(self) -> str: ...

    @property
    def compared(self) -> ComparedScored | None: ...


@dataclass(frozen=True)
class _Row:
    """A model that is not this run (the probe, another run) as a row of the metrics
    table (no hyperparameters or times shown)."""

    head_id: str
    task: str
    metrics: Metrics
    head: str = "linear probe"
    layer: str = ""
    chosen: Mapping[str, Any] = field(default_factory=dict)
    seconds: Mapping[str, float] = field(default_factory=dict)


def comparison_rows(result: FinetuneScored) -> list[dict[str, Any]]:
    """Rows of the heads' metrics table: the probe, then pretrained fine-tuning, then the
    from-scratch run (this run and, when the store holds one, the run with the other init)."""
    probe = _Row(head_id=result.probe.head_id, task=result.task, metrics=result.probe.metrics)
    runs: list[Scored] = [result]
    other = result.compared
    if other is not None:
        row = _Row(head_id=other.run_id, task=result.task, metrics=other.metrics, head=other.head)
        runs = [result, row] if other.init == "random" else [row, result]
    return metrics_rows([probe, *runs])


def _accuracy(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4f}"


def validation_line(result: FinetuneScored) -> str:
    """Validation accuracy of every model compared: what the verdict judges on."""
    parts = [f"this run {_accuracy(result.val_accuracy)}"]
    if result.compared is not None:
        parts.append(f"{result.compared.head} {_accuracy(result.compared.val_accuracy)}")
    parts.append(f"linear probe {_accuracy(result.probe.val_accuracy)}")
    return "Validation accuracy: " + ", ".join(parts) + "."


def finetune_report(result: FinetuneScored, images: dict[str, str] | None = None) -> str:
    """Markdown: the comparison with the probe, the learning curves, then the usual
    per-class report of the fine-tuned model."""
    rows = comparison_rows(result)
    columns = ("head", "accuracy", "accuracy_ci95", "macro_f1", "balanced_accuracy", "ece")
    table = markdown_table(columns, [[row[c] for c in columns] for row in rows])
    init = " from random weights (from scratch)" if result.init == "random" else ""
    lines = [f"# Fine-tuning {result.run_id}", ""]
    if result.verdict:
        lines += [f"**Below the linear probe**: {result.verdict}.", ""]
    lines += [
        f"Policy **{result.policy}**{' with LP-FT' if result.lp_ft else ''}{init}, "
        f"{result.epochs} epochs (best {result.best_epoch}, stopped by "
        f"{result.stopped}), image size {result.image_size}, on {result.device}; "
        f"{len(result.skipped_images)} images skipped as undecodable.",
        "",
        validation_line(result),
        "",
        table,
        "",
    ]
    if images and "curves" in images:
        lines += [f"![learning curves]({images['curves']})", ""]
    rest = {k: v for k, v in (images or {}).items() if k != "curves"}
    return "\n".join(lines) + "\n" + markdown_report(result, rest)
