"""The FeatureStore on Zarr v3: a local folder by default, any fsspec URL by design.

Layout of one feature set, ``feature_sets/<key>/``::

    features/<layer>   [rows, dim]  float32|float16, NaN on failed rows
    sample_id uri label split content_hash failure   [rows] strings
    shard_done [shards] uint8, shard_stats [shards, 3] (embedded, reused, seconds)
    attrs: spec, status, created, provenance

Every per-row array is chunked by shard, so a shard task owns exactly one chunk of each.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

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

_SETS = "feature_sets"
_STATS = ("embedded", "reused", "seconds")


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

    def _group(self, key: str, mode: str = "r") -> zarr.Group:
        try:
            group = self._root(mode)[f"{_SETS}/{key}"]
        except (KeyError, FileNotFoundError) as err:
            raise TransferPipeError(
                f"feature set {key!r} is not in the store {self.url}; "
                f"`transfer-pipe ls --store {self.url}` lists the feature sets it holds."
            ) from err
        assert isinstance(group, zarr.Group)
        return group

    def _array(self, key: str, name: str, writable: bool = False) -> zarr.Array:
        """Array ``name`` of feature set ``key``, opened once per store object."""
        if (key, name, writable) not in self._arrays:
            array = self._group(key, mode="a" if writable else "r")[name]
            assert isinstance(array, zarr.Array), f"{name} is not an array"
            self._arrays[(key, name, writable)] = array
        return self._arrays[(key, name, writable)]

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

    def status(self, key: str) -> Status:
        try:
            attrs = self._group(key).attrs.asdict()
        except (TransferPipeError, FileNotFoundError):
            return "missing"
        if "spec" not in attrs:
            return "missing"  # creation was interrupted: nothing in it is trusted
        return "complete" if attrs.get("status") == "complete" else "incomplete"

    def create(self, spec: FeatureSetSpec, rows: pd.DataFrame) -> None:
        if len(rows) != spec.rows:
            raise ValueError(f"spec says {spec.rows} rows, table has {len(rows)}")
        self._specs.pop(spec.key, None)
        self._arrays = {k: v for k, v in self._arrays.items() if k[0] != spec.key}
        sets = self._root("a").require_group(_SETS)
        group = sets.create_group(spec.key, overwrite=True)
        chunk = (spec.shard_size,)
        for name in ROW_COLUMNS:
            array = group.create_array(name, shape=(spec.rows,), chunks=chunk, dtype=str)
            array[:] = rows[name].to_numpy(dtype=str)
        group.create_array(FAILURE, shape=(spec.rows,), chunks=chunk, dtype=str, fill_value="")
        features = group.create_group("features")
        for layer in spec.layers:
            features.create_array(
                layer,
                shape=(spec.rows, spec.layer_dims[layer]),
                chunks=(spec.shard_size, spec.layer_dims[layer]),
                dtype=spec.dtype,
                fill_value=float("nan"),
            )
        group.create_array("shard_done", shape=(spec.n_shards,), chunks=(1,), dtype="uint8")
        group.create_array(
            "shard_stats", shape=(spec.n_shards, len(_STATS)), chunks=(1, len(_STATS)), dtype="f8"
        )
        # The spec is written last: its presence is what marks the feature set initialized.
        group.attrs.update(
            {
                "spec": dataclasses.asdict(spec),
                "status": "incomplete",
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )

    def spec(self, key: str) -> FeatureSetSpec:
        if key not in self._specs:
            raw: dict[str, Any] = dict(self._group(key).attrs["spec"])  # type: ignore[arg-type]
            raw["layers"] = tuple(raw["layers"])
            self._specs[key] = FeatureSetSpec(**raw)
        return self._specs[key]

    def recover(self, key: str) -> int:
        # A local chunk write goes to "<name>.<uuid>.partial" and is renamed when whole;
        # a SIGKILL in between leaves the partial file (and the old chunk, if any).
        leftovers = self._fs.glob(f"{self._path.rstrip('/')}/{_SETS}/{key}/**/*.partial")
        for path in leftovers:
            self._fs.rm_file(path)
        return len(leftovers)

    # -- shards -------------------------------------------------------------------------

    def shards_done(self, key: str) -> np.ndarray:
        return np.asarray(self._array(key, "shard_done")[:]).astype(bool)

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
        region = slice(rows.start, rows.stop)
        if set(features) != set(spec.layers) or len(failures) != len(rows):
            raise ValueError(f"shard {shard} of {key}: wrong layers or row count")
        for layer, values in features.items():
            array = self._array(key, f"features/{layer}", writable=True)
            array[region] = np.asarray(values, dtype=spec.dtype)
        self._array(key, FAILURE, writable=True)[region] = np.asarray(failures, dtype=str)
        stats_row = [stats.embedded, stats.reused, stats.seconds]
        self._array(key, "shard_stats", writable=True)[shard] = stats_row
        # Last: only now does the shard count as written.
        self._array(key, "shard_done", writable=True)[shard] = 1

    def shard_stats(self, key: str) -> pd.DataFrame:
        stats = np.asarray(self._array(key, "shard_stats")[:])
        table = pd.DataFrame(stats, columns=list(_STATS))
        table.insert(0, "done", self.shards_done(key))
        return table

    def read_rows(self, key: str, layer: str, rows: np.ndarray) -> np.ndarray:
        array = self._array(key, f"features/{layer}")
        return np.asarray(array.get_orthogonal_selection((np.asarray(rows), slice(None))))

    def row_table(self, key: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        spec = self.spec(key)
        names = columns or (*ROW_COLUMNS, FAILURE)
        table = pd.DataFrame(
            {name: np.asarray(self._array(key, name)[:]).astype(object) for name in names}
        )
        table["done"] = np.repeat(self.shards_done(key), spec.shard_size)[: spec.rows]
        return table

    # -- completion and catalog ---------------------------------------------------------

    def mark_complete(self, key: str, provenance: Mapping[str, Any]) -> None:
        if not self.shards_done(key).all():
            raise RuntimeError(f"feature set {key} still has shards to write")
        self._group(key, mode="a").attrs.update(
            {"status": "complete", "provenance": dict(provenance)}
        )

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
        try:
            sets = self._root()[_SETS]
        except (KeyError, FileNotFoundError):
            return []
        assert isinstance(sets, zarr.Group)
        return sorted(k for k in sets.group_keys() if self.status(k) != "missing")

    def nbytes(self, key: str) -> int:
        return int(self._fs.du(f"{self._path.rstrip('/')}/{_SETS}/{key}", total=True))

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
        array = self._array(key, f"features/{layer}")
        if as_dask:
            import dask.array as da

            features: Any = da.from_zarr(array)[rows]
        else:
            features = self.read_rows(key, layer, rows)
        return LoadedFeatures(
            features=features,
            labels=usable[LABEL].to_numpy(),
            sample_ids=usable[SAMPLE_ID].to_numpy(),
            splits=usable[SPLIT].to_numpy(),
        )
