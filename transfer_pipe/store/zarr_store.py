"""The FeatureStore on Zarr v3: a local folder by default, any fsspec URL by design.

Lineages hold the rows, versions pick them (``store.layout``). A version is the group
``versions/<key>/`` with attrs ``spec``, ``status``, ``created``, ``changes`` and, once
complete, ``provenance``, and its row table; a lineage is ``lineages/<id>/`` with attrs
``lineage`` (its spec), ``layout`` and ``head`` (its newest complete version). A shard task
writes the objects of its lineage shard and then its record (its done marker); the driver
(the lineage's claim holder) writes everything else.

A damaged object (its checksum fails, its metadata does not parse) met by any read is a
``TransferPipeError`` naming the version, the damaged shards and the fix
(``transfer-pipe verify KEY --store STORE --repair``, then embed again).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import fsspec
import numpy as np
import pandas as pd
import zarr
import zarr.storage

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.files import is_local
from transfer_pipe.schema import CONTENT_HASH, FAILURE, LABEL, ROW_COLUMNS, SAMPLE_ID, SPLIT, URI
from transfer_pipe.store import integrity, shard_copy
from transfer_pipe.store.base import (
    FeatureSetSpec,
    FeatureStore,
    LineageSpec,
    LoadedFeatures,
    ShardStats,
    Status,
)
from transfer_pipe.store.claims import Claim, Holder
from transfer_pipe.store.claims import take as take_claim
from transfer_pipe.store.hash_cache import HashCache, cache_url
from transfer_pipe.store.integrity import Damage, DamagedFeatureSet
from transfer_pipe.store.layout import (
    APPENDED_FILE,
    CLAIMS,
    FEATURES,
    FOREIGN_FOLDERS,
    LAYOUT_VERSION,
    LEGACY_SETS,
    LINEAGES,
    LOST,
    RECORDS,
    ROW,
    STATS,
    TABLE,
    TABLE_COLUMNS,
    TABLE_FILE,
    VERSIONS,
    create_lineage_arrays,
    describe,
    lineage_arrays,
    mark_foreign,
    read_parquet,
    shard_objects,
    shareable,
)
from transfer_pipe.store.reads import GuardedFeatures, guarded, read_all, read_spans

T = TypeVar("T")
logger = logging.getLogger(__name__)
ShardRecord = dict[str, Any]  # {"rows", "embedded", "reused", "seconds", "failures", "version"}
_SHARD_OBJECT = re.compile(r"/c/(\d+)(?:/0)?$")


class ZarrFeatureStore(FeatureStore):
    """Lineages and versions in one Zarr v3 hierarchy at ``url`` (a path or fsspec URL)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self._storage_options = dict(storage_options or {})
        self._fs, self._path = fsspec.core.url_to_fs(url, **self._storage_options)
        # Opening a group or array reads its metadata: a few round trips that would
        # otherwise be paid again for every shard a worker writes or copies from.
        self._specs: dict[str, FeatureSetSpec] = {}
        self._lineages: dict[str, LineageSpec] = {}
        self._arrays: dict[tuple[str, str, bool], zarr.Array] = {}
        self._tables: dict[str, pd.DataFrame] = {}  # written once: never change
        self._appended: dict[str, dict[int, str]] = {}

    def __repr__(self) -> str:
        return f"ZarrFeatureStore({self.url!r})"

    # -- paths ----------------------------------------------------------------------------

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem under the store (for the files Zarr does not read)."""
        return self._fs

    @property
    def root(self) -> str:
        return self._path.rstrip("/")

    def folder(self, key: str) -> str:
        """Version ``key``'s folder, as a path of ``fs``."""
        return f"{self.root}/{VERSIONS}/{key}"

    def lineage_folder(self, lineage: str) -> str:
        return f"{self.root}/{LINEAGES}/{lineage}"

    def table_path(self, key: str, name: str = TABLE_FILE) -> str:
        """Where version ``key``'s Parquet table of rows (or ``name``) is."""
        return f"{self.folder(key)}/{TABLE}/{name}"

    def zarr_store(self, read_only: bool = True) -> zarr.storage.StoreLike:
        """The Zarr store object under this feature store."""
        if is_local(self.url):
            # LocalStore writes each chunk to a temporary file and renames it: atomic.
            return zarr.storage.LocalStore(self._path, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(
            self.url, storage_options=self._storage_options, read_only=read_only
        )

    # -- opening ----------------------------------------------------------------------------

    def _open(self, path: str, mode: str = "r") -> zarr.Group:
        """The group at ``path``; FileNotFoundError when there is none, ValueError (and
        kin) when its ``zarr.json`` does not parse."""
        store = self.zarr_store(read_only=mode == "r")
        # zarr_format=3: else Zarr also asks for the three v2 documents (4 requests).
        return zarr.open_group(store, path=path, mode="r" if mode == "r" else "r+", zarr_format=3)

    def _version_attrs(self, key: str) -> dict[str, Any]:
        """Version ``key``'s attributes; FileNotFoundError when there is none."""
        path = f"{VERSIONS}/{key}"
        try:
            return dict(self._open(path).attrs.asdict())
        except FileNotFoundError:
            raise
        except (ValueError, TypeError, KeyError) as err:  # JSONDecodeError is a ValueError
            raise DamagedFeatureSet(self.url, key, [f"metadata {path}/zarr.json"]) from err

    def _known_attrs(self, key: str) -> dict[str, Any]:
        try:
            return self._version_attrs(key)
        except FileNotFoundError as err:
            raise TransferPipeError(self._not_here(key)) from err

    def _not_here(self, key: str) -> str:
        if self._fs.exists(f"{self.root}/{LEGACY_SETS}/{key}/zarr.json"):
            return (
                f"feature set {key} in {self.url} was written by an earlier release (one "
                f"full copy per feature set); run `transfer-pipe migrate --store {self.url}` "
                "once: it keeps every key and shares the rows of each source's versions."
            )
        return (
            f"feature set {key!r} is not in the store {self.url}; "
            f"`transfer-pipe ls --store {self.url}` lists the feature sets it holds."
        )

    def lineage_spec(self, lineage: str) -> LineageSpec:
        if lineage not in self._lineages:
            attrs = self._lineage_attrs(lineage)
            self._lineages[lineage] = LineageSpec.from_dict(attrs["lineage"])
        return self._lineages[lineage]

    def _lineage_attrs(self, lineage: str) -> dict[str, Any]:
        path = f"{LINEAGES}/{lineage}"
        try:
            attrs = dict(self._open(path).attrs.asdict())
        except FileNotFoundError as err:
            raise TransferPipeError(
                f"lineage {lineage} is not in the store {self.url}: its versions cannot be "
                f"read; `transfer-pipe ls --store {self.url}` lists what it holds."
            ) from err
        except (ValueError, TypeError, KeyError) as err:
            raise DamagedFeatureSet(self.url, lineage, [f"metadata {path}/zarr.json"]) from err
        if "lineage" not in attrs:
            raise DamagedFeatureSet(self.url, lineage, [f"metadata {path}/zarr.json"])
        return attrs

    def array(self, lineage: str, name: str, writable: bool = False, rows: int = 0) -> zarr.Array:
        """Array ``name`` of ``lineage``, opened once per store object (again when it is
        shorter than ``rows``: another process grew it)."""
        cached = self._arrays.get((lineage, name, writable))
        if cached is not None and cached.shape[0] >= rows:
            return cached
        path = f"{LINEAGES}/{lineage}/{name}"
        try:
            array = zarr.open_array(
                self.zarr_store(read_only=not writable),
                path=path,
                mode="r" if not writable else "r+",
            )
        except FileNotFoundError as err:
            raise TransferPipeError(f"lineage {lineage} has no array {name} in {self.url}") from err
        except (ValueError, TypeError, KeyError) as err:
            raise DamagedFeatureSet(self.url, lineage, [f"metadata {path}/zarr.json"]) from err
        self._arrays[(lineage, name, writable)] = array
        return array

    def _forget(self, key: str | None = None, lineage: str | None = None) -> None:
        """Drop what was cached of ``key`` and ``lineage`` (about to change)."""
        if key is not None:
            self._specs.pop(key, None)
            self._tables.pop(key, None)
            self._appended.pop(key, None)
        if lineage is not None:
            self._lineages.pop(lineage, None)
            self._arrays = {k: v for k, v in self._arrays.items() if k[0] != lineage}

    def ensure_writable(self) -> None:
        """Fail early, before anything is written, when the store cannot be written to."""
        probe = f"{self.root}/.write-probe-{uuid.uuid4().hex}"
        try:
            self._fs.makedirs(self._path, exist_ok=True)
            self._fs.pipe_file(probe, b"ok")
            self._fs.rm_file(probe)
        except OSError as err:
            raise TransferPipeError(
                f"cannot write to the feature store {self.url} ({err.__class__.__name__}: "
                f"{err}); pass --store with a folder or URL you can write to."
            ) from err

    def hash_cache(self, source: str, rehash: bool = False) -> HashCache:
        return HashCache(cache_url(self.url, source), self._storage_options, rehash=rehash)

    def note_folder(self, name: str, holds: str) -> None:
        root = zarr.open_group(self.zarr_store(read_only=False), mode="a")
        mark_foreign(root, name, holds)

    # -- status and creation ------------------------------------------------------------

    def claim(
        self,
        name: str,
        *,
        done: Callable[[], bool],
        waiting: Callable[[Holder], None] = lambda holder: None,
    ) -> Claim | None:
        folder = f"{self.root}/{CLAIMS}/{name}"
        self._fs.makedirs(folder, exist_ok=True)  # a disk wants the folder; S3 has none
        return take_claim(self._fs, folder, done=done, waiting=waiting)

    def status(self, key: str) -> Status:
        """``missing`` also for a half-created version; a damaged ``zarr.json`` raises
        DamagedFeatureSet rather than passing for missing (a rerun would overwrite it), and
        a feature set of the earlier layout raises the one line that says to migrate."""
        status = self.version_status(key)
        if status == "missing" and self._fs.exists(f"{self.root}/{LEGACY_SETS}/{key}/zarr.json"):
            raise TransferPipeError(self._not_here(key))
        return status

    def version_status(self, key: str) -> Status:
        """``status`` without looking for a feature set of the earlier layout."""
        try:
            attrs = self._version_attrs(key)
        except FileNotFoundError:
            return "missing"
        if "spec" not in attrs or attrs.get("layout") != LAYOUT_VERSION:
            return "missing"  # creation was interrupted: nothing in it is trusted
        return "complete" if attrs.get("status") == "complete" else "incomplete"

    def create(self, spec: FeatureSetSpec, rows: pd.DataFrame) -> None:
        if len(rows) != spec.rows:
            raise ValueError(f"spec says {spec.rows} rows, table has {len(rows)}")
        if not spec.lineage:
            raise ValueError(f"spec {spec.key} names no lineage")
        self._forget(spec.key, spec.lineage)
        self._recover_hierarchy()  # a run killed while creating may have left some
        root = zarr.open_group(self.zarr_store(read_only=False), mode="a")
        for folder, holds in FOREIGN_FOLDERS.items():
            mark_foreign(root, folder, holds)
        lineage = self._ensure_lineage(root, spec)
        spec = dataclasses.replace(spec, shard_size=lineage.shard_size)
        lineage_attrs = self._lineage_attrs(spec.lineage)
        head = lineage_attrs.get("head")
        # The version's place in its lineage's history: clocks of machines may disagree,
        # and two versions may begin within one clock tick.
        sequence = int(lineage_attrs.get("versions", 0))
        known = self.lineage_rows(spec.lineage)
        table, appended, spec = _plan_rows(spec, rows, known, self._start(spec, lineage_attrs))
        spec = dataclasses.replace(spec, parent=head)
        # The shards it appends are reserved before anything is written for it: a kill
        # from here on leaves them to this key's next attempt, never to another version.
        end = max(int(lineage_attrs.get("end", 0)), spec.first_shard + spec.n_shards)
        reserved: dict[str, str | int] = {"key": spec.key, "first_shard": spec.first_shard}
        self._open(f"{LINEAGES}/{spec.lineage}", mode="a").attrs.update(
            {"end": end, "reserved": reserved, "versions": sequence + 1}
        )
        group = root.require_group(VERSIONS).create_group(spec.key, overwrite=True)
        mark_foreign(group, TABLE, f"{TABLE_FILE}: the version's rows; {APPENDED_FILE}: its new")
        self._write_parquet(self.table_path(spec.key, APPENDED_FILE), appended)
        self._write_parquet(self.table_path(spec.key), table)
        self._grow(spec)
        # The spec is written last: its presence is what marks the version initialized.
        group.attrs.update(
            {
                "spec": spec.to_dict(),
                "status": "incomplete",
                "created": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "changes": self._changes(head, table),
                "sequence": sequence,
                "layout": LAYOUT_VERSION,
            }
        )

    def _ensure_lineage(self, root: zarr.Group, spec: FeatureSetSpec) -> LineageSpec:
        """The lineage of ``spec``, created with its empty arrays when new."""
        wanted = spec.lineage_spec()
        try:
            have = self.lineage_spec(spec.lineage)
        except DamagedFeatureSet:
            if self._versions_of(spec.lineage):
                raise  # never remade over the rows versions read: `verify --repair` first
            return self._new_lineage(root, wanted)  # a creation a kill cut short
        except TransferPipeError:
            return self._new_lineage(root, wanted)
        if (have.layer_dims, have.dtype) != (wanted.layer_dims, wanted.dtype):
            raise TransferPipeError(
                f"lineage {spec.lineage} in {self.url} holds layers {have.layer_dims} in "
                f"{have.dtype}, this run makes {wanted.layer_dims} in {wanted.dtype}: the "
                "store is damaged; `transfer-pipe verify` names what."
            )
        return have

    def _versions_of(self, lineage: str) -> list[str]:
        """Keys of the versions (initialized) of ``lineage``."""
        found = []
        for key in self.list_keys():
            try:
                if self.spec(key).lineage == lineage:
                    found.append(key)
            except TransferPipeError:
                continue
        return found

    def _new_lineage(self, root: zarr.Group, wanted: LineageSpec) -> LineageSpec:
        """Create lineage ``wanted`` with its empty arrays (its attributes last: they mark
        it created)."""
        group = root.require_group(LINEAGES).create_group(wanted.lineage, overwrite=True)
        create_lineage_arrays(group, wanted)
        group.attrs.update(
            {
                "lineage": wanted.to_dict(),
                "layout": describe(wanted),
                "created": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "head": None,
            }
        )
        self._forget(lineage=wanted.lineage)
        return wanted

    def _start(self, spec: FeatureSetSpec, attrs: Mapping[str, Any]) -> int:
        """The lineage row where version ``spec``'s new rows start: where an attempt of
        the same key that a kill cut short reserved them (none of them written yet), else
        past every shard reserved."""
        reserved = attrs.get("reserved") or {}
        end = int(attrs.get("end", 0))
        first = int(reserved.get("first_shard", end))
        if reserved.get("key") == spec.key and not self.records(spec.lineage, range(first, end)):
            return first * spec.shard_size
        return end * spec.shard_size

    def _grow(self, spec: FeatureSetSpec) -> None:
        """Grow every array of the lineage to hold the version's appended shards (never
        shrinks: growing writes only each array's ``zarr.json``)."""
        shards = spec.first_shard + spec.n_shards
        lineage = self.lineage_spec(spec.lineage)
        for name in lineage_arrays(lineage):
            array = self.array(spec.lineage, name, writable=True)
            want = shards if name == RECORDS else shards * spec.shard_size
            if array.shape[0] < want:
                array.resize((want, *array.shape[1:]))
        self._forget(lineage=spec.lineage)

    def _changes(self, parent: str | None, table: pd.DataFrame) -> dict[str, int]:
        """Sample ids added, removed and changed (new content: another row) against
        ``parent``."""
        if parent is None:
            return {"added": len(table), "removed": 0, "changed": 0}
        before = self._table(parent).set_index(SAMPLE_ID)[ROW]
        after = table.set_index(SAMPLE_ID)[ROW]
        both = before.index.intersection(after.index)
        return {
            "added": len(after.index.difference(before.index)),
            "removed": len(before.index.difference(after.index)),
            "changed": int((before.loc[both] != after.loc[both]).sum()),
        }

    def spec(self, key: str) -> FeatureSetSpec:
        if key not in self._specs:
            attrs = self._known_attrs(key)
            if "spec" not in attrs:
                raise TransferPipeError(self._not_here(key))
            self._specs[key] = FeatureSetSpec.from_dict(attrs["spec"])
        return self._specs[key]

    def recover(self, key: str) -> int:
        # A local chunk write goes to "<name>.<uuid>.partial" and is renamed when whole;
        # a SIGKILL in between leaves the partial file (and the old chunk, if any).
        spec = self.spec(key)
        leftovers = [
            *self._fs.glob(f"{self.lineage_folder(spec.lineage)}/**/*.partial"),
            *self._fs.glob(f"{self.folder(key)}/**/*.partial"),
        ]
        for path in leftovers:
            self._fs.rm_file(path)
        return len(leftovers) + self._recover_hierarchy()

    def _recover_hierarchy(self) -> int:
        """Remove what a killed run left of the hierarchy's own metadata (the documents of
        the root, ``versions/`` and ``lineages/``, rewritten while a version is created)."""
        leftovers = [
            *self._fs.glob(f"{self.root}/zarr.*.partial"),
            *self._fs.glob(f"{self.root}/{VERSIONS}/zarr.*.partial"),
            *self._fs.glob(f"{self.root}/{LINEAGES}/zarr.*.partial"),
        ]
        for path in leftovers:
            self._fs.rm_file(path)
        return len(leftovers)

    # -- the version's rows -----------------------------------------------------------------

    def _write_parquet(self, path: str, table: pd.DataFrame) -> None:
        """``table`` as Parquet at ``path``, written aside and moved into place (a reader
        never meets half a file)."""
        buffer = io.BytesIO()
        # Page checksums: a damaged table is an error when read, never other rows.
        table.to_parquet(buffer, index=False, compression="zstd", write_page_checksum=True)
        partial = f"{path}.{uuid.uuid4().hex}.partial"
        self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self._fs.pipe_file(partial, buffer.getvalue())
        self._fs.mv(partial, path)

    def _appended_hashes(self, key: str) -> dict[int, str]:
        """Lineage row -> content hash of the contents version ``key`` appended."""
        if key not in self._appended:
            path = self.table_path(key, APPENDED_FILE)
            try:
                table = read_parquet(self._fs.cat_file(path))
            except Exception as err:
                raise DamagedFeatureSet(self.url, key, [f"table {TABLE}/{APPENDED_FILE}"]) from err
            rows = table[ROW].to_numpy(np.int64).tolist()
            self._appended[key] = dict(zip(rows, table[CONTENT_HASH].astype(str), strict=True))
        return self._appended[key]

    def _table(self, key: str) -> pd.DataFrame:
        """The version's Parquet table of rows (written once: cached)."""
        if key in self._tables:
            return self._tables[key]
        try:
            table = read_parquet(self._fs.cat_file(self.table_path(key)))
        except FileNotFoundError as err:
            if self.status(key) == "missing":
                raise TransferPipeError(self._not_here(key)) from err
            raise DamagedFeatureSet(self.url, key, [f"table {TABLE}/{TABLE_FILE}"]) from err
        except Exception as err:
            raise DamagedFeatureSet(self.url, key, [f"table {TABLE}/{TABLE_FILE}"]) from err
        for name in TABLE_COLUMNS:
            if name not in table:
                raise DamagedFeatureSet(self.url, key, [f"table {TABLE}/{TABLE_FILE}"])
        self._tables[key] = table
        return table

    def records(self, lineage: str, shards: Iterable[int] | None = None) -> dict[int, ShardRecord]:
        """The records of ``lineage``'s written shards (of ``shards``, else of all)."""
        array = self.array(lineage, RECORDS)
        picked = list(range(array.shape[0])) if shards is None else sorted(set(shards))
        picked = [shard for shard in picked if shard < array.shape[0]]
        if not picked:
            return {}
        raw = guarded(
            self, lineage, RECORDS, lambda: array.get_orthogonal_selection(np.array(picked)), picked
        )
        records = {}
        for shard, text in zip(picked, np.asarray(raw).tolist(), strict=True):
            if text:
                try:
                    records[shard] = json.loads(text)
                except ValueError as err:
                    raise DamagedFeatureSet(
                        self.url, lineage, [f"record of shard {shard}"]
                    ) from err
        return records

    def shards_of(self, key: str) -> set[int]:
        spec = self.spec(key)
        rows = self._table(key)[ROW].to_numpy(dtype=np.int64)
        return {int(s) for s in np.unique(rows // spec.shard_size)} | set(spec.new_shards)

    def pending_shards(self, key: str) -> list[int]:
        spec = self.spec(key)
        shards = self.shards_of(key)
        written = set(self.records(spec.lineage, shards))
        pending = shards - written
        if self.status(key) != "complete" and written:
            # A written shard where a repair lost rows of this version: its run gets them
            # back (its source still names their images).
            rows = self._table(key)[ROW].to_numpy(dtype=np.int64)
            done = np.isin(rows // spec.shard_size, list(written))
            failure = self._lineage_column(spec.lineage, FAILURE, rows, done)
            lost = np.char.startswith(failure.astype(str), f"{LOST}:")
            pending |= {int(row) // spec.shard_size for row in rows[lost]}
        return sorted(pending)

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
        spec = self.spec(key)
        n, size = len(failures), spec.shard_size
        if set(features) != set(spec.layers) or not 0 < n <= size:
            raise ValueError(f"shard {shard} of {key}: wrong layers or row count")
        start = shard * size
        end = (shard + 1) * size
        if hashes is None:
            appended = self._appended_hashes(key)
            hashes = [appended.get(row, "") for row in range(start, start + n)]
        if len(hashes) != n:
            raise ValueError(f"shard {shard} of {key}: {len(hashes)} hashes for {n} rows")
        contents = np.full(size, "", dtype=object)
        contents[:n] = list(hashes)
        reasons = np.full(size, "", dtype=object)
        reasons[:n] = list(failures)
        for layer, values in features.items():  # exactly one Zarr shard: one whole object
            array = self.array(spec.lineage, f"{FEATURES}/{layer}", writable=True, rows=end)
            block = np.full((size, array.shape[1]), np.nan, dtype=spec.dtype)
            block[:n] = np.asarray(values, dtype=spec.dtype)
            array[start:end] = block
        for name, column in ((CONTENT_HASH, contents), (FAILURE, reasons)):
            self.array(spec.lineage, name, writable=True, rows=end)[start:end] = column.astype(str)
        record = {
            "rows": n,
            "embedded": stats.embedded,
            "reused": stats.reused,
            "seconds": stats.seconds,
            "failures": {str(offset): reason for offset, reason in enumerate(failures) if reason},
            "version": key,
        }
        if notes:
            record["notes"] = {str(offset): note for offset, note in sorted(notes.items())}
        # Last: only now does the shard count as written.
        self.array(spec.lineage, RECORDS, writable=True, rows=shard + 1)[shard] = json.dumps(record)

    def copy_shard(self, key: str, shard: int, donor: str, donor_shard: int) -> bool:
        return shard_copy.copy_shard(self, key, shard, donor, donor_shard)

    def notes(self, key: str) -> pd.DataFrame:
        spec = self.spec(key)
        table = self._table(key)
        shards = np.unique(table[ROW].to_numpy(np.int64) // spec.shard_size).tolist()
        noted: dict[int, str] = {}
        for shard, record in self.records(spec.lineage, shards).items():
            for offset, note in (record.get("notes") or {}).items():
                noted[shard * spec.shard_size + int(offset)] = str(note)
        mine = table[table[ROW].isin(list(noted))]
        return pd.DataFrame(
            {
                SAMPLE_ID: mine[SAMPLE_ID].astype(str).tolist(),
                URI: mine[URI].astype(str).tolist(),
                "note": [noted[int(row)] for row in mine[ROW]],
            }
        )

    def shard_stats(self, key: str) -> pd.DataFrame:
        spec = self.spec(key)
        records = self.records(spec.lineage, spec.new_shards)
        table = pd.DataFrame(
            [[float(records.get(s, {}).get(name, 0.0)) for name in STATS] for s in spec.new_shards],
            columns=list(STATS),
        )
        table.insert(0, "done", [s in records for s in spec.new_shards])
        return table

    def read_lineage_rows(self, lineage: str, layer: str, rows: np.ndarray) -> np.ndarray:
        spec = self.lineage_spec(lineage)
        if layer not in spec.layers:
            raise TransferPipeError(
                f"lineage {lineage} has no layer {layer!r}; it holds {list(spec.layers)}."
            )
        name = f"{FEATURES}/{layer}"
        picked = np.asarray(rows, dtype=np.int64)
        if not len(picked):
            return np.empty((0, spec.layer_dims[layer]), dtype=spec.dtype)
        array = self.array(lineage, name, rows=int(picked.max()) + 1)
        shards = sorted(set((picked // spec.shard_size).tolist()))
        return guarded(
            self, lineage, name, lambda: read_spans(array, picked, spec.shard_size), shards
        )

    def read_rows(self, key: str, layer: str, rows: np.ndarray) -> np.ndarray:
        spec = self.spec(key)
        lineage_rows = self._table(key)[ROW].to_numpy(dtype=np.int64)[np.asarray(rows, np.int64)]
        try:
            return self.read_lineage_rows(spec.lineage, layer, lineage_rows)
        except DamagedFeatureSet as err:
            raise DamagedFeatureSet(self.url, key, err.parts) from err

    def row_table(self, key: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        spec = self.spec(key)
        names = list(columns if columns is not None else (*ROW_COLUMNS, FAILURE))
        table = self._table(key)
        rows = table[ROW].to_numpy(dtype=np.int64)
        shards = rows // spec.shard_size
        if self.status(key) == "complete":
            done = np.ones(len(table), dtype=bool)
        else:
            written = self.records(spec.lineage, np.unique(shards).tolist())
            done = np.isin(shards, list(written))
        out = pd.DataFrame(index=table.index)
        for name in names:
            if name not in (CONTENT_HASH, FAILURE):
                out[name] = table[name].astype(object)
                continue
            try:  # the lineage's, by row
                out[name] = self._lineage_column(spec.lineage, name, rows, done)
            except DamagedFeatureSet as err:
                raise DamagedFeatureSet(self.url, key, err.parts) from err
            if name == CONTENT_HASH and not done.all():  # it knows what it appended
                appended = self._appended_hashes(key)
                known = [appended.get(int(row), "") for row in rows[~done]]
                out.loc[~done, name] = np.asarray(known, dtype=object)
        out[ROW] = rows
        out["done"] = done
        return out

    def _lineage_column(
        self, lineage: str, name: str, rows: np.ndarray, done: np.ndarray
    ) -> np.ndarray:
        """The per-row lineage column ``name`` at ``rows`` ("" where not written yet),
        read shard by shard as whole objects."""
        column = np.full(len(rows), "", dtype=object)
        if done.any():
            size = self.lineage_spec(lineage).shard_size
            wanted = rows[done]
            array = self.array(lineage, name, rows=int(wanted.max()) + 1)
            shards = sorted(set((wanted // size).tolist()))
            values = guarded(self, lineage, name, lambda: read_spans(array, wanted, size), shards)
            column[done] = values
        return column

    def _folders(self, under: str) -> list[str]:
        """Names of the sub-folders of ``under`` (a store-root folder), sorted."""
        try:
            entries = self._fs.ls(f"{self.root}/{under}", detail=True)
        except FileNotFoundError:
            return []
        names = (str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in entries)
        kinds = (e["type"] for e in entries)
        return sorted(name for name, kind in zip(names, kinds, strict=True) if kind == "directory")

    def lineages(self) -> list[LineageSpec]:
        specs = []
        for name in self._folders(LINEAGES):
            try:
                specs.append(self.lineage_spec(name))
            except TransferPipeError as err:  # half created, or being collected
                logger.debug("lineage %s left out: %s", name, err)
        return sorted(specs, key=lambda spec: spec.lineage)

    def lineage_rows(self, lineage: str) -> pd.DataFrame:
        try:
            self.lineage_spec(lineage)
        except TransferPipeError:
            return pd.DataFrame({CONTENT_HASH: [], FAILURE: []})
        written = self.records(lineage)
        if not written:
            return pd.DataFrame({CONTENT_HASH: [], FAILURE: []})
        columns = {}
        for name in (CONTENT_HASH, FAILURE):
            array = self.array(lineage, name)
            read = functools.partial(read_all, array)
            columns[name] = guarded(self, lineage, name, read, sorted(written))
        size = self.lineage_spec(lineage).shard_size
        table = pd.DataFrame(columns)
        position = np.arange(len(table))
        used_rows = np.zeros(-(-len(table) // size), dtype=np.int64)  # per shard
        for shard, record in written.items():
            if shard < len(used_rows):
                used_rows[shard] = int(record.get("rows", size))
        return table[position % size < used_rows[position // size]]

    # -- completion and catalog ---------------------------------------------------------

    def mark_complete(self, key: str, provenance: Mapping[str, Any]) -> None:
        """Write the version's failure reasons into its table, record what it wrote, and
        only then say ``complete``; the lineage's head is then this version."""
        spec = self.spec(key)
        if self.pending_shards(key):
            raise RuntimeError(f"feature set {key} still has shards to write")
        sizes = self.written_shards(spec.lineage)
        tables = sum(
            int(self._fs.size(self.table_path(key, n))) for n in (TABLE_FILE, APPENDED_FILE)
        )
        new_bytes = sum(sizes.get(s, 0) for s in spec.new_shards) + tables
        group = self._open(f"{VERSIONS}/{key}", mode="a")
        group.attrs.update(
            {"status": "complete", "provenance": {**provenance, "new_bytes": new_bytes}}
        )
        self._forget(key)
        lineage = self._open(f"{LINEAGES}/{spec.lineage}", mode="a")
        lineage.attrs.update({"head": key})

    def provenance(self, key: str) -> dict[str, Any]:
        attrs = self._known_attrs(key)
        return {
            "key": key,
            "status": self.status(key),
            "created": attrs.get("created"),
            "spec": attrs.get("spec"),
            "changes": attrs.get("changes", {}),
            "sequence": attrs.get("sequence", 0),
            **dict(attrs.get("provenance", {})),
        }

    def list_keys(self) -> list[str]:
        """Keys of the initialized versions; one whose metadata is damaged is left out
        with a warning naming the fix (``verify --repair``)."""
        keys = []
        for key in self._folders(VERSIONS):
            try:
                if self.status(key) != "missing":
                    keys.append(key)
            except DamagedFeatureSet as err:
                logger.warning("%s", err)
        return sorted(keys)

    def legacy_keys(self) -> list[str]:
        """Keys of feature sets of the earlier layout (``transfer-pipe migrate``)."""
        return self._folders(LEGACY_SETS)

    def written_shards(self, lineage: str) -> dict[int, int]:
        sizes: dict[int, int] = {}
        try:
            found = self._fs.find(self.lineage_folder(lineage), detail=True)
        except FileNotFoundError:
            return sizes
        for path, entry in found.items():
            match = _SHARD_OBJECT.search(str(path))
            if match is not None and not str(path).endswith(".partial"):
                shard = int(match.group(1))
                sizes[shard] = sizes.get(shard, 0) + int(entry.get("size") or 0)
        return sizes

    def nbytes(self, key: str) -> int:
        spec = self.spec(key)
        sizes = self.written_shards(spec.lineage)
        try:
            table = int(self._fs.size(self.table_path(key)))
        except FileNotFoundError:
            table = 0
        return table + sum(sizes.get(shard, 0) for shard in self.shards_of(key))

    def store_nbytes(self) -> int:
        try:
            return int(self._fs.du(self.root, total=True))
        except FileNotFoundError:
            return 0

    # -- retention --------------------------------------------------------------------------

    def leftover_versions(self) -> list[str]:
        return [
            key
            for key in self._folders(VERSIONS)
            if not self._fs.exists(f"{self.folder(key)}/zarr.json")
        ]

    def own_nbytes(self, key: str) -> int:
        folder = self.folder(key)
        return int(self._fs.du(folder, total=True)) if self._fs.exists(folder) else 0

    def drop_version(self, key: str) -> int:
        folder = self.folder(key)
        freed = self.own_nbytes(key)
        marker = f"{folder}/zarr.json"
        if self._fs.exists(marker):
            self._fs.rm_file(marker)  # first: from now on the version is missing
        if self._fs.exists(folder):
            self._fs.rm(folder, recursive=True)
        self._forget(key)
        return freed

    def drop_shards(self, lineage: str, shards: Sequence[int]) -> int:
        spec = self.lineage_spec(lineage)
        folder = self.lineage_folder(lineage)
        freed = 0
        for shard in shards:
            for path in shard_objects(spec, shard):  # the record first: not done from now
                full = f"{folder}/{path}"
                try:
                    freed += int(self._fs.size(full))
                    self._fs.rm_file(full)
                except FileNotFoundError:
                    continue
        self._forget(lineage=lineage)
        return freed

    def drop_legacy(self, key: str) -> None:
        """Remove feature set ``key`` of layout 2 (``store.migrate``), its marker first
        (``""``: the emptied group of them)."""
        folder = f"{self.root}/{LEGACY_SETS}/{key}".rstrip("/")
        if self._fs.exists(f"{folder}/zarr.json"):
            self._fs.rm_file(f"{folder}/zarr.json")
        if self._fs.exists(folder):
            self._fs.rm(folder, recursive=True)

    def drop_lineage(self, lineage: str) -> int:
        folder = self.lineage_folder(lineage)
        if not self._fs.exists(folder):
            return 0
        freed = int(self._fs.du(folder, total=True))
        marker = f"{folder}/zarr.json"
        if self._fs.exists(marker):
            self._fs.rm_file(marker)
        self._fs.rm(folder, recursive=True)
        self._forget(lineage=lineage)
        return freed

    # -- reading --------------------------------------------------------------------------

    def verify(self, key: str, repair: bool = False) -> Damage:
        damage = integrity.check(self, key)
        if repair and not damage.ok:
            lineage = None if damage.recreate else self.spec(key).lineage
            self._forget(key, lineage)
            damage = integrity.repair(self, key, damage)
            self._forget(key, lineage)
        return damage

    def _dask_features(self, key: str, layer: str, rows: np.ndarray) -> Any:
        """Rows ``rows`` of the lineage of ``key`` in ``layer`` as a lazy dask array
        over blocks of one shard (one stored object each), each read through the damage
        guard."""
        import dask.array as da
        from dask.base import tokenize

        spec = self.spec(key)
        name = f"{FEATURES}/{layer}"
        array = self.array(spec.lineage, name)
        guarded = GuardedFeatures(
            self, spec.lineage, name, spec.shard_size, tuple(array.shape), np.dtype(array.dtype)
        )
        whole = da.from_array(
            guarded,
            chunks=(spec.shard_size, array.shape[1]),
            name=f"features-{spec.lineage}-{tokenize(self.url, name, array.shape)}",
            asarray=False,
            meta=np.empty((0, 0), dtype=guarded.dtype),
        )
        return whole[rows]

    def load(
        self,
        key: str,
        *,
        split: str | None = None,
        layer: str | None = None,
        sample_ids: Sequence[str] | None = None,
        as_dask: bool = False,
    ) -> LoadedFeatures:
        spec = self.spec(key)
        layer = layer or spec.layers[0]
        if layer not in spec.layers:
            raise TransferPipeError(
                f"feature set {key} has no layer {layer!r}; it holds {list(spec.layers)}."
            )
        table = self.row_table(key, columns=(SAMPLE_ID, LABEL, SPLIT, FAILURE))
        usable = table[(table[FAILURE] == "") & table["done"]]
        if split is not None:
            usable = usable[usable[SPLIT] == split]
        if sample_ids is not None:
            by_id = usable.reset_index().set_index(SAMPLE_ID)
            missing = [s for s in sample_ids if s not in by_id.index]
            if missing:
                raise TransferPipeError(
                    f"{len(missing)} sample ids (e.g. {missing[0]!r}) have no usable features "
                    f"in {key}; `transfer-pipe show {key}` lists failures."
                )
            usable = by_id.loc[list(sample_ids)].reset_index().set_index("index")
        if as_dask:
            features: Any = self._dask_features(key, layer, usable[ROW].to_numpy())
        else:
            features = self.read_rows(key, layer, usable.index.to_numpy())
        return LoadedFeatures(
            features=features,
            labels=usable[LABEL].to_numpy(),
            sample_ids=usable[SAMPLE_ID].to_numpy(),
            splits=usable[SPLIT].to_numpy(),
        )


def _plan_rows(
    spec: FeatureSetSpec, rows: pd.DataFrame, known: pd.DataFrame, length: int
) -> tuple[pd.DataFrame, pd.DataFrame, FeatureSetSpec]:
    """The version's table (the manifest's rows, each with its lineage row) and its spec:
    a row whose content the lineage holds shares it (a failed one too: the same bytes
    fail the same way; not one a repair lost); distinct new contents are appended in the
    manifest's order from the next whole shard on."""
    kept = shareable(known)
    held = dict(zip(kept[CONTENT_HASH], kept.index.astype(np.int64), strict=True))
    first_shard = length // spec.shard_size
    base = first_shard * spec.shard_size
    hashes = rows[CONTENT_HASH].astype(str).tolist()
    assigned: list[int] = []
    appended: dict[str, int] = {}
    for content in hashes:
        row = held.get(content)
        if row is None:
            row = appended.setdefault(content, base + len(appended))
        assigned.append(row)
    table = rows.loc[:, [name for name in TABLE_COLUMNS if name != ROW]]
    table = table.reset_index(drop=True).astype(str)
    table[ROW] = np.asarray(assigned, dtype=np.int64)
    new = pd.DataFrame({ROW: list(appended.values()), CONTENT_HASH: list(appended)})
    new[ROW] = new[ROW].astype(np.int64)
    return table, new, dataclasses.replace(spec, first_shard=first_shard, appended=len(appended))
