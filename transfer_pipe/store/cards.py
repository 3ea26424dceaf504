"""Model cards beside the feature sets: ``<store>/<folder>/<id>/card.json``, one per fitted
head or fine-tuning run, and the one way such a folder is written and read.

:func:`save_with_card` writes the model files first and the card last, so **a card's
presence means the files are complete**. A folder without a card is unfinished (or was
never written): :func:`read_card` returns ``None`` for it and :func:`list_cards` skips it.
Callers decide what a missing card means to the user (``load_head`` raises, a fine-tuning
run trains).

Every function takes the run's ``storage_options`` (a JSON object's text or a mapping, as
``open_store`` does) and opens the folder with them over the protocol's defaults
(``store.options``): a model beside the feature sets is read and written with the same
endpoint and credentials as the feature sets themselves.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from fsspec.core import url_to_fs
from fsspec.spec import AbstractFileSystem

from transfer_pipe.preprocessing import Preprocessing
from transfer_pipe.records import Record, known_fields
from transfer_pipe.store.keys import content_id
from transfer_pipe.store.options import store_options

CARD = "card.json"


class Card(Protocol):
    """What the store needs of a card: its id, when it was made, and its JSON form."""

    @property
    def card_id(self) -> str: ...

    @property
    def created(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


C = TypeVar("C", bound=Card)
CardParser = Callable[[Mapping[str, Any]], C]


@dataclass(frozen=True)
class TaskRef(Record):
    """The task a model was trained for, as its card records it (``Task.to_dict()`` and
    the digest that identifies the label definition)."""

    name: str
    digest: str
    mapping: dict[str, str] | None = None
    labels_file: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(**known_fields(cls, data, "a card's task"))


@dataclass(frozen=True)
class SplitSizes(Record):
    """Rows per split, where the split came from (the source's, or stratified with a seed),
    and the usable rows the task gave no label."""

    train: int
    val: int
    test: int
    origin: str
    dropped: int = 0

    @property
    def sizes(self) -> dict[str, int]:
        """Rows per split, by split name."""
        return {"train": self.train, "val": self.val, "test": self.test}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(**known_fields(cls, data, "a card's splits"))


@dataclass(frozen=True, kw_only=True)
class LayerChoice(Record):
    """The layer a heads run read, ``how`` it was chosen (``given`` with ``--layer``, a
    ``sweep``'s advice, on ``validation``, or the feature set's ``only layer``) and why, in
    one sentence; ``candidates`` maps each layer weighed on validation to the probe's
    validation accuracy on it (empty unless ``how`` is ``validation``)."""

    layer: str
    how: str
    reason: str
    candidates: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(**known_fields(cls, data, "a layer choice"))

    @classmethod
    def read(cls, data: Mapping[str, Any] | None) -> Self | None:
        """The record as a card holds it (None: given, or a card written before it)."""
        return None if data is None else cls.from_dict(data)

    def describe(self) -> str:
        """``stages.4, chosen on validation: <reason>``: for reports."""
        return f"{self.layer}, chosen {_HOW[self.how]}: {self.reason}"


_HOW = {
    "given": "by --layer",
    "sweep": "by a sweep",
    "validation": "on validation",
    "only layer": "as the only layer",
}


@dataclass(frozen=True)
class ModelCard(Record):
    """What every model card records (a head's and a fine-tuning run's add their own):
    the feature set and where it came from, the weights and preprocessing, the task, its
    classes and split, the library versions and when it was made."""

    feature_set: str
    store: str
    source: str
    backbone: str
    weights_digest: str
    preprocessing: Preprocessing
    task: TaskRef
    classes: list[str]
    splits: SplitSizes
    libraries: dict[str, str]
    created: str

    @classmethod
    def _read_fields(cls, data: Mapping[str, Any], what: str) -> dict[str, Any]:
        """``cls``'s fields from ``data`` (see ``known_fields``), the shared nested ones
        parsed; a subclass's ``from_dict`` parses its own nested fields on top."""
        fields = known_fields(cls, data, what)
        fields["preprocessing"] = Preprocessing.from_dict(fields["preprocessing"])
        fields["task"] = TaskRef.from_dict(fields["task"])
        fields["splits"] = SplitSizes.from_dict(fields["splits"])
        return fields


def card_folder(store: str, folder: str, card_id: str) -> str:
    """``<store>/<folder>/<card_id>``: where one model's files and card live."""
    return posixpath.join(store.rstrip("/"), folder, card_id)


def store_fs(
    url: str, storage_options: str | Mapping[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """(filesystem, path) of ``url``, a folder in or under a store, opened with the run's
    ``storage_options`` over the protocol's defaults (see ``store.options``)."""
    return url_to_fs(url, **store_options(url, storage_options))


def save_with_card(
    url: str,
    files: Iterable[Path],
    card: Card,
    storage_options: str | Mapping[str, Any] | None = None,
) -> str:
    """Copy the local ``files`` into the folder ``url``, then write ``card`` last; returns
    ``url``.

    An earlier card is removed first, so from then until the new one lands the folder reads
    as unfinished; files an earlier save left directly in the folder are removed too (no
    stale report or model survives a rewrite), sub-folders (a local run's checkpoints) stay.
    """
    fs, path = store_fs(url, storage_options)
    card_path = posixpath.join(path, CARD)
    if fs.exists(card_path):
        fs.rm_file(card_path)
    if fs.exists(path):
        for entry in fs.ls(path, detail=True):
            if entry["type"] == "file":
                fs.rm_file(entry["name"])
    fs.makedirs(path, exist_ok=True)
    for local in files:
        fs.put_file(str(local), posixpath.join(path, local.name))
    # Written aside and moved into place: a crash mid-write leaves no half card to parse.
    partial = card_path + ".partial"
    fs.pipe_file(partial, json.dumps(card.to_dict(), indent=2).encode())
    fs.mv(partial, card_path)
    return url


def read_card(
    url: str, parse: CardParser[C], storage_options: str | Mapping[str, Any] | None = None
) -> C | None:
    """The card in the folder ``url``, or ``None`` when it has none (never written, or a
    save that did not finish)."""
    fs, path = store_fs(posixpath.join(url, CARD), storage_options)
    try:
        with fs.open(path, "r") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    return parse(data)


def list_cards(
    store: str,
    folder: str,
    parse: CardParser[C],
    storage_options: str | Mapping[str, Any] | None = None,
) -> list[C]:
    """Every finished card under ``<store>/<folder>/*/``, oldest first."""
    fs, path = store_fs(posixpath.join(store.rstrip("/"), folder), storage_options)
    if not fs.exists(path):
        return []
    cards = []
    for card_path in fs.glob(posixpath.join(path, "*", CARD)):
        with fs.open(card_path, "r") as f:
            cards.append(parse(json.load(f)))
    return sorted(cards, key=lambda card: (card.created, card.card_id))


R = TypeVar("R", bound=Record)
CACHE_DIR = "cache"  # store.hash_cache.CACHE_FOLDER: marked as not-Zarr data (store.layout)


def cached_record(
    store: str,
    folder: str,
    identity: object,
    make: Callable[[], R],
    parse: Callable[[Mapping[str, Any]], R],
    storage_options: str | Mapping[str, Any] | None = None,
) -> R:
    """The record cached under ``<store>/cache/<folder>/`` for ``identity`` (anything
    JSON-able that determines it), else ``make()``'s, written there first: what a rerun
    would compute again from the same stored features (a layer's screens, a layer choice)."""
    name = content_id(identity, 16) + ".json"
    fs, path = store_fs(posixpath.join(store.rstrip("/"), CACHE_DIR, folder, name), storage_options)
    if fs.exists(path):
        with fs.open(path, "r") as f:
            return parse(json.load(f))
    record = make()
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, record.to_json().encode())
    return record
