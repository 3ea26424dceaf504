"""Verify a version end to end, and repair it so the next embed recomputes only what was
damaged.

``check`` reads every object a version depends on: its own document and row table, its
lineage's documents (each array's ``zarr.json`` against the one the lineage's spec
implies, ``layout.metadata_documents``), and for every lineage shard its rows live in: the
record, every layer's Zarr shard (its crc32c checksums; failed rows NaN and good rows
not), the content hashes (against the version's table) and the failure reasons.

``repair`` rewrites damaged array documents from the lineage's spec, removes the objects
of damaged shards (record first, so they read as not written) and marks every version
whose rows live there incomplete: the next ``transfer-pipe embed`` of the same source
writes those shards again. A version whose own document or table is damaged is removed:
the next embed of its source creates it again from the rows its lineage holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.schema import CONTENT_HASH, FAILURE
from transfer_pipe.store.base import FeatureSetSpec, LineageSpec
from transfer_pipe.store.layout import (
    FEATURES,
    LINEAGES,
    RECORDS,
    ROW,
    TABLE,
    TABLE_COLUMNS,
    TABLE_FILE,
    VERSIONS,
    lineage_arrays,
    metadata_documents,
    read_parquet,
)

if TYPE_CHECKING:
    import pandas as pd

    from transfer_pipe.store.zarr_store import ZarrFeatureStore

ROOT = "zarr.json"
_COMPARED = ("node_type", "data_type", "chunk_grid", "codecs", "fill_value")


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


@dataclass(frozen=True)
class Damage:
    """What ``check`` found damaged in one version (empty when it reads whole)."""

    key: str
    metadata: tuple[str, ...] = ()  # lineage documents, relative to the lineage's folder
    shards: tuple[int, ...] = ()  # lineage shards whose objects or record are damaged
    columns: tuple[str, ...] = ()  # per-row lineage columns found damaged
    table: bool = False  # the version's own document or row table
    problems: tuple[str, ...] = ()  # one line per finding, for people
    actions: tuple[str, ...] = ()  # what ``repair`` did
    recreate: bool = False  # the version is removed: the next embed makes it again

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

    def shard(self, shard: int, problem: str) -> None:
        self.shards.add(shard)
        self.problems.append(f"shard {shard}: {problem}")


def check(store: ZarrFeatureStore, key: str) -> Damage:
    """Read version ``key`` of ``store`` end to end and report what is damaged."""
    found = _Findings()
    spec, complete = _version(store, key, found)
    if spec is None:
        return _damage(key, found, recreate=True)
    table = _version_table(store, key, spec, found)
    if table is None:
        return _damage(key, found, recreate=True)
    lineage = spec.lineage_spec()
    _check_documents(store, lineage, found)
    if f"{RECORDS}/{ROOT}" in found.metadata:
        return _damage(key, found)  # which shards are written cannot be known
    shards = sorted(
        set((table[ROW].to_numpy(np.int64) // spec.shard_size).tolist()) | set(spec.new_shards)
    )
    records = _check_records(store, lineage, shards, complete, found)
    # The arrays whose documents are damaged are read after the repair rewrote them.
    readable = [name for name in lineage_arrays(lineage) if f"{name}/{ROOT}" not in found.metadata]
    _check_features(store, lineage, records, found, readable)
    _check_columns(store, lineage, table, records, found, readable)
    return _damage(key, found)


def _damage(key: str, found: _Findings, recreate: bool = False) -> Damage:
    return Damage(
        key=key,
        metadata=tuple(found.metadata),
        shards=tuple(sorted(found.shards)),
        columns=tuple(dict.fromkeys(found.columns)),
        table=found.table or recreate,
        problems=tuple(found.problems),
        recreate=recreate,
    )


def _read_json(store: ZarrFeatureStore, path: str) -> dict[str, Any]:
    data = json.loads(store.fs.cat_file(path))
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def _version(
    store: ZarrFeatureStore, key: str, found: _Findings
) -> tuple[FeatureSetSpec | None, bool]:
    """The version's spec and whether it is complete; None when its document is lost."""
    path = f"{store.folder(key)}/{ROOT}"
    try:
        attrs = _read_json(store, path).get("attributes")
        spec = FeatureSetSpec.from_dict(attrs["spec"])  # type: ignore[index]
    except FileNotFoundError as err:
        raise TransferPipeError(store._not_here(key)) from err
    except Exception as err:
        found.problems.append(
            f"metadata {VERSIONS}/{key}/{ROOT} does not read ({_why(err)}): the version "
            "is made again from its lineage's rows by the next embed of its source"
        )
        return None, False
    return spec, attrs.get("status") == "complete"  # type: ignore[union-attr]


