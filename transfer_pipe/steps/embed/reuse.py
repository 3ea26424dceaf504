"""Rows a run need not compute: good rows, and whole shards, that other lineages of the
store hold under the same embedding key, found by content hash."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from transfer_pipe.schema import CONTENT_HASH, FAILURE
from transfer_pipe.store import FeatureSetSpec, FeatureStore


class Donors(dict[str, tuple[str, int]]):
    """content_hash -> (lineage, row) of good rows other lineages hold, and in ``shards``:
    (shard size, ``shard_digest`` of a shard's content hashes in order) -> (lineage,
    shard) for their written shards without failed rows."""

    def __init__(self) -> None:
        super().__init__()
        self.shards: dict[tuple[int, str], tuple[str, int]] = {}


def shard_digest(hashes: Sequence[str]) -> str:
    """One digest of a shard's content hashes in row order."""
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def reusable_rows(store: FeatureStore, spec: FeatureSetSpec) -> Donors:
    """content_hash -> (lineage, row) for good rows of other lineages that share this
    version's embedding key (model, weights, preprocessing, dtype) and hold its layers,
    and their whole shards (``Donors``)."""
    return cached_rows(store, spec.embedding_key, spec.layers, exclude=spec.lineage)


def cached_rows(
    store: FeatureStore, embedding_key: str, layers: Sequence[str], exclude: str | None = None
) -> Donors:
    """content_hash -> (lineage, row) for every good, written row of the store's lineages
    with ``embedding_key`` that hold all of ``layers`` (but lineage ``exclude``); and their
    written shards without failed rows, by content (``Donors.shards``)."""
    donors = Donors()
    for lineage in store.lineages():
        if lineage.lineage == exclude:
            continue
        if lineage.embedding_key != embedding_key or not set(layers) <= set(lineage.layers):
            continue
        rows = store.lineage_rows(lineage.lineage)
        good = rows[rows[FAILURE] == ""]
        for content_hash, row in zip(good[CONTENT_HASH], good.index, strict=True):
            donors.setdefault(str(content_hash), (lineage.lineage, int(row)))
        shard_of = rows.index.to_numpy() // lineage.shard_size
        for shard in np.unique(shard_of).tolist():
            mine = rows[shard_of == shard]
            if (mine[FAILURE] == "").all():
                digest = shard_digest(mine[CONTENT_HASH].astype(str).tolist())
                donors.shards.setdefault((lineage.shard_size, digest), (lineage.lineage, shard))
    return donors
