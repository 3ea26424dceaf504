"""How one feature set is laid out in Zarr v3: its arrays, their chunking and codecs, and
the attributes by which the store describes itself.

Layout version 2, ``feature_sets/<key>/`` (one group, consolidated once complete)::

    features/<layer>   [row, feature]  float32|float16, NaN on failed rows; one Zarr
                       shard (one object) per shard task, inner chunks of <=256 rows
    sample_id uri label split content_hash   [row] strings, written once by the driver
                       in ``create``: one object per column (up to 16M rows)
    failure            [row] strings, "" for a good row; written by the driver at
                       completion from the shard records
    shard_record       [shard] JSON strings, "" until the shard task has written its rows:
                       {"embedded", "reused", "seconds", "failures": {offset: reason}};
                       one object per shard task, written last (the shard's done marker)
    table              an empty array whose folder holds ``rows.parquet`` (written at
                       completion): the row columns and the failure reason, for pandas,
                       DuckDB or Spark without this library

Every chunk ends with a crc32c checksum (and each Zarr shard's index has its own), so a
damaged object is an error, never silently wrong numbers. No two shard tasks write the
same object: a partial write of a Zarr shard would be a read-modify-write of all of it.

Folders that are not Zarr data (``heads/``, ``finetune/``, a feature set's ``table/``)
are marked by an empty Zarr array, so listing the hierarchy (``members``, ``tree``)
never meets an object Zarr does not recognise (an array's folder is never listed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

import zarr
import zarr.storage
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.errors import ContainsArrayError, ZarrUserWarning

from transfer_pipe.schema import FAILURE, ROW_COLUMNS
from transfer_pipe.store.base import FeatureSetSpec

LAYOUT_VERSION = 2
SETS = "feature_sets"
CLAIMS = "claims"  # which run writes a feature set now: store.claims
FEATURES = "features"
RECORDS = "shard_record"
TABLE = "table"
TABLE_FILE = "rows.parquet"
STATS = ("embedded", "reused", "seconds")
SPEC_BACKUP = "spec_backup"  # a copy of the spec on ``features``: repairs a damaged root

ROW_CHUNK = 1 << 16  # rows per inner chunk of a string column
ROW_SHARD = 1 << 24  # rows per object of a string column
FEATURE_CHUNK = 256  # rows per inner chunk of a feature shard (partial reads)

# Store-root folders written by other parts of the package, not by Zarr.
FOREIGN_FOLDERS: Mapping[str, str] = {
    "heads": "fitted heads: heads/<head_id>/card.json and model files (not Zarr data)",
    "finetune": "fine-tuning runs: finetune/<run_id>/card.json and checkpoints (not Zarr data)",
    CLAIMS: "claims/<key>/<generation>.json: which run writes a feature set now (not Zarr data)",
    "cache": "cache/hashes/<source>.parquet: content hashes by file stamp (not Zarr data)",
}

NAN_ROWS = (
    "A row of NaN in features/<layer> is an image that could not be used: its failure "
    "column (and the table's) says why, e.g. 'corrupt: ...'. Good rows have failure ''."
)


def codecs() -> list[Any]:
    """Bytes-to-bytes codecs of every chunk: compressed, then checksummed."""
    return [ZstdCodec(level=3), Crc32cCodec()]


def feature_chunk_rows(shard_size: int) -> int:
    """Inner chunk rows of a feature shard: the largest divisor of ``shard_size`` up to
    FEATURE_CHUNK (a Zarr shard must hold whole chunks), or the whole shard when the
    divisors are all tiny (an odd shard size)."""
    best = max(d for d in range(1, min(shard_size, FEATURE_CHUNK) + 1) if shard_size % d == 0)
    return best if best * 8 >= min(shard_size, FEATURE_CHUNK) else shard_size


def row_chunking(rows: int) -> tuple[int, int]:
    """(rows per object, rows per inner chunk) of a string column of ``rows`` rows."""
    chunk = max(1, min(rows, ROW_CHUNK))
    return min(math.ceil(rows / chunk) * chunk, ROW_SHARD), chunk


def describe(spec: FeatureSetSpec) -> dict[str, Any]:
    """The ``layout`` attribute of a feature set: what a reader without this library
    needs to make sense of it."""
    return {
        "version": LAYOUT_VERSION,
        "rows": spec.rows,
        "rows_per_shard_task": spec.shard_size,
        "features": f"{FEATURES}/<layer> [row, feature], layers {list(spec.layers)}",
        "nan_rows": NAN_ROWS,
        "row_columns": [*ROW_COLUMNS, FAILURE],
        "shard_record": (
            f"{RECORDS}[shard]: JSON of a written shard task, '' until written: "
            f"{', '.join(STATS)} (rows embedded, rows copied from other feature sets, "
            "seconds spent) and failures {row offset in shard: reason}"
        ),
        "stats_columns": list(STATS),
        "table": f"{TABLE}/{TABLE_FILE}: the row columns and failure, once complete",
        "checksums": "crc32c on every chunk and every Zarr shard index",
    }


def create_arrays(group: zarr.Group, spec: FeatureSetSpec) -> None:
    """Create every array of feature set ``spec`` in ``group`` (no data written)."""
    shard_rows, chunk_rows = row_chunking(spec.rows)
    for name in (*ROW_COLUMNS, FAILURE):
        group.create_array(
            name,
            shape=(spec.rows,),
            shards=(shard_rows,),
            chunks=(chunk_rows,),
            dtype=str,
            fill_value="",
            compressors=codecs(),
            dimension_names=("row",),
        )
    features = group.create_group(FEATURES, attributes={SPEC_BACKUP: _spec_dict(spec)})
    inner = feature_chunk_rows(spec.shard_size)
    for layer in spec.layers:
        dim = spec.layer_dims[layer]
        features.create_array(
            layer,
            shape=(spec.rows, dim),
            shards=(spec.shard_size, dim),
            chunks=(inner, dim),
            dtype=spec.dtype,
            fill_value=float("nan"),
            compressors=codecs(),
            # Its own feature dimension per layer: xarray opens the group as one dataset
            # only when each dimension name has one length.
            dimension_names=("row", f"{layer}_feature"),
        )
    group.create_array(
        RECORDS,
        shape=(spec.n_shards,),
        chunks=(1,),
        dtype=str,
        fill_value="",
        compressors=codecs(),
        dimension_names=("shard",),
    )
    mark_foreign(group, TABLE, f"{TABLE_FILE}: the rows as a Parquet table, once complete")


def mark_foreign(group: zarr.Group, name: str, what: str) -> None:
    """Mark the folder ``name`` of ``group`` as holding files that are not Zarr data (an
    empty array: Zarr never lists inside an array's folder). Never touches what the
    folder holds; a marker already there is kept."""
    if name in group:
        return
    with contextlib.suppress(ContainsArrayError):  # another run marked it meanwhile
        group.create_array(
            name,
            shape=(0,),
            chunks=(1,),
            dtype="uint8",
            attributes={"holds": what},
            dimension_names=(f"{name}_marker",),  # xarray opens no array without them
        )


def metadata_documents(spec: FeatureSetSpec) -> dict[str, bytes]:
    """Path (relative to the feature set) -> the ``zarr.json`` bytes ``create`` writes for
    every array and sub-group: what a damaged metadata document is restored from."""
    memory = zarr.storage.MemoryStore()
    group = zarr.open_group(memory, mode="w")
    create_arrays(group, spec)
    return {
        key: memory._store_dict[key].to_bytes()
        for key in sorted(memory._store_dict)
        if key.endswith("zarr.json") and key != "zarr.json"
    }


def consolidate(store: zarr.storage.StoreLike, path: str) -> None:
    """Consolidate the metadata of the group at ``path``, so a reader opens it with one
    request. Zarr warns that consolidated metadata is not yet in the v3 spec (readers
    that do not know it read each ``zarr.json`` instead), and about the non-Zarr table
    file, which this layout marks on purpose: both warnings are expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ZarrUserWarning)
        zarr.consolidate_metadata(store, path=path)


def _spec_dict(spec: FeatureSetSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)