def _version_table(
    store: ZarrFeatureStore, key: str, spec: FeatureSetSpec, found: _Findings
) -> pd.DataFrame | None:
    """The version's row table, None (and found) when it does not read whole."""

    try:
        table = read_parquet(store.fs.cat_file(store.table_path(key)))
        if len(table) != spec.rows or any(name not in table for name in TABLE_COLUMNS):
            raise ValueError(f"{len(table)} rows, columns {list(table.columns)}")
    except Exception as err:
        found.problems.append(
            f"table {TABLE}/{TABLE_FILE} does not read ({_why(err)}): the version is made "
            "again from its lineage's rows by the next embed of its source"
        )
        return None
    return table


def _check_documents(store: ZarrFeatureStore, lineage: LineageSpec, found: _Findings) -> None:
    """Each of the lineage's documents against the one its spec implies (shapes grow)."""
    folder = store.lineage_folder(lineage.lineage)
    try:
        attrs = _read_json(store, f"{folder}/{ROOT}")["attributes"]
        LineageSpec.from_dict(attrs["lineage"])
    except Exception as err:
        found.metadata.append(ROOT)
        found.problems.append(
            f"metadata {LINEAGES}/{lineage.lineage}/{ROOT} does not read ({_why(err)})"
        )
    for path, raw in metadata_documents(lineage).items():
        want = json.loads(raw)
        try:
            have = _read_json(store, f"{folder}/{path}")
        except (OSError, ValueError) as err:
            found.metadata.append(path)
            found.problems.append(f"metadata {path} does not read ({type(err).__name__}: {err})")
            continue
        if _essentials(have) != _essentials(want) or have.get("attributes") != want.get(
            "attributes"
        ):
            found.metadata.append(path)
            found.problems.append(f"metadata {path} differs from the layout its lineage implies")


