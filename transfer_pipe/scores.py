"""A classifier's test-set scores as a type: what ``heads.metrics.evaluate`` returns, what
head and fine-tuning cards hold, and what the report and the summaries read.

It lives beside :mod:`transfer_pipe.records`, under the ``heads | finetune | report``
layer, because all three read it and none of them may import another.

``Metrics.to_dict`` writes exactly the JSON that ``card.json`` has always held (the keys
of the plain dict ``evaluate`` once returned, in the same order), and ``from_dict`` reads
cards written before the type existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from transfer_pipe.records import Record, known_fields

_CLASS_KEY = "class"  # the JSON key of ClassScores.name (``class`` is a Python keyword)


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
