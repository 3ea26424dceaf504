"""The FeatureStore on Zarr v3: a local folder by default, any fsspec URL by design.

One feature set is the group ``feature_sets/<key>/`` (the arrays: ``store.layout``), with
attrs ``spec``, ``status``, ``created``, ``layout`` (what the arrays mean) and, once
complete, ``provenance``. A shard task writes its Zarr shard of every feature array and
then its shard record (its done marker); the driver writes everything else. A complete
feature set has consolidated metadata: opening it reads one ``zarr.json``.

A damaged object (its checksum fails, its metadata does not parse) met by any read is a
``TransferPipeError`` naming the feature set, the damaged shards and the fix
(``transfer-pipe verify KEY --store STORE --repair``, then embed again).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import fsspec
import numpy as np
import pandas as pd
import zarr
import zarr.storage

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.files import is_local
from transfer_pipe.schema import FAILURE, LABEL, ROW_COLUMNS, SAMPLE_ID, SPLIT
from transfer_pipe.store.base import (
    FeatureSetSpec,
    FeatureStore,
    LoadedFeatures,
    ShardStats,
    Status,
)
from transfer_pipe.store.claims import Claim, Holder
from transfer_pipe.store.claims import take as take_claim
from transfer_pipe.store.layout import (
    CLAIMS,
    FEATURES,
    FOREIGN_FOLDERS,
    LAYOUT_VERSION,
    RECORDS,
    SETS,
    STATS,
    TABLE,
    TABLE_FILE,
    consolidate,
    create_arrays,
    describe,
    mark_foreign,
)

if TYPE_CHECKING:
    from transfer_pipe.store.integrity import Damage

_SETS = SETS
_STATS = STATS
T = TypeVar("T")
logger = logging.getLogger(__name__)
ShardRecord = dict[str, Any]  # {"embedded", "reused", "seconds", "failures": {offset: reason}}


class DamagedFeatureSet(TransferPipeError):
    """A stored object of a feature set is damaged; the message names it and the fix."""

    def __init__(self, store_url: str, key: str, parts: Sequence[str]) -> None:
        self.key = key
        self.parts = list(parts)
        super().__init__(
            f"feature set {key} in {store_url} is damaged ({'; '.join(parts)}): a stored "
            "object failed its checksum or could not be parsed. Run `transfer-pipe verify "
            f"{key} --store {store_url} --repair`, then run the same `transfer-pipe embed` "
            "again: it recomputes only the damaged shards."
        )


def shard_parts(name: str, shards: Iterable[int]) -> list[str]:
    """How a damage report names shards of one array, e.g. ``shard 3 (features/x)``."""
    return [f"shard {shard} ({name})" for shard in shards]


class ZarrFeatureStore(FeatureStore):
    """Feature sets in one Zarr v3 hierarchy at ``url`` (a path or an fsspec URL)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self._storage_options = dict(storage_options or {})
        self._fs, self._path = fsspec.core.url_to_fs(url, **self._storage_options)
        # Opening a group or array reads its metadata: a few round trips that would
        # otherwise be paid again for every shard a worker writes or copies from.
        self._specs: dict[str, FeatureSetSpec] = {}
        self._arrays: dict[tuple[str, str, bool], zarr.Array] = {}

    def __repr__(self) -> str:
        return f"ZarrFeatureStore({self.url!r})"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem under the store (for the files Zarr does not read)."""
        return self._fs

    def folder(self, key: str) -> str:
        """Feature set ``key``'s folder, as a path of ``fs``."""
        return f"{self._path.rstrip('/')}/{_SETS}/{key}"

    def zarr_store(self, read_only: bool = True) -> zarr.storage.StoreLike:
        """The Zarr store object under this feature store."""
        return self._zarr_store(read_only)

    def verify(self, key: str, repair: bool = False) -> Damage:
        """Read feature set ``key`` end to end; what is damaged (``integrity.Damage``),
        and with ``repair`` the shards marked not done so an embed recomputes them."""
        from transfer_pipe.store import integrity

        damage = integrity.check(self, key)
        if repair and not damage.ok:
            self._forget(key)
            damage = integrity.repair(self, key, damage)
            self._forget(key)
        return damage

    # -- plumbing ---------------------------------------------------------------------

    def _zarr_store(self, read_only: bool) -> zarr.storage.StoreLike:
        if is_local(self.url):
            # LocalStore writes each chunk to a temporary file and renames it: atomic.
            return zarr.storage.LocalStore(self._path, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(
            self.url, storage_options=self._storage_options, read_only=read_only
        )

    def _root(self, mode: str = "r") -> zarr.Group:
        store = self._zarr_store(read_only=mode == "r")
        return zarr.open_group(store, mode=mode)  # type: ignore[arg-type]

    def _open(self, key: str, mode: str = "r") -> zarr.Group:
        """The feature set's group (its consolidated metadata when complete: one read);
        FileNotFoundError when there is none, DamagedFeatureSet when its ``zarr.json``
        does not parse."""
        store = self._zarr_store(read_only=mode == "r")
        path = f"{_SETS}/{key}"
        try:
            # zarr_format=3: else Zarr also asks for the three v2 documents (4 requests).
            return zarr.open_group(
                store, path=path, mode="r" if mode == "r" else "r+", zarr_format=3
            )
        except FileNotFoundError:
            raise
        except (ValueError, TypeError, KeyError) as err:  # JSONDecodeError is a ValueError
            raise DamagedFeatureSet(self.url, key, [f"metadata {path}/zarr.json"]) from err

    def _group(self, key: str, mode: str = "r") -> zarr.Group:
        try:
            return self._open(key, mode)
        except FileNotFoundError as err:
            raise TransferPipeError(
                f"feature set {key!r} is not in the store {self.url}; "
                f"`transfer-pipe ls --store {self.url}` lists the feature sets it holds."
            ) from err

    def _array(self, key: str, name: str, writable: bool = False) -> zarr.Array:
        """Array ``name`` of feature set ``key``, opened once per store object."""
        if (key, name, writable) not in self._arrays:
            group = self._group(key, mode="a" if writable else "r")
            try:
                array = group[name]
            except (ValueError, TypeError, KeyError) as err:
                raise DamagedFeatureSet(
                    self.url, key, [f"metadata {_SETS}/{key}/{name}/zarr.json"]
                ) from err
            assert isinstance(array, zarr.Array), f"{name} is not an array"
            self._arrays[(key, name, writable)] = array
        return self._arrays[(key, name, writable)]

    def _forget(self, key: str) -> None:
        """Drop the arrays opened for ``key`` (its metadata is about to change)."""
        self._specs.pop(key, None)
        self._arrays = {k: v for k, v in self._arrays.items() if k[0] != key}

    def _guarded(self, key: str, name: str, read: Callable[[], T], shards: Iterable[int]) -> T:
        """``read()`` of array ``name``; when it fails because stored objects are damaged
        (found by reading ``shards`` one by one), a DamagedFeatureSet naming them."""
        try:
            return read()
        except TransferPipeError:
            raise
        except Exception as err:
            damaged = self.damaged_shards(key, name, shards)
            if not damaged:
                raise
            raise DamagedFeatureSet(self.url, key, shard_parts(name, damaged)) from err

    def damaged_shards(self, key: str, name: str, shards: Iterable[int]) -> list[int]:
        """Which of ``shards`` of the per-row or per-shard array ``name`` fail to read."""
        spec = self.spec(key)
        array = self._array(key, name)
        damaged = []
        for shard in shards:
            region = slice(shard, shard + 1) if name == RECORDS else _region(spec, shard)
            try:
                array[region]
            except Exception:
                damaged.append(shard)
        return damaged

    def _column(self, key: str, name: str) -> np.ndarray:
        """A whole per-row string column (a few objects, written by the driver)."""
        array = self._array(key, name)
        try:
            return np.asarray(array[:])
        except Exception as err:
            raise DamagedFeatureSet(self.url, key, [f"column {name}"]) from err

    def records(self, key: str) -> list[ShardRecord | None]:
        """Each shard's record, None where the shard is not written yet."""
        spec = self.spec(key)
        array = self._array(key, RECORDS)
        raw = self._guarded(key, RECORDS, lambda: array[:], range(spec.n_shards))
        try:
            return [json.loads(text) if text else None for text in np.asarray(raw).tolist()]
        except ValueError as err:
            raise DamagedFeatureSet(self.url, key, [f"a record of {RECORDS}"]) from err

    def ensure_writable(self) -> None:
        """Fail early, before anything is written, when the store cannot be written to."""
        probe = f"{self._path.rstrip('/')}/.write-probe-{uuid.uuid4().hex}"
        try:
            self._fs.makedirs(self._path, exist_ok=True)
            self._fs.pipe_file(probe, b"ok")
            self._fs.rm_file(probe)
        except OSError as err:
            raise TransferPipeError(
                f"cannot write to the feature store {self.url} ({err.__class__.__name__}: "
                f"{err}); pass --store with a folder or URL you can write to."
            ) from err

    # -- status and creation ------------------------------------------------------------

    def claim(
        self,
        key: str,
        *,
        done: Callable[[], bool],
        waiting: Callable[[Holder], None] = lambda holder: None,
    ) -> Claim | None:
        folder = f"{self._path.rstrip('/')}/{CLAIMS}/{key}"
        self._fs.makedirs(folder, exist_ok=True)  # a disk wants the folder; S3 has none
        return take_claim(self._fs, folder, done=done, waiting=waiting)

    def status(self, key: str) -> Status:
        """``missing`` also for a half-created feature set and for one of an older layout
        (its key differs from any this version computes); a damaged ``zarr.json`` raises
        DamagedFeatureSet rather than passing for missing (a rerun would overwrite it)."""
        try:
            attrs = self._open(key).attrs.asdict()
        except FileNotFoundError:
            return "missing"
        if "spec" not in attrs or _layout_version(attrs) != LAYOUT_VERSION:
            return "missing"  # creation was interrupted: nothing in it is trusted
        return "complete" if attrs.get("status") == "complete" else "incomplete"

    def create(self, spec: FeatureSetSpec, rows: pd.DataFrame) -> None:
        if len(rows) != spec.rows:
            raise ValueError(f"spec says {spec.rows} rows, table has {len(rows)}")
        self._forget(spec.key)
        self._recover_hierarchy()  # a run killed while creating may have left some
        root = self._root("a")
        for folder, holds in FOREIGN_FOLDERS.items():
            mark_foreign(root, folder, holds)
        group = root.require_group(_SETS).create_group(spec.key, overwrite=True)
        create_arrays(group, spec)
        for name in ROW_COLUMNS:  # one write per column: the driver knows every row
            array = group[name]
            assert isinstance(array, zarr.Array)
            array[:] = rows[name].to_numpy(dtype=str)
        # The spec is written last: its presence is what marks the feature set initialized.
        group.attrs.update(
            {
                "spec": dataclasses.asdict(spec),
                "status": "incomplete",
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "layout": describe(spec),
            }
        )

    def spec(self, key: str) -> FeatureSetSpec:
        if key not in self._specs:
            attrs = self._group(key).attrs.asdict()
            if "spec" in attrs and _layout_version(attrs) != LAYOUT_VERSION:
                raise TransferPipeError(
                    f"feature set {key} in {self.url} has an older layout (version "
                    f"{_layout_version(attrs)}, this version reads {LAYOUT_VERSION}): embed "
                    "its source again (the new feature set gets a new key), and delete "
                    f"{_SETS}/{key} to reclaim its space."
                )
            self._specs[key] = spec_from_dict(attrs["spec"])  # type: ignore[arg-type]
        return self._specs[key]

    def recover(self, key: str) -> int:
        # A local chunk write goes to "<name>.<uuid>.partial" and is renamed when whole;
        # a SIGKILL in between leaves the partial file (and the old chunk, if any).
        leftovers = self._fs.glob(f"{self._path.rstrip('/')}/{_SETS}/{key}/**/*.partial")
        for path in leftovers:
            self._fs.rm_file(path)
        return len(leftovers) + self._recover_hierarchy()

    def _recover_hierarchy(self) -> int:
        """Remove what a killed run left of the hierarchy's own metadata (the root's and
        ``feature_sets/``'s ``zarr.json``, rewritten while a feature set is created). Only
        a claim's holder calls it, and those documents are written whole by zarr anyway."""
        root = self._path.rstrip("/")
        leftovers = [
            *self._fs.glob(f"{root}/zarr.*.partial"),
            *self._fs.glob(f"{root}/{_SETS}/zarr.*.partial"),
        ]
        for path in leftovers:
            self._fs.rm_file(path)
        return len(leftovers)

    # -- shards -------------------------------------------------------------------------

    def shards_done(self, key: str) -> np.ndarray:
        if self.status(key) == "complete":  # every shard: no record need be read
            return np.ones(self.spec(key).n_shards, dtype=bool)
        return np.array([record is not None for record in self.records(key)], dtype=bool)

    def write_shard(
        self,
        key: str,
        shard: int,
        features: Mapping[str, np.ndarray],
        failures: Sequence[str],
        stats: ShardStats,
    ) -> None:
        spec = self.spec(key)
        rows = spec.shard_rows(shard)
        if set(features) != set(spec.layers) or len(failures) != len(rows):
            raise ValueError(f"shard {shard} of {key}: wrong layers or row count")
        for layer, values in features.items():  # exactly one Zarr shard: one whole object
            array = self._array(key, f"{FEATURES}/{layer}", writable=True)
            array[_region(spec, shard)] = np.asarray(values, dtype=spec.dtype)
        record = {
            "embedded": stats.embedded,
            "reused": stats.reused,
            "seconds": stats.seconds,
            "failures": {str(offset): reason for offset, reason in enumerate(failures) if reason},
        }
        # Last: only now does the shard count as written.
        self._array(key, RECORDS, writable=True)[shard] = json.dumps(record)

    def shard_stats(self, key: str) -> pd.DataFrame:
        records = self.records(key)
        table = pd.DataFrame(
            [[float((r or {}).get(name, 0.0)) for name in _STATS] for r in records],
            columns=list(_STATS),
        )
        table.insert(0, "done", [r is not None for r in records])
        return table

    def read_rows(self, key: str, layer: str, rows: np.ndarray) -> np.ndarray:
        spec = self.spec(key)
        name = f"{FEATURES}/{layer}"
        array = self._array(key, name)
        picked = np.asarray(rows, dtype=np.int64)
        shards = sorted({int(row) // spec.shard_size for row in picked})
        return self._guarded(
            key,
            name,
            lambda: np.asarray(array.get_orthogonal_selection((picked, slice(None)))),
            shards,
        )

    def row_table(self, key: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        spec = self.spec(key)
        names = columns or (*ROW_COLUMNS, FAILURE)
        complete = self.status(key) == "complete"
        records = None if complete else self.records(key)
        table = pd.DataFrame(
            {
                name: (
                    failure_column(spec, records)
                    if name == FAILURE and records is not None
                    else self._column(key, name)
                ).astype(object)
                for name in names
            }
        )
        done = np.ones(spec.n_shards, bool) if records is None else _done(records)
        table["done"] = np.repeat(done, spec.shard_size)[: spec.rows]
        return table

    # -- completion and catalog ---------------------------------------------------------

    def mark_complete(self, key: str, provenance: Mapping[str, Any]) -> None:
        """Write what the driver derives from the shards (the failure column and the
        Parquet table), consolidate the metadata, and only then say ``complete``."""
        spec = self.spec(key)
        records = self.records(key)
        if not _done(records).all():
            raise RuntimeError(f"feature set {key} still has shards to write")
        self._array(key, FAILURE, writable=True)[:] = failure_column(spec, records)
        self._write_table(key)
        consolidate(self._zarr_store(read_only=False), f"{_SETS}/{key}")
        self._forget(key)
        self._group(key, mode="a").attrs.update(
            {"status": "complete", "provenance": dict(provenance)}
        )

    def table_path(self, key: str) -> str:
        """Where feature set ``key``'s Parquet table of rows is (once complete)."""
        return f"{self._path.rstrip('/')}/{_SETS}/{key}/{TABLE}/{TABLE_FILE}"

    def _write_table(self, key: str) -> None:
        """The row columns and failure reasons as Parquet, written aside and moved into
        place (a reader never meets half a file)."""
        table = pd.DataFrame({name: self._column(key, name) for name in (*ROW_COLUMNS, FAILURE)})
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False, compression="zstd")  # hashes: snappy 2x bigger
        final = self.table_path(key)
        partial = f"{final}.{uuid.uuid4().hex}.partial"
        self._fs.pipe_file(partial, buffer.getvalue())
        self._fs.mv(partial, final)

    def provenance(self, key: str) -> dict[str, Any]:
        attrs = self._group(key).attrs.asdict()
        return {
            "key": key,
            "status": self.status(key),
            "created": attrs.get("created"),
            "spec": attrs.get("spec"),
            **dict(attrs.get("provenance", {})),  # type: ignore[arg-type]
        }

    def list_keys(self) -> list[str]:
        """Keys of the initialized feature sets of this layout; one whose metadata is
        damaged is left out with a warning naming the fix (``verify --repair``)."""
        folder = f"{self._path.rstrip('/')}/{_SETS}"
        try:
            entries = self._fs.ls(folder, detail=True)
        except FileNotFoundError:
            return []
        keys = []
        for entry in entries:
            key = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
            if entry["type"] != "directory":
                continue
            try:
                if self.status(key) != "missing":
                    keys.append(key)
            except DamagedFeatureSet as err:
                logger.warning("%s", err)
        return sorted(keys)

    def nbytes(self, key: str) -> int:
        return int(self._fs.du(f"{self._path.rstrip('/')}/{_SETS}/{key}", total=True))

    def _dask_features(self, key: str, layer: str) -> Any:
        """Layer ``layer`` of feature set ``key`` as a lazy dask array of one block per
        shard (one stored object each), every block read through the damage guard."""
        import dask.array as da
        from dask.base import tokenize

        spec = self.spec(key)
        name = f"{FEATURES}/{layer}"
        array = self._array(key, name)
        guarded = _GuardedFeatures(
            self, key, name, spec.shard_size, tuple(array.shape), np.dtype(array.dtype)
        )
        return da.from_array(
            guarded,
            chunks=(spec.shard_size, array.shape[1]),
            name=f"features-{key}-{tokenize(self.url, name)}",
            asarray=False,
            meta=np.empty((0, 0), dtype=guarded.dtype),
        )

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
        rows = usable.index.to_numpy()
        if as_dask:
            features: Any = self._dask_features(key, layer)[rows]
        else:
            features = self.read_rows(key, layer, rows)
        return LoadedFeatures(
            features=features,
            labels=usable[LABEL].to_numpy(),
            sample_ids=usable[SAMPLE_ID].to_numpy(),
            splits=usable[SPLIT].to_numpy(),
        )


@dataclasses.dataclass(frozen=True)
class _GuardedFeatures:
    """A feature array as ``dask.array.from_array`` reads it: each block read through the
    store's damage guard, so a damaged shard met when the dask array is computed (here or
    on a worker) is a DamagedFeatureSet naming it, as with ``load``'s numpy path."""

    store: ZarrFeatureStore
    key: str
    name: str
    shard_size: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        rows = index[0].indices(self.shape[0])
        shards = range(rows[0] // self.shard_size, -(-rows[1] // self.shard_size))
        array = self.store._array(self.key, self.name)
        return self.store._guarded(self.key, self.name, lambda: np.asarray(array[index]), shards)


def _region(spec: FeatureSetSpec, shard: int) -> slice:
    """The rows of shard ``shard``: one Zarr shard of every feature array."""
    rows = spec.shard_rows(shard)
    return slice(rows.start, rows.stop)


def _done(records: Sequence[ShardRecord | None]) -> np.ndarray:
    return np.array([record is not None for record in records], dtype=bool)


def failure_column(spec: FeatureSetSpec, records: Sequence[ShardRecord | None]) -> np.ndarray:
    """Each row's failure reason ("" for a good row, or one not written yet), from the
    shard records."""
    column = np.full(spec.rows, "", dtype=object)
    for shard, record in enumerate(records):
        start = spec.shard_rows(shard).start
        for offset, reason in (record or {}).get("failures", {}).items():
            column[start + int(offset)] = reason
    return column.astype(str)


def spec_from_dict(raw: Mapping[str, Any]) -> FeatureSetSpec:
    """A FeatureSetSpec from its JSON form (the ``spec`` attribute)."""
    fields = dict(raw)
    fields["layers"] = tuple(fields["layers"])
    return FeatureSetSpec(**fields)


def _layout_version(attrs: Mapping[str, Any]) -> int:
    """The layout version a feature set's attrs declare (1: before they declared one)."""
    layout = attrs.get("layout")
    return int(layout.get("version", 1)) if isinstance(layout, dict) else 1
