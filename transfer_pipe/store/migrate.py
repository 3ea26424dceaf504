"""``transfer-pipe migrate``: feature sets of layout 2 (one full copy each under
``feature_sets/<key>/``) become versions of lineages, keys unchanged.

Oldest first, each complete feature set becomes the version of the same key in the
lineage of its source and model configuration: rows whose content that lineage already
holds are shared, the others are written once (``FeatureStore.create`` decides, as for
an embed). Only when the version is complete is the old folder removed (its marker
first), so a migration killed at any moment loses nothing, and running it again goes
on where it stopped. Every key a head, fine-tuning run, sweep or published backbone
recorded then opens the same rows as before.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import zarr

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.records import Record
from transfer_pipe.schema import FAILURE, ROW_COLUMNS
from transfer_pipe.store.base import FeatureSetSpec, ShardStats
from transfer_pipe.store.keys import lineage_id
from transfer_pipe.store.layout import FEATURES, LEGACY_SETS, LINEAGES, ROW, VERSIONS
from transfer_pipe.store.zarr_store import ZarrFeatureStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MigrateReport(Record):
    """What ``migrate`` did to one store."""

    store: str
    migrated: list[str] = field(default_factory=list)
    shared_rows: int = 0  # rows a version shares with an earlier one instead of a copy
    left: list[str] = field(default_factory=list)  # "<key>: why" (incomplete sets)
    bytes_before: int = 0
    bytes_after: int = 0


def migrate(store: ZarrFeatureStore) -> MigrateReport:
    """Turn every complete feature set of layout 2 in ``store`` into a version."""
    root = store.root
    if not any(store.fs.exists(f"{root}/{name}") for name in (LEGACY_SETS, VERSIONS, LINEAGES)):
        raise TransferPipeError(
            f"{store.url} is not a feature store (it has no {LEGACY_SETS}/, {VERSIONS}/ or "
            f"{LINEAGES}/ folder); pass --store with the folder `transfer-pipe embed` wrote."
        )
    before = store.store_nbytes()
    legacy = []
    left = []
    for key in store.legacy_keys():
        attrs = _legacy_attrs(store, key)
        if attrs is None:
            continue  # its marker is gone: an earlier migrate removed it halfway
        if attrs.get("status") != "complete" or "spec" not in attrs:
            left.append(f"{key}: incomplete, left in place (embed its source again instead)")
            continue
        legacy.append((_order(store, key, attrs), key, attrs))
    migrated, shared = [], 0
    for _, key, attrs in sorted(legacy):
        shared += _migrate_one(store, key, attrs)
        migrated.append(key)
    if not store.legacy_keys():
        store.drop_legacy("")  # the emptied feature_sets/ group itself
    return MigrateReport(
        store=store.url,
        migrated=migrated,
        shared_rows=shared,
        left=left,
        bytes_before=before,
        bytes_after=store.store_nbytes(),
    )


def _order(store: ZarrFeatureStore, key: str, attrs: dict[str, object]) -> tuple[str, float]:
    """When feature set ``key`` was made: its ``created`` (whole seconds), then its
    document's modification time (two sets made within one second)."""
    try:
        info = store.fs.info(f"{store.root}/{LEGACY_SETS}/{key}/zarr.json")
        modified = float(info.get("mtime") or pd.Timestamp(info["LastModified"]).timestamp())
    except (OSError, KeyError, ValueError, TypeError):
        modified = 0.0
    return str(attrs.get("created", "")), modified


def _legacy_attrs(store: ZarrFeatureStore, key: str) -> dict[str, object] | None:
    try:
        group = zarr.open_group(store.zarr_store(), path=f"{LEGACY_SETS}/{key}", mode="r")
    except FileNotFoundError:
        return None
    return dict(group.attrs.asdict())


def _migrate_one(store: ZarrFeatureStore, key: str, attrs: dict[str, object]) -> int:
    """Make version ``key`` from the layout-2 feature set ``key`` and remove the latter;
    returns how many of its rows it shares with earlier versions."""
    old = FeatureSetSpec.from_dict(attrs["spec"])  # type: ignore[arg-type]
    lineage = lineage_id(old.source, old.embedding_key, list(old.layers))
    spec = dataclasses.replace(old, lineage=lineage, parent=None, first_shard=0, appended=-1)
    claim = store.claim(lineage, done=lambda: store.version_status(key) == "complete")
    try:
        shared = 0
        if claim is not None and store.version_status(key) != "complete":
            group = zarr.open_group(store.zarr_store(), path=f"{LEGACY_SETS}/{key}", mode="r")
            rows = pd.DataFrame({name: _array(group, name)[:] for name in ROW_COLUMNS})
            failures = np.asarray(_array(group, FAILURE)[:]).astype(object)
            if store.version_status(key) == "missing":
                store.create(spec, rows)
            store.recover(key)
            shared = _write_rows(store, key, group, failures)
            provenance = dict(attrs.get("provenance", {}))  # type: ignore[call-overload]
            store.mark_complete(key, {**provenance, "migrated_from": "layout 2"})
            version = zarr.open_group(
                store.zarr_store(read_only=False), path=f"{VERSIONS}/{key}", mode="r+"
            )
            version.attrs.update({"created": str(attrs.get("created", ""))})  # when it was made
    finally:
        if claim is not None:
            claim.release()
    store.drop_legacy(key)
    logger.info("migrated feature set %s into lineage %s", key, lineage)
    return shared


def _write_rows(store: ZarrFeatureStore, key: str, group: zarr.Group, failures: np.ndarray) -> int:
    """Write the version's pending lineage shards from the old arrays; returns the rows
    it shares instead."""
    spec = store.spec(key)
    table = store.row_table(key, columns=())
    position = pd.Series(np.arange(len(table)), index=table[ROW]).groupby(level=0).first()
    for shard in store.pending_shards(key):
        rows = spec.shard_rows(shard)
        old_rows = position.loc[list(rows)].to_numpy()
        unique, where = np.unique(old_rows, return_inverse=True)  # zarr reads in order
        features = {
            layer: np.asarray(
                _array(group, f"{FEATURES}/{layer}").get_orthogonal_selection((unique, slice(None)))
            )[where]
            for layer in spec.layers
        }
        reasons = [str(failures[row]) for row in old_rows]
        store.write_shard(key, shard, features, reasons, ShardStats(0, len(rows), 0.0))
    return spec.rows - spec.appended


def _array(group: zarr.Group, name: str) -> zarr.Array:
    array = group[name]
    if not isinstance(array, zarr.Array):
        raise TransferPipeError(f"{name} of {group.path} is not an array: the store is damaged")
    return array
