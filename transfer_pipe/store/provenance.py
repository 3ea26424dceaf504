"""A feature set's provenance as records: what the embed run that completed it recorded
(``Completion``, kept in the version's metadata), and what ``transfer-pipe show`` prints
of a version (``Provenance``).

Both read what earlier versions of transfer-pipe wrote: a field added since (``device``,
the ``noted`` count) is None when absent and left out of the JSON form again, and keys a
record does not know are kept as they were, so a version reads and prints as written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from transfer_pipe.records import Record, known_fields
from transfer_pipe.store.base import FeatureSetInfo, FeatureSetSpec, FeatureStore


class _Written(Record):
    """A record read back from a version's metadata: absent optional fields (None) stay
    absent in its JSON form."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_dict().items() if v is not None}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], what: str = "a feature set's provenance") -> Self:
        """The record of ``raw`` (its JSON form); keys it does not know are dropped."""
        return cls(**known_fields(cls, raw, what))


@dataclass(frozen=True, kw_only=True)
class RowCounts(_Written):
    """The version's rows, and what became of them in the run that completed it."""

    rows: int
    failed: int
    noted: int | None = None  # images used with a note; recorded since notes exist
    embedded: int  # forward passes run by the run that completed it
    reused_from_other_sets: int  # rows copied from other lineages


@dataclass(frozen=True, kw_only=True)
class Completion(_Written):
    """What the embed run that completed a version recorded: when, with which libraries,
    where its forward passes ran, its row counts and its seconds per phase."""

    finished: str
    libraries: dict[str, str]
    device: str | None = None  # "cpu" | "cuda"; recorded since dry runs estimate by device
    counts: RowCounts
    seconds: dict[str, float]
    new_bytes: int | None = None  # added by the store as it completes the version
    migrated_from: str | None = None  # added by ``migrate`` to a version it moved

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], what: str = "a feature set's provenance") -> Self:
        values = known_fields(cls, raw, what)
        return cls(**{**values, "counts": RowCounts.from_dict(values["counts"], what)})


@dataclass(frozen=True)
class VersionFacts(Record):
    """A version's place in its lineage and what it changed, as ``show`` prints it."""

    lineage: str
    parent: str | None
    rows: int
    added: int
    removed: int
    changed: int
    new_bytes: int
    bytes: int  # what the version reads

    @classmethod
    def of(cls, info: FeatureSetInfo) -> VersionFacts:
        """The facts of the catalog line ``info`` (its ``nbytes`` named ``bytes``)."""
        same = {f.name for f in dataclasses.fields(cls)} - {"bytes"}
        return cls(bytes=info.nbytes, **{name: getattr(info, name) for name in same})


@dataclass(frozen=True, kw_only=True)
class Provenance(Record):
    """Everything ``show`` says of a version: its key, status and spec, its history in its
    lineage, what the run that completed it recorded (flat in the JSON form, as the store
    keeps it), and its failed and noted rows."""

    key: str
    status: str
    created: str | None
    spec: FeatureSetSpec
    changes: dict[str, Any]
    sequence: int
    completion: Completion | None  # None until the version is complete
    other: dict[str, Any] = field(default_factory=dict)  # recorded keys no field names
    version: VersionFacts
    failures: list[dict[Any, Any]]  # rows of the failures table
    notes: list[dict[Any, Any]]  # rows of the notes table

    @classmethod
    def read(cls, store: FeatureStore, key: str) -> Provenance:
        """The provenance of version ``key`` of ``store``."""
        raw = store.provenance(key)
        known = {"key", "status", "created", "spec", "changes", "sequence"}
        recorded = {k: v for k, v in raw.items() if k not in known}
        completion = Completion.from_dict(recorded) if "finished" in recorded else None
        written = set() if completion is None else {f.name for f in dataclasses.fields(Completion)}
        return cls(
            key=raw["key"],
            status=raw["status"],
            created=raw["created"],
            spec=store.spec(key),
            changes=raw["changes"],
            sequence=raw["sequence"],
            completion=completion,
            other={k: v for k, v in recorded.items() if k not in written},
            version=VersionFacts.of(store.info(key)),
            failures=store.failures(key).to_dict(orient="records"),
            notes=store.notes(key).to_dict(orient="records"),
        )

    def to_dict(self) -> dict[str, Any]:
        # The JSON form ``show --json`` always printed: the completion's fields and any
        # other recorded keys at the top level, beside the spec and the history.
        return {
            "key": self.key,
            "status": self.status,
            "created": self.created,
            "spec": self.spec.to_dict(),
            "changes": self.changes,
            "sequence": self.sequence,
            **({} if self.completion is None else self.completion.to_dict()),
            **self.other,
            "version": self.version.to_dict(),
            "failures": self.failures,
            "notes": self.notes,
        }
