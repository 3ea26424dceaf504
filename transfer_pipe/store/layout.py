"""How a store is laid out in Zarr v3: lineages of appended rows, versions that pick rows.

Layout version 3::

    lineages/<lineage>/            one per (source, model configuration); attrs ``lineage``
      features/<layer>   [row, feature] float32|float16, NaN on failed rows; grows by
                         whole Zarr shards (one object per shard task), inner chunks of
                         <=256 rows; an increment's rows start at the next shard
      content_hash       [row] sha256 of each row's image bytes: what rows are shared by
      failure            [row] "" for a good row, else why the image could not be used
      shard_record       [shard] JSON, "" until the shard task wrote its objects (its done
                         marker): {"rows", "embedded", "reused", "seconds", "failures",
                         "version"}; every per-row array has one object per shard
    versions/<key>/                one per feature set: attrs ``spec`` (its lineage, parent,
                                   appended shards), ``status``, ``created``, ``changes``,
                                   ``sequence``, ``provenance``
      table/rows.parquet  the version's rows, written once: sample_id, uri, label, split,
                         row (its lineage row: features, content_hash and failure there);
                         plain pandas reads it
      table/appended.parquet  the contents it appended: row, content_hash

A version never rewrites a row it shares: new content is appended, a removed image is a
row its table leaves out. Every chunk ends with a crc32c checksum (and each Zarr shard's
index has its own), so a damaged object is an error, never silently wrong numbers. No two
shard tasks write the same object.

Layout 2 (``feature_sets/<key>/``, one full copy per feature set) is read only by
``transfer-pipe migrate`` (``store.migrate``), which turns each into a version.

Folders that are not Zarr data (``heads/``, ``finetune/``, a version's ``table/``) are
marked by an empty Zarr array, so listing the hierarchy (``members``, ``tree``) never
meets an object Zarr does not recognise (an array's folder is never listed).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from typing import Any

import pandas as pd
import zarr
import zarr.storage
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.errors import ContainsArrayError

from transfer_pipe.schema import CONTENT_HASH, FAILURE, LABEL, SAMPLE_ID, SPLIT, URI
from transfer_pipe.store.base import LineageSpec

LAYOUT_VERSION = 3
LINEAGES = "lineages"
VERSIONS = "versions"
LEGACY_SETS = "feature_sets"  # layout 2: one full copy per feature set (``migrate``)
CLAIMS = "claims"  # which run writes a lineage now: store.claims
FEATURES = "features"
RECORDS = "shard_record"
ROW = "row"  # a version table's column: the row of its lineage
TABLE = "table"
TABLE_FILE = "rows.parquet"
APPENDED_FILE = "appended.parquet"
STATS = ("embedded", "reused", "seconds")
LINEAGE_COLUMNS = (CONTENT_HASH, FAILURE)  # per-row arrays of a lineage
TABLE_COLUMNS = (SAMPLE_ID, URI, LABEL, SPLIT, ROW)  # a version's Parquet table

FEATURE_CHUNK = 256  # rows per inner chunk of a feature shard (partial reads)
LOST = "lost"  # the failure category of a row whose image could not be had again after a
# repair (not in any version's source any more, or changed since): never shared

# Store-root folders written by other parts of the package, not by Zarr.
FOREIGN_FOLDERS: Mapping[str, str] = {
    "heads": "fitted heads: heads/<head_id>/card.json and model files (not Zarr data)",
    "finetune": "fine-tuning runs: finetune/<run_id>/card.json and checkpoints (not Zarr data)",
    CLAIMS: "claims/<lineage>/<generation>.json: which run writes a lineage now (not Zarr data)",
    "cache": "cache/hashes/<source>.parquet: content hashes by file stamp; cache/screens/ and "
    "cache/layer-choices/: a layer's screens and a run's layer choice (not Zarr data)",
}

NAN_ROWS = (
    "A row of NaN in features/<layer> is an image that could not be used: its failure "
    "column (and each version table's) says why, e.g. 'corrupt: ...'. Good rows have "
    "failure ''. Rows no version table names (the tail of a shard) are never read."
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


def describe(lineage: LineageSpec) -> dict[str, Any]:
    """The ``layout`` attribute of a lineage: what a reader without this library needs."""
    return {
        "version": LAYOUT_VERSION,
        "rows_per_shard": lineage.shard_size,
        "features": f"{FEATURES}/<layer> [row, feature], layers {list(lineage.layers)}",
        "nan_rows": NAN_ROWS,
        "row_columns": list(LINEAGE_COLUMNS),
        "shard_record": (
            f"{RECORDS}[shard]: JSON of a written shard, '' until written: rows (used rows "
            f"of the shard), {', '.join(STATS)} (rows embedded, rows copied from other "
            "lineages, seconds spent), failures {row offset in shard: reason}, version "
            "(the feature set that appended it)"
        ),
        "versions": (
            f"{VERSIONS}/<key>/{TABLE}/{TABLE_FILE}: one feature set's rows (sample_id, "
            f"uri, label, split); its column '{ROW}' is the row of these arrays"
        ),
        "checksums": "crc32c on every chunk and every Zarr shard index",
    }


def create_lineage_arrays(group: zarr.Group, lineage: LineageSpec) -> None:
    """Create every array of ``lineage`` in ``group``, empty (they grow with versions)."""
    size = lineage.shard_size
    for name in LINEAGE_COLUMNS:
        group.create_array(
            name,
            shape=(0,),
            chunks=(size,),
            dtype=str,
            fill_value="",
            compressors=codecs(),
            dimension_names=("row",),
        )
    features = group.create_group(FEATURES)
    inner = feature_chunk_rows(size)
    for layer in lineage.layers:
        dim = lineage.layer_dims[layer]
        features.create_array(
            layer,
            shape=(0, dim),
            shards=(size, dim),
            chunks=(inner, dim),
            dtype=lineage.dtype,
            fill_value=float("nan"),
            compressors=codecs(),
            # Its own feature dimension per layer: xarray opens the group as one dataset
            # only when each dimension name has one length.
            dimension_names=("row", f"{layer}_feature"),
        )
    group.create_array(
        RECORDS,
        shape=(0,),
        chunks=(1,),
        dtype=str,
        fill_value="",
        compressors=codecs(),
        dimension_names=("shard",),
    )


def lineage_arrays(lineage: LineageSpec) -> list[str]:
    """Paths (relative to the lineage) of its arrays."""
    return [
        *LINEAGE_COLUMNS,
        *(f"{FEATURES}/{layer}" for layer in lineage.layers),
        RECORDS,
    ]


def shard_objects(lineage: LineageSpec, shard: int) -> list[str]:
    """Paths (relative to the lineage) of the objects that hold shard ``shard``: its
    record first (what marks it written), then its rows."""
    return [
        f"{RECORDS}/c/{shard}",
        *(f"{name}/c/{shard}" for name in LINEAGE_COLUMNS),
        *(f"{FEATURES}/{layer}/c/{shard}/0" for layer in lineage.layers),
    ]


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


def metadata_documents(lineage: LineageSpec) -> dict[str, bytes]:
    """Path (relative to the lineage) -> the ``zarr.json`` bytes its arrays and sub-groups
    are created with (their shapes then grow): what a damaged document is restored from."""
    memory = zarr.storage.MemoryStore()
    group = zarr.open_group(memory, mode="w")
    create_lineage_arrays(group, lineage)
    return {
        key: memory._store_dict[key].to_bytes()
        for key in sorted(memory._store_dict)
        if key.endswith("zarr.json") and key != "zarr.json"
    }


def read_parquet(data: bytes) -> pd.DataFrame:
    """A version's table as written (with page checksums), the checksums verified: a
    damaged table is an error, never other rows."""
    return pd.read_parquet(io.BytesIO(data), page_checksum_verification=True)


def shareable(rows: pd.DataFrame) -> pd.DataFrame:
    """The written lineage rows (``FeatureStore.lineage_rows``) a new version may share by
    content hash: every one but those a repair lost (a failed one too: the same bytes
    fail the same way)."""
    return rows[~rows[FAILURE].astype(str).str.startswith(f"{LOST}:")]
