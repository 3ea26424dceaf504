"""Reading a lineage's arrays fast and safely: whole shards at a time, and a damaged
object always an error naming it (``DamagedFeatureSet``), never a bare codec traceback."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import zarr

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.store.integrity import DamagedFeatureSet, shard_parts
from transfer_pipe.store.layout import RECORDS

if TYPE_CHECKING:
    from transfer_pipe.store.zarr_store import ZarrFeatureStore

T = TypeVar("T")


def read_all(array: zarr.Array) -> np.ndarray:
    return np.asarray(array[:])


def read_spans(array: zarr.Array, rows: np.ndarray, shard_size: int) -> np.ndarray:
    """``array[rows]`` (in the order asked; rows may repeat), read as runs of whole
    shards: one contiguous slice per run of shards holding wanted rows, far faster than
    an orthogonal selection of single rows (and every object read once)."""
    shards = np.unique(rows // shard_size)
    breaks = np.flatnonzero(np.diff(shards) > 1) + 1
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    for run in np.split(shards, breaks):
        start, stop = int(run[0]) * shard_size, (int(run[-1]) + 1) * shard_size
        inside = (rows >= start) & (rows < stop)
        block = np.asarray(array[start : min(stop, array.shape[0])])
        out[inside] = block[rows[inside] - start]
    return out


def guarded(
    store: ZarrFeatureStore, lineage: str, name: str, read: Callable[[], T], shards: Iterable[int]
) -> T:
    """``read()`` of array ``name`` of ``lineage``; when it fails because stored objects
    are damaged (found by reading ``shards`` one by one), a DamagedFeatureSet naming them."""
    try:
        return read()
    except TransferPipeError:
        raise
    except Exception as err:
        damaged = damaged_shards(store, lineage, name, shards)
        if not damaged:
            raise
        raise DamagedFeatureSet(store.url, lineage, shard_parts(name, damaged)) from err


def damaged_shards(
    store: ZarrFeatureStore, lineage: str, name: str, shards: Iterable[int]
) -> list[int]:
    """Which of ``shards`` of the lineage's array ``name`` fail to read."""
    size = store.lineage_spec(lineage).shard_size
    array = store.array(lineage, name)
    damaged = []
    for shard in shards:
        region = (
            slice(shard, shard + 1) if name == RECORDS else slice(shard * size, (shard + 1) * size)
        )
        try:
            array[region]
        except Exception:
            damaged.append(shard)
    return damaged


@dataclasses.dataclass(frozen=True)
class GuardedFeatures:
    """A feature array as ``dask.array.from_array`` reads it: each block read through the
    store's damage guard, so a damaged shard met when the dask array is computed (here or
    on a worker) is a DamagedFeatureSet naming it, as with ``load``'s numpy path."""

    store: ZarrFeatureStore
    lineage: str
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
        array = self.store.array(self.lineage, self.name, rows=rows[1])
        return guarded(
            self.store, self.lineage, self.name, lambda: np.asarray(array[index]), shards
        )
