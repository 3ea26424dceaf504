"""Fine-tuning results as report pieces: the probe and the fine-tuned model side by side,
and a markdown report with the learning curves."""

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


@dataclass(frozen=True)
class _ProbeRow:
    """The probe as a row of the metrics table (no hyperparameters or times shown)."""

    head_id: str
    task: str
    metrics: Metrics
    head: str = "linear probe"
    layer: str = ""
    chosen: Mapping[str, Any] = field(default_factory=dict)
    seconds: Mapping[str, float] = field(default_factory=dict)


def comparison_rows(result: FinetuneScored) -> list[dict[str, Any]]:
    """The probe and the fine-tuned model as two rows of the heads' metrics table."""
    probe = _ProbeRow(head_id=result.probe.head_id, task=result.task, metrics=result.probe.metrics)
    return metrics_rows([probe, result])


def finetune_report(result: FinetuneScored, images: dict[str, str] | None = None) -> str:
    """Markdown: the comparison with the probe, the learning curves, then the usual
    per-class report of the fine-tuned model."""
    rows = comparison_rows(result)
    columns = ("head", "accuracy", "accuracy_ci95", "macro_f1", "balanced_accuracy", "ece")
    table = markdown_table(columns, [[row[c] for c in columns] for row in rows])
    lines = [
        f"# Fine-tuning {result.run_id}",
        "",
        f"Policy **{result.policy}**{' with LP-FT' if result.lp_ft else ''}, "
        f"{result.epochs} epochs (best {result.best_epoch}, stopped by "
        f"{result.stopped}), image size {result.image_size}, on {result.device}; "
        f"{len(result.skipped_images)} images skipped as undecodable.",
        "",
        table,
        "",
    ]
    if images and "curves" in images:
        lines += [f"![learning curves]({images['curves']})", ""]
    rest = {k: v for k, v in (images or {}).items() if k != "curves"}
    return "\n".join(lines) + "\n" + markdown_report(result, rest)
