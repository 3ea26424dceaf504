"""The rows a sweep read last, kept for its next screens and probes on the same rows."""

from __future__ import annotations

from typing import Any

from transfer_pipe.heads.tasks import TaskData
from transfer_pipe.steps.train import TrainPlan


class LayerRows:
    """The rows a sweep read last, for its next screens and probes on the same rows (a
    layer's screens and probes, a share's seeds, the learning curve's shares at one
    layer): one layer's at a time (the penultimate's: 70,000 x 1,280 floats). A sweep
    makes one and hands it to each screen and probe."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._data: TaskData | None = None

    def of(self, plan: TrainPlan) -> TaskData:
        """The plan's rows: those kept, when they are the plan's, else read and kept."""
        kept = self.kept(plan)
        if kept is None:
            self.keep(plan, plan.data)
            return plan.data
        return kept

    def kept(self, plan: TrainPlan) -> TaskData | None:
        """The rows kept, when they are the plan's; else None."""
        return self._data if self._key == _rows_key(plan) else None

    def keep(self, plan: TrainPlan, data: TaskData) -> None:
        """Keep ``data``, the plan's rows, in place of those kept before."""
        self._key, self._data = _rows_key(plan), data


def _rows_key(plan: TrainPlan) -> tuple[Any, ...]:
    return (plan.config.store, plan.feature_set, plan.layer, plan.task.digest, plan.splits)
