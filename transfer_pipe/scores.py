"""A classifier's test-set scores as a type: what ``heads.metrics.evaluate`` returns, what
head and fine-tuning cards hold, and what the report and the summaries read.

It lives beside :mod:`transfer_pipe.records`, under the ``heads | finetune | report``
layer, because all three read it and none of them may import another.

``Metrics.to_dict`` writes exactly the JSON that ``card.json`` has always held (the keys
of the plain dict ``evaluate`` once returned, in the same order), and ``from_dict`` reads
cards written before the type existed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from transfer_pipe.records import Record, known_fields

_CLASS_KEY = "class"  # the JSON key of ClassScores.name (``class`` is a Python keyword)

# The widest 95 % interval of a test accuracy that still tells heads apart: +-10 points.
_WIDEST_HALF_INTERVAL = 0.1
# The test rows that interval needs at worst (accuracy 0.5, normal approximation:
# 1.96 * sqrt(0.25 / n) <= 0.1): 97. Below it the bootstrap interval is no guide either,
# however narrow it looks: at accuracy 1.0 on 12 rows it is [1, 1].
MIN_TEST_ROWS = math.ceil((1.96 * 0.5 / _WIDEST_HALF_INTERVAL) ** 2)


@dataclass(frozen=True, kw_only=True)
class ClassScores(Record):
    """One class's precision, recall (its accuracy), F1 and support on the test set."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int  # test rows of this class

    def to_dict(self) -> dict[str, Any]:
        return {
            _CLASS_KEY: self.name,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        named = {("name" if key == _CLASS_KEY else key): value for key, value in data.items()}
        return cls(**known_fields(cls, named, "a per-class score"))


@dataclass(frozen=True, kw_only=True)
class Metrics(Record):
    """Test-set metrics of one classifier; lists are in ``classes`` order.

    ``accuracy_ci95`` is a 95% percentile bootstrap interval ``(low, high)``;
    ``top5_accuracy`` is ``None`` with five classes or fewer (and then absent from the
    JSON); ``ece`` is the expected calibration error over ``ece_bins`` equal-width bins;
    ``confusion_matrix`` has rows = true class, columns = predicted class.
    """

    n: int  # test rows scored
    classes: list[str]
    accuracy: float
    accuracy_ci95: tuple[float, float]
    top5_accuracy: float | None = None
    macro_f1: float
    balanced_accuracy: float
    ece: float
    ece_bins: int
    per_class: list[ClassScores]
    confusion_matrix: list[list[int]]

    def to_dict(self) -> dict[str, Any]:
        # An absent top-5 accuracy is an absent key, as in the cards written before.
        return {k: v for k, v in super().to_dict().items() if k != "top5_accuracy" or v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The metrics as read back from a card (or any ``to_dict`` output)."""
        fields = known_fields(cls, data, "a card's metrics")
        low, high = fields["accuracy_ci95"]
        fields["accuracy_ci95"] = (low, high)
        fields["per_class"] = [ClassScores.from_dict(row) for row in fields["per_class"]]
        return cls(**fields)


def interval_warning(metrics: Metrics) -> str | None:
    """What to tell the user when ``metrics`` come from too few test rows for their 95 %
    interval to mean anything (fewer than :data:`MIN_TEST_ROWS`); None otherwise."""
    if metrics.n >= MIN_TEST_ROWS:
        return None
    low, high = metrics.accuracy_ci95
    return (
        f"only {metrics.n} test rows: the accuracy and its 95% interval ({low:.3f} to "
        f"{high:.3f}) can be off by more than {_WIDEST_HALF_INTERVAL * 100:.0f} points "
        f"with fewer than {MIN_TEST_ROWS} rows; label more images or give the test split a "
        "larger share (--test-fraction) before trusting or comparing these numbers."
    )