def _essentials(document: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a metadata document that decide how its bytes are read."""
    shape = document.get("shape")
    return {
        "width": shape[1:] if isinstance(shape, list) else None,
        **{name: document.get(name) for name in _COMPARED},
    }


def _check_records(
    store: ZarrFeatureStore,
    lineage: LineageSpec,
    shards: list[int],
    complete: bool,
    found: _Findings,
) -> dict[int, dict[str, Any]]:
    """The record of each shard, read one by one; a damaged one, or one missing from a
    complete version, marks its shard."""
    array = store.array(lineage.lineage, RECORDS)
    records: dict[int, dict[str, Any]] = {}
    for shard in shards:
        try:
            if shard >= array.shape[0]:
                raise ValueError("beyond the end of the lineage's arrays")
            text = str(np.asarray(array[shard : shard + 1])[0])
            record = json.loads(text) if text else None
        except Exception as err:
            found.shard(shard, f"its record is damaged ({_why(err)})")
            continue
        if record is None:
            if complete:
                found.shard(shard, "its record is gone: the shard reads as never written")
            continue
        records[shard] = record
    return records


def _check_features(
    store: ZarrFeatureStore,
    lineage: LineageSpec,
    records: dict[int, dict[str, Any]],
    found: _Findings,
    readable: Sequence[str],
) -> None:
    """Every written Zarr shard of every layer decodes, and its NaN rows are exactly the
    rows its record says failed (a lost object reads as NaN)."""
    size = lineage.shard_size
    for layer in lineage.layers:
        name = f"{FEATURES}/{layer}"
        if name not in readable:
            continue
        array = store.array(lineage.lineage, name)
        for shard, record, raw in _written(array, records, size, name, found):
            values = np.asarray(raw, dtype=np.float64)
            used = len(values)
            failed = np.zeros(used, dtype=bool)
            failed[[int(offset) for offset in record.get("failures", {})]] = True
            if not np.array_equal(np.isnan(values).all(axis=1), failed):
                found.shard(
                    shard,
                    f"{name} has NaN rows where its record has none (or the reverse): an "
                    "object is missing or was replaced",
                )


def _check_columns(
    store: ZarrFeatureStore,
    lineage: LineageSpec,
    table: pd.DataFrame,
    records: dict[int, dict[str, Any]],
    found: _Findings,
    readable: Sequence[str],
) -> None:
    """The lineage's content hashes and failure reasons of each written shard: readable,
    a hash for every row the version names, the reasons those of the shard's record."""
    size = lineage.shard_size
    rows = table[ROW].to_numpy(np.int64)
    for name in (CONTENT_HASH, FAILURE):
        if name not in readable:
            continue
        array = store.array(lineage.lineage, name)
        for shard, record, raw in _written(array, records, size, f"column {name}", found):
            values = [str(value) for value in raw.tolist()]
            used = len(values)
            if name == FAILURE:
                reasons = record.get("failures", {})
                if values != [reasons.get(str(i), "") for i in range(used)]:
                    found.columns.append(name)
                    found.shard(shard, f"column {name} does not match the shard's record")
                continue
            offsets = rows[(rows // size) == shard] - shard * size
            if offsets.size and (offsets.max() >= used or not all(values[o] for o in offsets)):
                found.columns.append(name)
                found.shard(shard, f"column {name} lacks the hash of a row the version names")


def _written(
    array: zarr.Array,
    records: dict[int, dict[str, Any]],
    size: int,
    what: str,
    found: _Findings,
) -> Iterator[tuple[int, dict[str, Any], np.ndarray]]:
    """(shard, record, its used rows of ``array``) for every written shard whose rows
    decode; one that does not is found damaged (``what``: how the report names it)."""
    for shard, record in records.items():
        used = int(record.get("rows", size))
        try:
            values = np.asarray(array[shard * size : shard * size + used])
        except Exception as err:
            if what.startswith("column "):
                found.columns.append(what.removeprefix("column "))
            found.shard(shard, f"{what} is damaged ({_why(err)})")
            continue
        yield shard, record, values


def _why(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err)[:120]}"


# -- repair ------------------------------------------------------------------------------


def repair(store: ZarrFeatureStore, key: str, damage: Damage) -> Damage:
    """Repair what ``damage`` names (see the module docstring); returns the damage with
    the actions taken."""
    if damage.recreate:
        store.drop_version(key)
        action = (
            f"removed version {key} (its document or table is damaged): the next embed of "
            "its source makes it again from the rows its lineage holds"
        )
        return replace(damage, actions=(action,))
    spec = store.spec(key)
    actions: list[str] = []
    documents = metadata_documents(spec.lineage_spec())
    folder = store.lineage_folder(spec.lineage)
    for path in damage.metadata:
        if path in documents:
            _put(store, f"{folder}/{path}", _grown(store, spec, path, documents[path]))
            actions.append(f"rewrote metadata {path} of lineage {spec.lineage} from its spec")
        else:
            _restore_lineage_root(store, spec)
            actions.append(f"rewrote metadata {ROOT} of lineage {spec.lineage} from the spec")
    again = check(store, key) if damage.metadata else damage
    shards = sorted(set(again.shards))
    if shards:
        store.drop_shards(spec.lineage, shards)
        for shard in shards:
            actions.append(f"marked lineage shard {shard} not written")
        for other in _versions_on(store, spec.lineage, set(shards)):
            _mark_incomplete(store, other)
            actions.append(f"marked version {other} incomplete: run its embed again")
    return replace(
        again,
        metadata=damage.metadata,
        shards=tuple(sorted(set(damage.shards) | set(shards))),
        problems=damage.problems + tuple(p for p in again.problems if p not in damage.problems),
        actions=tuple(actions),
    )


def _versions_on(store: ZarrFeatureStore, lineage: str, shards: set[int]) -> list[str]:
    """The versions of ``lineage`` with rows in any of ``shards``."""
    keys = []
    for key in store.list_keys():
        try:
            if store.spec(key).lineage == lineage and store.shards_of(key) & shards:
                keys.append(key)
        except TransferPipeError:
            continue
    return keys


def _grown(store: ZarrFeatureStore, spec: FeatureSetSpec, path: str, document: bytes) -> bytes:
    """The created document of array ``path`` with the lineage's current length."""
    data = json.loads(document)
    shards = max([*store.written_shards(spec.lineage), spec.first_shard + spec.n_shards - 1]) + 1
    length = shards if path.startswith(RECORDS) else shards * spec.shard_size
    data["shape"] = [length, *data["shape"][1:]]
    return json.dumps(data).encode()


def _restore_lineage_root(store: ZarrFeatureStore, spec: FeatureSetSpec) -> None:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    from transfer_pipe.store.layout import describe

    lineage = spec.lineage_spec()
    attrs = {"lineage": lineage.to_dict(), "layout": describe(lineage), "created": "", "head": None}
    buffers = GroupMetadata(attributes=attrs).to_buffer_dict(default_buffer_prototype())
    _put(store, f"{store.lineage_folder(spec.lineage)}/{ROOT}", buffers["zarr.json"].to_bytes())


def _mark_incomplete(store: ZarrFeatureStore, key: str) -> None:
    """Status incomplete: the next embed of the version writes its missing shards."""
    path = f"{store.folder(key)}/{ROOT}"
    document = _read_json(store, path)
    document["attributes"] = {**document.get("attributes", {}), "status": "incomplete"}
    _put(store, path, json.dumps(document).encode())


def _put(store: ZarrFeatureStore, path: str, data: bytes) -> None:
    """Write ``data`` aside and move it into place: never half a document."""
    partial = f"{path}.repair.partial"
    store.fs.pipe_file(partial, data)
    store.fs.mv(partial, path)
