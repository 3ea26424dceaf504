"""A fine-tuning run's result and model card, as types.

``FinetuneResult`` is what training, testing and saving one run returns (and what the
report reads); ``FinetuneCard`` is ``<store>/finetune/<run_id>/card.json``, which holds the
result; ``FinetuneListing`` is one row of ``transfer-pipe finetuned``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from transfer_pipe.records import Record, known_fields
from transfer_pipe.scores import Metrics
from transfer_pipe.store.cards import ModelCard

MODEL_FILE = "model.safetensors"


@dataclass(frozen=True)
class SkippedImage(Record):
    """An image of the run's rows that could not be decoded when fine-tuning read it."""

    split: str
    sample_id: str
    reason: str


@dataclass(frozen=True)
class ProbeScore(Record):
    """The linear probe the run is judged against: its head id and test metrics."""

    head_id: str
    metrics: Metrics

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        fields = known_fields(cls, data, "a probe")
        return cls(**{**fields, "metrics": Metrics.from_dict(fields["metrics"])})


@dataclass(frozen=True)
class FinetuneResult(Record):
    """One fine-tuning run: what was trained, how it went per epoch, test metrics beside
    the probe's, where its best checkpoint and its folder in the store are."""

    run_id: str
    head: str  # e.g. "finetune top-2 lp-ft": how the report tables name the model
    task: str
    layer: str
    policy: str
    lp_ft: bool
    epochs: int
    best_epoch: int
    stopped: str
    history: list[dict[str, Any]]
    skipped_images: list[SkippedImage]
    device: str
    image_size: int
    chosen: dict[str, Any]
    metrics: Metrics
    probe: ProbeScore
    seconds: dict[str, float]
    checkpoint: str
    url: str | None = None
    reused: bool = False  # a finished run found in the store, not trained again

    @property
    def head_id(self) -> str:
        """The report tables name every model by ``head_id``; a run's is its run id."""
        return self.run_id

    def to_dict(self) -> dict[str, Any]:
        # ``head_id`` stays in the JSON: cards written before it became a property hold it.
        return {**super().to_dict(), "head_id": self.head_id}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        fields = known_fields(cls, data, f"result of fine-tuning run {data.get('run_id')!r}")
        fields["skipped_images"] = [
            SkippedImage(**known_fields(SkippedImage, item, "a skipped image"))
            for item in fields["skipped_images"]
        ]
        fields["probe"] = ProbeScore.from_dict(fields["probe"])
        fields["metrics"] = Metrics.from_dict(fields["metrics"])
        return cls(**fields)


@dataclass(frozen=True)
class FinetuneCard(ModelCard):
    """The model card of a saved fine-tuning run."""

    run_id: str
    policy: str
    lp_ft: bool
    probe_head_id: str
    hyperparameters: dict[str, Any]
    trainable_segments: list[str]
    trainable_parameters: int
    result: FinetuneResult  # as trained: without ``url`` and ``reused``
    model_file: str = MODEL_FILE

    @property
    def card_id(self) -> str:
        return self.run_id

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The card as read back from ``card.json``."""
        fields = cls._read_fields(data, f"card of fine-tuning run {data.get('run_id', '?')!r}")
        return cls(**{**fields, "result": FinetuneResult.from_dict(fields["result"])})


@dataclass(frozen=True)
class FinetuneListing(Record):
    """One row of ``transfer-pipe finetuned`` (and of its ``--json`` list)."""

    run_id: str
    feature_set: str
    task: str
    policy: str
    lp_ft: bool
    epochs: int
    accuracy: float
    probe_accuracy: float
    created: str

    @classmethod
    def of(cls, card: FinetuneCard) -> Self:
        return cls(
            run_id=card.run_id,
            feature_set=card.feature_set,
            task=card.task.name,
            policy=card.policy,
            lp_ft=card.lp_ft,
            epochs=card.result.epochs,
            accuracy=round(card.result.metrics.accuracy, 4),
            probe_accuracy=round(card.result.probe.metrics.accuracy, 4),
            created=card.created,
        )
