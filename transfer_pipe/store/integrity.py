"""Verify a feature set end to end, and repair it so the next embed recomputes only what
was damaged.

``check`` reads every object of a feature set: each ``zarr.json`` against the one its spec
implies (``layout.metadata_documents``), the consolidated copy of a complete set, every
shard record, every Zarr shard of every layer (its crc32c checksums; failed rows NaN and
good rows not), the row columns and the Parquet table.

``repair`` restores the metadata documents from the spec (the feature-set group's own
from the copy of the spec on ``features``), rewrites damaged row columns from the table,
clears the records of damaged shards (so they read as not done) and marks the feature set
incomplete: the next ``transfer-pipe embed`` of the same source writes those shards, and
completes the set again (failure column, table, consolidated metadata).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import GroupMetadata

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.schema import FAILURE, ROW_COLUMNS
from transfer_pipe.store.base import FeatureSetSpec
from transfer_pipe.store.layout import (
    FEATURES,
    LAYOUT_VERSION,
    RECORDS,
    SETS,
    SPEC_BACKUP,
    TABLE,
    TABLE_FILE,
    describe,
    metadata_documents,
)

if TYPE_CHECKING:
    from transfer_pipe.store.zarr_store import ZarrFeatureStore

ROOT = "zarr.json"  # the feature-set group's own metadata document
CONSOLIDATED = "zarr.json (consolidated metadata)"  # rewritten at the next completion
_COMPARED = ("node_type", "shape", "data_type", "chunk_grid", "codecs", "fill_value")


@dataclass(frozen=True)
class Damage:
    """What ``check`` found damaged in one feature set (empty when it reads whole)."""

    key: str
    metadata: tuple[str, ...] = ()  # documents, relative to the feature set's folder
    shards: tuple[int, ...] = ()  # shards whose features or record are damaged
    columns: tuple[str, ...] = ()  # driver-written row columns (failure included)
    table: bool = False  # the Parquet table
    problems: tuple[str, ...] = ()  # one line per finding, for people
    actions: tuple[str, ...] = ()  # what ``repair`` did
    recreate: bool = False  # the spec is lost: the next embed starts the set afresh

    @property
    def ok(self) -> bool:
        return not (self.metadata or self.shards or self.columns or self.table)


@dataclass
class _Findings:
    metadata: list[str] = field(default_factory=list)
    shards: set[int] = field(default_factory=set)
    columns: list[str] = field(default_factory=list)
    table: bool = False
    problems: list[str] = field(default_factory=list)


def check(store: ZarrFeatureStore, key: str) -> Damage:
    """Read feature set ``key`` of ``store`` end to end and report what is damaged."""
    found = _Findings()
    document = _root_document(store, key, found)
    attrs = None if document is None else document["attributes"]
    spec, complete = _spec_of(store, key, attrs, found)
    if spec is None:
        return _damage(key, found, recreate=True)
    documents = _check_documents(store, key, spec, found)
    if complete and document is not None:
        _check_consolidated(document, documents, found)
    arrays = _Arrays(store, key)
    records = _check_records(arrays, spec, found)
    _check_features(arrays, spec, records, found)
    columns = _check_columns(arrays, spec, records if complete else None, found)
    if complete:
        _check_table(store, key, columns, found)
    return _damage(key, found)


def _damage(key: str, found: _Findings, recreate: bool = False) -> Damage:
    return Damage(
        key=key,
        metadata=tuple(found.metadata),
        shards=tuple(sorted(found.shards)),
        columns=tuple(found.columns),
        table=found.table,
        problems=tuple(found.problems),
        recreate=recreate,
    )


def _read_json(store: ZarrFeatureStore, path: str) -> dict[str, Any]:
    """A JSON document of ``store`` (a path of its filesystem); FileNotFoundError when it
    does not exist, ValueError when it does not parse as an object."""
    data = json.loads(store.fs.cat_file(path))
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


class _Arrays:
    """Opens arrays of one feature set from their own ``zarr.json`` (never from the
    consolidated copy, nor through the group's document, which may be the damaged one)."""

    def __init__(self, store: ZarrFeatureStore, key: str) -> None:
        self._store = store.zarr_store()
        self._prefix = f"{SETS}/{key}"

    def __getitem__(self, name: str) -> zarr.Array:
        return zarr.open_array(self._store, path=f"{self._prefix}/{name}", mode="r")


def _root_document(store: ZarrFeatureStore, key: str, found: _Findings) -> dict[str, Any] | None:
    """The feature-set group's document, None when it is damaged."""
    path = f"{store.folder(key)}/{ROOT}"
    try:
        document = _read_json(store, path)
    except FileNotFoundError as err:
        raise TransferPipeError(
            f"feature set {key!r} is not in the store {store.url}; "
            f"`transfer-pipe ls --store {store.url}` lists the feature sets it holds."
        ) from err
    except ValueError as err:
        found.metadata.append(ROOT)
        found.problems.append(f"metadata {ROOT} of the feature set does not parse ({err})")
        return None
    attrs = document.get("attributes")
    if not isinstance(attrs, dict) or "spec" not in attrs:
        found.metadata.append(ROOT)
        found.problems.append(f"metadata {ROOT} of the feature set lacks its spec")
        return None
    return document


def _spec_of(
    store: ZarrFeatureStore, key: str, attrs: dict[str, Any] | None, found: _Findings
) -> tuple[FeatureSetSpec | None, bool]:
    """The spec (from the group, else from its copy on ``features``) and whether the set
    is complete; (None, False) when neither copy reads."""
    from transfer_pipe.store.zarr_store import spec_from_dict

    if attrs is not None:
        version = attrs.get("layout", {}).get("version", 1)
        if version != LAYOUT_VERSION:
            raise TransferPipeError(
                f"feature set {key} has layout version {version}; this version verifies "
                f"{LAYOUT_VERSION} only: embed its source again (it gets a new key)."
            )
        return spec_from_dict(attrs["spec"]), attrs.get("status") == "complete"
    try:
        backup = _read_json(store, f"{store.folder(key)}/{FEATURES}/{ROOT}")
        return spec_from_dict(backup["attributes"][SPEC_BACKUP]), False
    except (OSError, ValueError, KeyError, TypeError):
        found.problems.append(
            f"the copy of the spec in {FEATURES}/{ROOT} does not read either: the feature "
            "set cannot be trusted and will be computed afresh"
        )
        return None, False


def _check_documents(
    store: ZarrFeatureStore, key: str, spec: FeatureSetSpec, found: _Findings
) -> dict[str, dict[str, Any]]:
    """Compare every array's and sub-group's ``zarr.json`` with the one ``spec`` implies;
    returns the expected documents, parsed."""
    expected = {path: json.loads(raw) for path, raw in metadata_documents(spec).items()}
    for path, want in expected.items():
        try:
            have = _read_json(store, f"{store.folder(key)}/{path}")
        except (OSError, ValueError) as err:
            found.metadata.append(path)
            found.problems.append(f"metadata {path} does not read ({type(err).__name__}: {err})")
            continue
        if _essentials(have) != _essentials(want) or have.get("attributes") != want.get(
            "attributes"
        ):
            found.metadata.append(path)
            found.problems.append(f"metadata {path} differs from the layout its spec implies")
    return expected


def _essentials(document: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a metadata document that decide how its bytes are read."""
    return {name: document.get(name) for name in _COMPARED}


def _check_consolidated(
    document: dict[str, Any], expected: dict[str, dict[str, Any]], found: _Findings
) -> None:
    """A complete set's readers use its consolidated metadata: it must match too."""
    consolidated = (document.get("consolidated_metadata") or {}).get("metadata")
    if not isinstance(consolidated, dict):
        found.metadata.append(CONSOLIDATED)
        found.problems.append("the complete feature set lacks its consolidated metadata")
        return
    for path, want in expected.items():
        name = path.removesuffix(f"/{ROOT}")
        have = consolidated.get(name)
        if not isinstance(have, dict) or _essentials(have) != _essentials(want):
            found.metadata.append(CONSOLIDATED)
            found.problems.append(f"the consolidated metadata of {name} is damaged")
            return


def _check_records(
    arrays: _Arrays, spec: FeatureSetSpec, found: _Findings
) -> list[dict[str, Any] | None]:
    """Every shard record, read one by one; a damaged one marks its shard."""
    records: list[dict[str, Any] | None] = []
    try:
        array = arrays[RECORDS]
    except Exception as err:
        found.problems.append(f"{RECORDS} does not open ({err}): every shard is recomputed")
        found.shards.update(range(spec.n_shards))
        return [None] * spec.n_shards
    for shard in range(spec.n_shards):
        try:
            text = str(np.asarray(array[shard : shard + 1])[0])
            records.append(json.loads(text) if text else None)
        except Exception as err:
            found.shards.add(shard)
            found.problems.append(f"shard {shard}: its record is damaged ({_why(err)})")
            records.append(None)
    return records


def _check_features(
    arrays: _Arrays,
    spec: FeatureSetSpec,
    records: list[dict[str, Any] | None],
    found: _Findings,
) -> None:
    """Every written Zarr shard of every layer decodes, and its NaN rows are exactly the
    rows its record says failed (a lost object reads as NaN)."""
    for layer in spec.layers:
        name = f"{FEATURES}/{layer}"
        try:
            array = arrays[name]
        except Exception:
            continue  # its metadata is reported damaged; checked again after the repair
        for shard, record in enumerate(records):
            if record is None:
                continue
            rows = spec.shard_rows(shard)
            try:
                values = np.asarray(array[rows.start : rows.stop], dtype=np.float64)
            except Exception as err:
                found.shards.add(shard)
                found.problems.append(f"shard {shard}: {name} is damaged ({_why(err)})")
                continue
            failed = np.zeros(len(rows), dtype=bool)
            failed[[int(offset) for offset in record.get("failures", {})]] = True
            if not np.array_equal(np.isnan(values).all(axis=1), failed):
                found.shards.add(shard)
                found.problems.append(
                    f"shard {shard}: {name} has NaN rows where its record has none (or the "
                    "reverse): an object is missing or was replaced"
                )


def _check_columns(
    arrays: _Arrays,
    spec: FeatureSetSpec,
    records: list[dict[str, Any] | None] | None,
    found: _Findings,
) -> dict[str, np.ndarray]:
    """Read every row column; ``records`` (of a complete set) must match its failure
    column. Returns the columns that read."""
    from transfer_pipe.store.zarr_store import failure_column

    names = [*ROW_COLUMNS, FAILURE] if records is not None else list(ROW_COLUMNS)
    columns = {}
    for name in names:
        try:
            columns[name] = np.asarray(arrays[name][:])
        except Exception as err:
            found.columns.append(name)
            found.problems.append(f"column {name} is damaged ({_why(err)})")
    # A damaged record already says why the failure column disagrees: not reported twice.
    stale = (
        records is not None
        and FAILURE in columns
        and not found.shards
        and columns[FAILURE].tolist() != failure_column(spec, records).tolist()
    )
    if stale:
        found.columns.append(FAILURE)
        found.problems.append("column failure does not match the shard records")
    return columns


def _check_table(
    store: ZarrFeatureStore, key: str, columns: dict[str, np.ndarray], found: _Findings
) -> None:
    """The Parquet table reads, and agrees with the row columns that read."""
    try:
        table = pd.read_parquet(io.BytesIO(store.fs.cat_file(store.table_path(key))))
        agrees = all(
            table[name].astype(str).tolist() == [str(value) for value in values.tolist()]
            for name, values in columns.items()
        )
    except Exception as err:
        found.table = True
        found.problems.append(f"table {TABLE}/{TABLE_FILE} does not read ({_why(err)})")
        return
    if not agrees:
        found.table = True
        found.problems.append(f"table {TABLE}/{TABLE_FILE} disagrees with the row columns")


def _why(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err)[:120]}"


# -- repair ------------------------------------------------------------------------------


def repair(store: ZarrFeatureStore, key: str, damage: Damage) -> Damage:
    """Repair what ``damage`` names (see the module docstring); returns the damage found
    by a second check (only shards and derived parts: metadata is whole again), with the
    actions taken."""
    folder = store.folder(key)
    if damage.recreate:
        store.fs.rm_file(f"{folder}/{ROOT}")
        action = "removed the feature set's metadata: the next embed computes it afresh"
        return replace(damage, actions=(action,))
    actions: list[str] = []
    spec, attrs = _restore_root(store, key, damage, actions)
    documents = metadata_documents(spec)
    for path in damage.metadata:
        if path in documents:
            _put(store, f"{folder}/{path}", documents[path])
            actions.append(f"rewrote metadata {path} from the spec")
    again = check(store, key) if damage.metadata else damage
    shards = sorted(set(again.shards))
    _rewrite_columns(store, key, again, actions)
    _clear_shards(store, key, spec, shards, actions)
    _mark_incomplete(store, key, attrs, actions)
    return replace(
        again,
        metadata=damage.metadata,
        shards=tuple(sorted(set(damage.shards) | set(shards))),
        problems=damage.problems + tuple(p for p in again.problems if p not in damage.problems),
        actions=tuple(actions),
    )


def _restore_root(
    store: ZarrFeatureStore, key: str, damage: Damage, actions: list[str]
) -> tuple[FeatureSetSpec, dict[str, Any]]:
    """The spec and the group's attributes, the group's document rewritten from the
    copy of the spec when it was damaged."""
    from transfer_pipe.store.zarr_store import spec_from_dict

    folder = store.folder(key)
    if ROOT not in damage.metadata:
        attrs = _read_json(store, f"{folder}/{ROOT}")["attributes"]
        return spec_from_dict(attrs["spec"]), attrs
    backup = _read_json(store, f"{folder}/{FEATURES}/{ROOT}")["attributes"][SPEC_BACKUP]
    spec = spec_from_dict(backup)
    attrs = {"spec": backup, "status": "incomplete", "created": "", "layout": describe(spec)}
    _put(store, f"{folder}/{ROOT}", _group_document(attrs))
    actions.append(f"rewrote metadata {ROOT} from the copy of the spec in {FEATURES}/{ROOT}")
    return spec, attrs


def _rewrite_columns(store: ZarrFeatureStore, key: str, damage: Damage, actions: list[str]) -> None:
    """Rewrite damaged manifest columns from the Parquet table (the failure column is
    rewritten at completion anyway)."""
    lost = [name for name in damage.columns if name != FAILURE]
    if not lost:
        return
    if damage.table:
        raise TransferPipeError(
            f"feature set {key}: columns {lost} and its table are both damaged, so its rows "
            f"cannot be restored; delete {store.folder(key)} and embed its source again."
        )
    table = pd.read_parquet(io.BytesIO(store.fs.cat_file(store.table_path(key))))
    for name in lost:
        path = f"{SETS}/{key}/{name}"
        column = zarr.open_array(store.zarr_store(read_only=False), path=path, mode="r+")
        column[:] = table[name].to_numpy(dtype=str)
        actions.append(f"rewrote column {name} from the table")


def _clear_shards(
    store: ZarrFeatureStore, key: str, spec: FeatureSetSpec, shards: list[int], actions: list[str]
) -> None:
    """Delete the records (the done markers) and feature objects of ``shards``."""
    folder = store.folder(key)
    for shard in shards:
        paths = [f"{folder}/{RECORDS}/c/{shard}"]
        paths += [f"{folder}/{FEATURES}/{layer}/c/{shard}/0" for layer in spec.layers]
        for path in paths:
            if store.fs.exists(path):
                store.fs.rm_file(path)
        actions.append(f"marked shard {shard} not done (rows {_rows(spec, shard)})")


def _rows(spec: FeatureSetSpec, shard: int) -> str:
    rows = spec.shard_rows(shard)
    return f"{rows.start}-{rows.stop - 1}"


def _mark_incomplete(
    store: ZarrFeatureStore, key: str, attrs: dict[str, Any], actions: list[str]
) -> None:
    """Status incomplete, without consolidated metadata and table: the next embed's
    completion writes them afresh."""
    attrs = {**attrs, "status": "incomplete"}
    attrs.pop("provenance", None)
    _put(store, f"{store.folder(key)}/{ROOT}", _group_document(attrs))
    if store.fs.exists(store.table_path(key)):
        store.fs.rm_file(store.table_path(key))
    actions.append("marked the feature set incomplete: run the same embed again")


def _group_document(attrs: dict[str, Any]) -> bytes:
    """A group's ``zarr.json`` with ``attrs`` and no consolidated metadata."""
    buffers = GroupMetadata(attributes=attrs).to_buffer_dict(default_buffer_prototype())
    return buffers["zarr.json"].to_bytes()


def _put(store: ZarrFeatureStore, path: str, data: bytes) -> None:
    """Write ``data`` aside and move it into place: never half a document."""
    partial = f"{path}.repair.partial"
    store.fs.pipe_file(partial, data)
    store.fs.mv(partial, path)
