"""A fitted head's result and model card, as types.

``HeadResult`` is what fitting one head returns (and what the report reads);
``HeadCard`` is ``<store>/heads/<head_id>/card.json``: everything needed to trust,
reproduce and reuse the head; ``HeadListing`` is one row of ``transfer-pipe heads ls``.
Reading cards needs none of the model code (``heads.persist``, which imports torch and
scikit-learn): a run whose heads the store holds reads only their cards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Self

from transfer_pipe.records import Record, known_fields
from transfer_pipe.scores import Metrics
from transfer_pipe.store import StorageOptions, cards
from transfer_pipe.store.cards import LayerChoice, ModelCard, card_folder

HEADS_DIR = "heads"


@dataclass(frozen=True)
class HeadSelection(Record):
    """How a head's hyperparameters were chosen, and on how many rows: ``method`` is
    "validation", "5-fold cv" (on train + validation, every row held out once) or
    "early stopping on validation"; ``rows`` the held-out rows whose scores decided;
    ``smallest_class`` the fewest of them in one class; ``tie_margin`` how far below the
    best held-out accuracy a value still counted as tied (the lowest log loss of those won).
    """

    method: str
    rows: int
    smallest_class: int
    tie_margin: float = 0.0

    def describe(self) -> str:
        """``5-fold cv on 48 rows (16 in the smallest class), accuracies within 0.05 of
        the best taken as tied``: for the report and logs."""
        text = f"{self.method} on {self.rows} rows ({self.smallest_class} in the smallest class)"
        if self.tie_margin > 0:
            text += f", accuracies within {self.tie_margin:.2g} of the best taken as tied"
        return text

    @classmethod
    def read(cls, data: Mapping[str, Any] | None) -> Self | None:
        """The record as a card holds it (None: a card written before it existed)."""
        return None if data is None else cls(**data)


@dataclass(frozen=True)
class HeadResult(Record):
    """One fitted head: ids, chosen hyperparameters, test metrics, seconds per protocol
    stage, and the URL of its folder in the store."""

    head_id: str
    head: str
    task: str
    layer: str
    shots: int | None
    shot_seed: int | None
    chosen: dict[str, Any]
    metrics: Metrics
    seconds: dict[str, float]
    url: str | None = None
    reused: bool = False  # read from the store: fitted by an earlier run
    label_fraction: float | None = None  # share of the training labels (seed: shot_seed)
    selection: HeadSelection | None = None  # None: read from a card written before it
    layer_choice: LayerChoice | None = None  # how ``layer`` was chosen (None: given)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The result as a card holds it."""
        fields = known_fields(cls, data, f"result of head {data.get('head_id', '?')!r}")
        return cls(
            **{
                **fields,
                "metrics": Metrics.from_dict(fields["metrics"]),
                "selection": HeadSelection.read(fields.get("selection")),
                "layer_choice": LayerChoice.read(fields.get("layer_choice")),
            }
        )


@dataclass(frozen=True)
class HeadCard(ModelCard):
    """The model card of a saved head (``model_file`` is set when it is saved): the
    features, estimator and candidates it was fitted with, and its ``result`` (as fitted:
    without ``url`` and ``reused``; ``card.json`` holds its fields flat, see ``to_dict``)."""

    embedding_key: str
    dtype: str
    estimator: str
    params: dict[str, Any]
    validation_curve: list[dict[str, Any]]
    result: HeadResult
    model_file: str = ""
    notes: list[str] = field(default_factory=list)  # what the task's labelling noticed
    autocast: str = "none"  # its feature set's forward precision: predict embeds alike
    # A kNN head's training rows, referenced in its feature set ("": kept in the model).
    fit_rows_file: str = ""
    warnings: list[str] = field(default_factory=list)  # e.g. a test set too small to trust

    @property
    def card_id(self) -> str:
        return self.result.head_id

    def reused(self, url: str) -> HeadResult:
        """The result this saved head recorded, as a run that reuses it (not refitting it)
        returns it: found at ``url``."""
        return replace(self.result, url=url, reused=True)

    def to_dict(self) -> dict[str, Any]:
        """The card as ``card.json`` holds it: flat, the result's fields among the card's
        own, as every release wrote it (so that each reads the others' cards), without the
        result's ``url`` and ``reused`` (where and how a run found it) and with the task
        as the card's record of it."""
        card = super().to_dict()
        result = {k: v for k, v in card.pop("result").items() if k not in _NOT_ON_CARD}
        return {**card, **result}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The card as read back from ``card.json`` (see ``to_dict``)."""
        what = f"card of head {data.get('head_id', '?')!r}"
        # On disk the result's fields are the card's own: read the card's without it first.
        fields = cls._read_fields({**data, "result": None}, what)
        result = HeadResult.from_dict({**data, "task": fields["task"].name})
        return cls(**{**fields, "result": result})


_NOT_ON_CARD = ("url", "reused", "task")  # a result's fields that its card.json leaves out


@dataclass(frozen=True)
class HeadListing(Record):
    """One row of ``transfer-pipe heads ls`` (and of its ``--json`` list)."""

    head_id: str
    feature_set: str
    task: str
    head: str
    layer: str
    accuracy: float
    macro_f1: float
    created: str

    @classmethod
    def of(cls, card: HeadCard) -> Self:
        return cls(
            head_id=card.result.head_id,
            feature_set=card.feature_set,
            task=card.task.name,
            head=card.result.head,
            layer=card.result.layer,
            accuracy=round(card.result.metrics.accuracy, 4),
            macro_f1=round(card.result.metrics.macro_f1, 4),
            created=card.created,
        )


def head_url(store: str, head_id: str) -> str:
    """``<store>/heads/<head_id>``: the head's folder."""
    return card_folder(store, HEADS_DIR, head_id)


def read_card(store: str, head_id: str, storage_options: StorageOptions = None) -> HeadCard | None:
    """The head's card, or ``None`` when the store holds no finished head ``head_id``
    (the store opened with the run's ``storage_options``)."""
    return cards.read_card(head_url(store, head_id), HeadCard.from_dict, storage_options)


def list_cards(store: str, storage_options: StorageOptions = None) -> list[HeadCard]:
    """Cards of every finished head in the store, oldest first."""
    return cards.list_cards(store, HEADS_DIR, HeadCard.from_dict, storage_options)
