"""A fine-tuning run's result and model card, as types.

``FinetuneResult`` is what training, testing and saving one run returns (and what the
report reads); ``FinetuneCard`` is ``<store>/finetune/<run_id>/card.json``, which holds the
result; ``FinetuneListing`` is one row of ``transfer-pipe finetuned``.

A run is judged against the linear probe on *validation* accuracy (the rows both chose
their epoch or C on; test stays untouched): a model that ends below the probe says so
(``below_probe``, ``verdict``) and recommends the probe. Fields added since the first cards
have defaults, so every card on disk still reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from transfer_pipe.records import Record, known_fields
from transfer_pipe.scores import Metrics
from transfer_pipe.store.cards import ModelCard

MODEL_FILE = "model.safetensors"


FINETUNE_DIR = "finetune"  # <store>/finetune/<run_id>/: one fine-tuning run each


@dataclass(frozen=True)
class SkippedImage(Record):
    """An image of the run's rows that could not be decoded when fine-tuning read it."""

    split: str
    sample_id: str
    reason: str


@dataclass(frozen=True)
class ProbeScore(Record):
    """The linear probe the run is judged against: its head id, test metrics, and its
    validation accuracy (the chosen C fitted on the training rows; ``None`` on old cards)."""

    head_id: str
    metrics: Metrics
    val_accuracy: float | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        fields = known_fields(cls, data, "a probe")
        return cls(**{**fields, "metrics": Metrics.from_dict(fields["metrics"])})


@dataclass(frozen=True)
class RunScore(Record):
    """Another fine-tuning run on the same feature set, task and split, shown beside this
    one: pretrained fine-tuning beside a from-scratch run, and the other way round."""

    run_id: str
    head: str  # how the report tables name it, e.g. "finetune top-2 lp-ft"
    init: str
    val_accuracy: float | None
    metrics: Metrics

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        fields = known_fields(cls, data, "a compared fine-tuning run")
        return cls(**{**fields, "metrics": Metrics.from_dict(fields["metrics"])})


def best_val_accuracy(history: Sequence[Mapping[str, Any]], best_epoch: int) -> float | None:
    """The validation accuracy of the epoch whose weights the run keeps (``None`` when the
    history does not hold it)."""
    for row in history:
        if row.get("epoch") == best_epoch and "val_accuracy" in row:
            return float(row["val_accuracy"])
    return None


def probe_verdict(
    val_accuracy: float | None, probe: ProbeScore, model: str = "the fine-tuned model"
) -> str:
    """One plain sentence when ``model`` ends below the probe on validation (recommending
    the probe by head id), else ``""``; unknown accuracies judge nothing."""
    if val_accuracy is None or probe.val_accuracy is None or val_accuracy >= probe.val_accuracy:
        return ""
    return (
        f"{model} ends below the linear probe on validation accuracy "
        f"({val_accuracy:.4f} vs {probe.val_accuracy:.4f}): use the probe {probe.head_id} "
        f"instead (transfer-pipe predict --head {probe.head_id})"
    )


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
    init: str = "pretrained"  # or "random": trained from scratch (the baseline)
    below_probe: bool = False  # ended below the probe on validation accuracy
    verdict: str = ""  # when below the probe: says so and recommends it
    compared: RunScore | None = None  # the run with the other init, when the store has one

    @property
    def val_accuracy(self) -> float | None:
        """Validation accuracy of the kept (best) epoch: what the probe is judged against."""
        return best_val_accuracy(self.history, self.best_epoch)

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
        if fields.get("compared") is not None:
            fields["compared"] = RunScore.from_dict(fields["compared"])
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
    init: str = "pretrained"  # or "random": the from-scratch baseline

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
    init: str
    below_probe: bool  # on validation accuracy: the probe is the better model

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
            init=card.init,
            below_probe=card.result.below_probe,
        )
