"""The FeatureStore interface: what every store implementation promises.

A feature set is a **version** of a **lineage**: the embeddings of one source under one
model configuration (``LineageSpec``). The lineage's arrays only grow: a version shares
every row its lineage already holds for the same content, and appends the others in
whole shards. A version is its row table (sample id -> lineage row) plus its spec; its
key is content-addressed as before (``store.keys``), so the same data gives the same key.

Write protocol (what makes a killed run safe to resume):
1. ``create`` plans the version (rows shared, rows appended), grows the lineage's arrays
   and writes the row table, then marks the version initialized (a half-created one is
   recreated from scratch);
2. each appended shard's task writes only the objects of its lineage shard
   (``write_shard``), and marks itself done last;
3. ``mark_complete`` is called once every shard is done, by the one driver process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from transfer_pipe.preprocessing import Preprocessing
from transfer_pipe.records import Record
from transfer_pipe.schema import FAILURE, SAMPLE_ID, URI
from transfer_pipe.store.claims import Claim, Holder

if TYPE_CHECKING:
    from transfer_pipe.store.hash_cache import HashCache
    from transfer_pipe.store.integrity import Damage

Status = Literal["missing", "incomplete", "complete"]


@dataclass(frozen=True)
class LineageSpec(Record):
    """What the versions of one lineage share: the source and the model configuration
    (everything that decides a row's values from its image), and the arrays' shard size."""

    lineage: str
    source: str
    embedding_key: str
    backbone: str
    weights_digest: str
    preprocessing: Preprocessing
    layers: tuple[str, ...]
    layer_dims: dict[str, int]
    dtype: str
    shard_size: int
    backbone_metadata: dict[str, Any] = field(default_factory=dict)
    weights_file: str | None = None
    autocast: str = "none"

    def shard_of(self, row: int) -> int:
        return row // self.shard_size

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LineageSpec:
        """A lineage spec from its JSON form."""
        return cls(**_spec_fields(cls, raw))


@dataclass(frozen=True)
class FeatureSetSpec(Record):
    """Everything that determines a feature set's values, plus where its rows live.

    ``rows`` is the version's row count; its new rows are ``appended`` rows of its
    lineage from shard ``first_shard`` on (``new_shards``), the rest it shares."""

    key: str
    embedding_key: str
    source: str
    backbone: str
    weights_digest: str
    preprocessing: Preprocessing
    layers: tuple[str, ...]
    layer_dims: dict[str, int]
    dtype: str
    data_digest: str
    rows: int
    shard_size: int
    backbone_metadata: dict[str, Any] = field(default_factory=dict)
    # The local weights file the features were embedded with (an absolute path), None
    # for the backbone id's own weights: fine-tuning loads the very same weights again.
    weights_file: str | None = None
    autocast: str = "none"  # the forward pass's precision (part of embedding_key)
    lineage: str = ""  # store.keys.lineage_id of (source, embedding key, layers)
    parent: str | None = None  # the lineage's newest complete version when this one began
    first_shard: int = 0  # the lineage shard its first appended row starts
    appended: int = -1  # rows it appended (-1: not planned yet; ``create`` plans it)

    @property
    def n_shards(self) -> int:
        """How many lineage shards this version appended (its shard tasks)."""
        return -(-max(self.appended, 0) // self.shard_size)

    @property
    def new_shards(self) -> range:
        """The lineage shards this version appended."""
        return range(self.first_shard, self.first_shard + self.n_shards)

    def shard_rows(self, shard: int) -> range:
        """The lineage rows of shard ``shard`` this version appended (all of one Zarr shard
        of every per-row array, but the unused tail of its last one)."""
        start = shard * self.shard_size
        end = self.first_shard * self.shard_size + max(self.appended, 0)
        return range(start, max(start, min(start + self.shard_size, end)))

    def lineage_spec(self) -> LineageSpec:
        return LineageSpec(**{f.name: getattr(self, f.name) for f in fields(LineageSpec)})

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FeatureSetSpec:
        """A spec from its JSON form (the ``spec`` attribute)."""
        return cls(**_spec_fields(cls, raw))


def _spec_fields(cls: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of spec class ``cls`` from its JSON form (keys it does not know are
    left out: a newer release's spec still reads)."""
    names = {f.name for f in fields(cls)}
    values = {name: value for name, value in raw.items() if name in names}
    return {
        **values,
        "layers": tuple(values["layers"]),
        "preprocessing": Preprocessing.from_dict(values["preprocessing"]),
    }


@dataclass(frozen=True)
class ShardStats:
    embedded: int  # rows computed by a forward pass
    reused: int  # rows copied from another feature set by content hash
    seconds: float


@dataclass(frozen=True)
class FeatureSetInfo(Record):
    """One line of the catalog: a version, and what it changed against its parent."""

    key: str
    source: str
    backbone: str
    layers: tuple[str, ...]
    rows: int
    failed: int
    status: Status
    nbytes: int
    created: str
    lineage: str = ""
    parent: str | None = None
    added: int = 0  # sample ids new against the parent (all rows for a first version)
    removed: int = 0  # sample ids of the parent it leaves out
    changed: int = 0  # sample ids whose content changed (in neither count above)
    new_bytes: int = 0  # bytes this version wrote: its appended shards and its table
    sequence: int = 0  # its place in its lineage's history (0: the first version)


@dataclass(frozen=True)
class LoadedFeatures:
    """Features of one layer with their labels and sample ids, aligned row by row."""

    features: Any  # numpy.ndarray or dask.array.Array, shape [n, dim]
    labels: np.ndarray
    sample_ids: np.ndarray
    splits: np.ndarray


class FeatureStore(ABC):
    """A catalog of versioned feature sets addressed by content key."""

    url: str

    @abstractmethod
    def ensure_writable(self) -> None:
        """Fail early, before anything is written, when the store cannot be written to."""

    @abstractmethod
    def status(self, key: str) -> Status: ...

    @abstractmethod
    def claim(
        self,
        name: str,
        *,
        done: Callable[[], bool],
        waiting: Callable[[Holder], None] = lambda holder: None,
    ) -> Claim | None:
        """Take the claim ``name`` (a lineage id: ``store.claims``): returns it, held and
        renewed until ``release()``, once no other live run holds it; None as soon as
        ``done()`` is true (the other run finished the work). Only a holder may create a
        version of the lineage, write its shards, complete it or collect its garbage."""

    @abstractmethod
    def create(self, spec: FeatureSetSpec, rows: pd.DataFrame) -> None:
        """Start version ``spec.key`` of lineage ``spec.lineage`` (created when new) with
        the manifest ``rows`` (ROW_COLUMNS): rows whose content the lineage holds share
        its rows, the others are appended in new shards. ``spec(key)`` then says where."""

    @abstractmethod
    def spec(self, key: str) -> FeatureSetSpec: ...

    @abstractmethod
    def recover(self, key: str) -> int:
        """Remove what a killed writer left half-done (never a finished object); returns
        how many leftovers were removed. Called before resuming a version."""

    @abstractmethod
    def pending_shards(self, key: str) -> list[int]:
        """The lineage shards the version's rows live in that are not written yet (its
        appended ones, and any that a repair cleared)."""

    def shards_done(self, key: str) -> np.ndarray:
        """Boolean mask over the version's appended shards: True where written."""
        pending = set(self.pending_shards(key))
        return np.array([shard not in pending for shard in self.spec(key).new_shards], bool)

    @abstractmethod
    def write_shard(
        self,
        key: str,
        shard: int,
        features: Mapping[str, np.ndarray],
        failures: Sequence[str],
        stats: ShardStats,
        hashes: Sequence[str] | None = None,
        notes: Mapping[int, str] | None = None,
    ) -> None:
        """Write lineage shard ``shard`` for version ``key``: its first ``len(failures)``
        rows (failed rows: NaN features and a non-empty reason), their content ``hashes``
        (by default those the version recorded for the rows it appended), then its record
        (the shard's done marker), which keeps ``notes`` (offset -> what decoding noted
        about a row it used)."""

    @abstractmethod
    def copy_shard(self, key: str, shard: int, donor: str, donor_shard: int) -> bool:
        """Copy shard ``donor_shard`` of lineage ``donor`` whole, as shard ``shard`` of
        version ``key``'s lineage, when the two line up (same rows by content, same array
        layout, no failed rows); False, having written nothing, when they do not."""

    @abstractmethod
    def read_rows(self, key: str, layer: str, rows: np.ndarray) -> np.ndarray:
        """Features of the version's rows ``rows`` (positions in its row table)."""

    @abstractmethod
    def read_lineage_rows(self, lineage: str, layer: str, rows: np.ndarray) -> np.ndarray:
        """Features of rows ``rows`` of lineage ``lineage`` (its own row numbers)."""

    @abstractmethod
    def row_table(self, key: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """ROW_COLUMNS plus ``failure`` (empty when the row is good), ``row`` (the lineage
        row) and ``done``; ``columns`` picks some of the string columns (``row`` and
        ``done`` are always there)."""

    @abstractmethod
    def lineages(self) -> list[LineageSpec]:
        """Every lineage of the store."""

    @abstractmethod
    def lineage_spec(self, lineage: str) -> LineageSpec:
        """Lineage ``lineage``'s spec; a TransferPipeError when the store has none."""

    @abstractmethod
    def lineage_rows(self, lineage: str) -> pd.DataFrame:
        """Per written row of lineage ``lineage`` (indexed by its row): content_hash and
        failure; rows of shards not written are left out."""

    @abstractmethod
    def shard_stats(self, key: str) -> pd.DataFrame:
        """Per appended shard: done, embedded, reused, seconds."""

    @abstractmethod
    def mark_complete(self, key: str, provenance: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def provenance(self, key: str) -> dict[str, Any]: ...

    @abstractmethod
    def list_keys(self) -> list[str]:
        """Keys of all initialized versions."""

    @abstractmethod
    def nbytes(self, key: str) -> int:
        """Bytes of what the version reads: its table and the shards its rows live in."""

    @abstractmethod
    def store_nbytes(self) -> int:
        """Bytes of the whole store."""

    @abstractmethod
    def load(
        self,
        key: str,
        *,
        split: str | None = None,
        layer: str | None = None,
        sample_ids: Sequence[str] | None = None,
        as_dask: bool = False,
    ) -> LoadedFeatures: ...

    @abstractmethod
    def verify(self, key: str, repair: bool = False) -> Damage:
        """Read version ``key`` end to end: what is damaged (``integrity.Damage``); with
        ``repair``, damaged shards are cleared (not done) so an embed recomputes them."""

    @abstractmethod
    def hash_cache(self, source: str, rehash: bool = False) -> HashCache:
        """The content hashes of source ``source`` (its cache id) remembered by file stamp
        in this store: a run lists a source, and reads only the files that changed."""

    @abstractmethod
    def note_folder(self, name: str, holds: str) -> None:
        """Mark the store-root folder ``name`` as holding files that are not Zarr data."""

    # -- retention (``store.retention`` decides; these only carry it out) ---------------

    @abstractmethod
    def shards_of(self, key: str) -> set[int]:
        """The lineage shards version ``key``'s rows live in (and the ones it appended)."""

    @abstractmethod
    def own_nbytes(self, key: str) -> int:
        """Bytes of the version's own files (its table and metadata), not its rows."""

    @abstractmethod
    def drop_version(self, key: str) -> int:
        """Remove version ``key`` (its marker first: a kill leaves it missing, never
        half-read); returns the bytes freed."""

    @abstractmethod
    def leftover_versions(self) -> list[str]:
        """Versions whose removal was cut short (their marker gone, files left)."""

    @abstractmethod
    def drop_shards(self, lineage: str, shards: Sequence[int]) -> int:
        """Remove the objects of ``shards`` of lineage ``lineage`` (each record first: a
        kill leaves the shard not done, never half-read); returns the bytes freed."""

    @abstractmethod
    def drop_lineage(self, lineage: str) -> int:
        """Remove lineage ``lineage`` once no version is left on it; the bytes freed."""

    @abstractmethod
    def written_shards(self, lineage: str) -> dict[int, int]:
        """Lineage shard -> bytes stored, for every shard with an object in the store."""

    def legacy_keys(self) -> list[str]:
        """Keys of feature sets an earlier release wrote, that ``migrate`` turns into
        versions (none for a store that never had any)."""
        return []

    # Behaviour shared by every implementation, built on the primitives above.

    @abstractmethod
    def notes(self, key: str) -> pd.DataFrame:
        """The notes beside the failures table: sample_id, uri, note, for the version's
        rows that decoding used with a caveat (a colour profile it could not use)."""

    def failures(self, key: str) -> pd.DataFrame:
        """The failures table: sample_id, uri, reason."""
        table = self.row_table(key, columns=(SAMPLE_ID, URI, FAILURE))
        bad = table[table[FAILURE] != ""]
        return bad.loc[:, [SAMPLE_ID, URI, FAILURE]].rename(columns={FAILURE: "reason"})

    def info(self, key: str) -> FeatureSetInfo:
        prov = self.provenance(key)
        spec = self.spec(key)
        changes = prov.get("changes") or {}
        return FeatureSetInfo(
            key=key,
            source=spec.source,
            backbone=spec.backbone,
            layers=spec.layers,
            rows=spec.rows,
            failed=self.failed_count(key, prov),
            status=self.status(key),
            nbytes=self.nbytes(key),
            created=str(prov.get("created", "")),
            lineage=spec.lineage,
            parent=spec.parent,
            added=int(changes.get("added", spec.rows if spec.parent is None else 0)),
            removed=int(changes.get("removed", 0)),
            changed=int(changes.get("changed", 0)),
            new_bytes=int(prov.get("new_bytes", 0)),
            sequence=int(prov.get("sequence", 0)),
        )

    def failed_count(self, key: str, provenance: Mapping[str, Any] | None = None) -> int:
        """How many of version ``key``'s images failed: the count recorded when it was
        completed (``ls`` and a rerun then read no failure column), else counted."""
        return self._recorded(key, "failed", provenance, lambda: len(self.failures(key)))

    def noted_count(self, key: str, provenance: Mapping[str, Any] | None = None) -> int:
        """How many of version ``key``'s images decoding used with a note: recorded when it
        was completed, else counted (a version completed before notes existed)."""
        return self._recorded(key, "noted", provenance, lambda: len(self.notes(key)))

    def _recorded(
        self,
        key: str,
        name: str,
        provenance: Mapping[str, Any] | None,
        count: Callable[[], int],
    ) -> int:
        provenance = self.provenance(key) if provenance is None else provenance
        counts = provenance.get("counts") or {}
        recorded = counts.get(name) if isinstance(counts, Mapping) else None
        return int(recorded) if recorded is not None else count()

    def catalog(self) -> list[FeatureSetInfo]:
        """Every version, by lineage, oldest first."""
        infos = [self.info(key) for key in self.list_keys()]
        return sorted(infos, key=lambda info: (info.lineage, info.sequence, info.key))
