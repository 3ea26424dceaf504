"""The Zarr layout (issue 11, parts 3 and 4): few objects, self-describing, readable
without this library, checksummed, and repairable shard by shard.

Each test names, in a comment, the mutation of the code it was seen failing on.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
import zarr.storage
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

from tests.support.failed_rows import FAILED, ROWS, make_rows, make_spec, write
from transfer_pipe.store import FeatureSetSpec, ZarrFeatureStore, embedding_key
from transfer_pipe.store.keys import FORMAT_VERSION
from transfer_pipe.store.zarr_store import DamagedFeatureSet

Complete = tuple[ZarrFeatureStore, FeatureSetSpec, Path]


@pytest.fixture
def complete(tmp_path: Path) -> Complete:
    """A complete feature set in a local store; returns the store, spec and set folder."""
    store = ZarrFeatureStore(str(tmp_path / "store"))
    spec = make_spec()
    store.create(spec, make_rows())
    for shard in range(spec.n_shards):
        write(store, spec, shard)
    store.mark_complete(spec.key, {"note": "done"})
    return store, spec, tmp_path / "store" / "feature_sets" / spec.key


def objects(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def smash(path: Path) -> None:
    """Overwrite four bytes in the middle of a file, as a failing disk or a stray write."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(255 - b for b in data[middle : middle + 4])
    path.write_bytes(bytes(data))


# -- a layout that scales ----------------------------------------------------------------


def test_one_object_per_shard_task_and_layer_and_one_per_column(complete: Complete) -> None:
    # Mutation seen failing: row_chunking returning (4, 4), i.e. row columns chunked by
    # shard task: 6 objects per column.
    _, spec, folder = complete
    for layer in spec.layers:
        data = [p for p in objects(folder / "features" / layer) if p.name != "zarr.json"]
        assert len(data) == spec.n_shards
    for column in ("sample_id", "uri", "label", "split", "content_hash", "failure"):
        assert [p.name for p in objects(folder / column) if p.name != "zarr.json"] == ["0"]
    records = [p for p in objects(folder / "shard_record") if p.name != "zarr.json"]
    assert len(records) == spec.n_shards  # done + stats + failures: one object per task
    assert (folder / "table" / "rows.parquet").is_file()


def test_every_array_names_its_dimensions(complete: Complete) -> None:
    # Mutation seen failing: create_array without dimension_names for the features.
    store, spec, _ = complete
    group = zarr.open_group(str(store.url), path=f"feature_sets/{spec.key}", mode="r")
    dims = {name: array.metadata.dimension_names for name, array in group.arrays()}
    dims |= {
        f"features/{name}": array.metadata.dimension_names
        for name, array in group["features"].arrays()  # type: ignore[union-attr]
    }
    assert dims["features/penultimate"] == ("row", "penultimate_feature")
    assert dims["sample_id"] == dims["failure"] == ("row",)
    assert dims["shard_record"] == ("shard",)
    assert all(dims.values())  # the table marker too (xarray needs them on every array)


def test_every_chunk_and_shard_index_is_checksummed(complete: Complete) -> None:
    # Mutation seen failing: codecs() without Crc32cCodec().
    folder = complete[2]
    for document in folder.rglob("zarr.json"):
        meta = json.loads(document.read_text())
        if meta["node_type"] != "array" or meta["shape"] == [0]:
            continue
        codecs = meta["codecs"]
        if codecs[0]["name"] == "sharding_indexed":
            inner = codecs[0]["configuration"]
            assert inner["codecs"][-1]["name"] == "crc32c", document
            assert inner["index_codecs"][-1]["name"] == "crc32c", document
        else:
            assert codecs[-1]["name"] == "crc32c", document


class CountingStore(zarr.storage.WrapperStore[zarr.storage.LocalStore]):
    """Counts the reads that reach the wrapped store (each is a request on S3)."""

    reads: list[str]

    def __init__(self, store: zarr.storage.LocalStore) -> None:
        super().__init__(store)
        self.reads = []

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        self.reads.append(key)
        return await self._store.get(key, prototype, byte_range)


def test_a_complete_set_opens_in_one_read_and_sample_ids_in_two_more(
    complete: Complete,
) -> None:
    # Mutation seen failing: mark_complete without consolidate(): reading sample_id
    # then reads its own zarr.json too.
    store, spec, _ = complete
    counting = CountingStore(zarr.storage.LocalStore(store.url, read_only=True))
    group = zarr.open_group(counting, path=f"feature_sets/{spec.key}", mode="r", zarr_format=3)
    assert counting.reads == [f"feature_sets/{spec.key}/zarr.json"]
    sample_ids = group["sample_id"][:]  # type: ignore[index]
    assert list(sample_ids) == make_rows()["sample_id"].tolist()
    # No metadata read (consolidated), and one object: never one read per shard task.
    assert counting.reads[1:] == [f"feature_sets/{spec.key}/sample_id/c/0"]


def test_the_store_describes_itself(complete: Complete) -> None:
    # Mutation seen failing: create() writing a bare {"version": 2} as "layout".
    store, spec, _ = complete
    layout = zarr.open_group(store.url, path=f"feature_sets/{spec.key}").attrs["layout"]
    assert layout["version"] == 2  # type: ignore[index,call-overload]
    assert layout["stats_columns"] == ["embedded", "reused", "seconds"]  # type: ignore[index,call-overload]
    assert "NaN" in layout["nan_rows"] and "failure" in layout["nan_rows"]  # type: ignore[index,call-overload,operator]


def test_rows_join_by_sample_id_from_parquet_with_plain_pandas(complete: Complete) -> None:
    # Mutation seen failing: _write_table without the failure column (KeyError below).
    _, _, folder = complete
    table = pd.read_parquet(folder / "table" / "rows.parquet")
    labels = pd.DataFrame({"sample_id": ["s21", "s05", "s00"], "mine": [1, 2, 3]})
    joined = labels.merge(table, on="sample_id")
    assert joined["failure"].tolist() == [FAILED[21], FAILED[5], ""]
    assert joined["uri"].tolist() == [
        "file:///data/21.png",
        "file:///data/5.png",
        "file:///data/0.png",
    ]
    assert len(table) == ROWS


def test_heads_and_finetune_folders_make_zarr_warn_about_nothing(complete: Complete) -> None:
    # Mutation seen failing: create() not marking FOREIGN_FOLDERS ("Object at heads is
    # not recognized as a component of a Zarr hierarchy").
    store, spec, _ = complete
    root = Path(store.url)
    (root / "heads" / "h1").mkdir(parents=True)
    (root / "heads" / "h1" / "card.json").write_text("{}")
    (root / "finetune" / "run1" / "checkpoints").mkdir(parents=True)
    (root / "finetune" / "run1" / "card.json").write_text("{}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = [name for name, _ in zarr.open_group(store.url, mode="r").members(max_depth=None)]
        assert f"feature_sets/{spec.key}/features/penultimate" in names
        assert store.list_keys() == [spec.key]
        store.load(spec.key)
    assert (root / "heads" / "h1" / "card.json").read_text() == "{}"  # left as it was


def test_an_older_layout_is_not_misread(complete: Complete) -> None:
    # Mutation seen failing: status() not checking the layout version ("complete").
    store, spec, folder = complete
    assert FORMAT_VERSION == 2  # in every key: sets of layout 1 are never looked up
    assert embedding_key("b", "w", {}, "float32") != _key_of_format_1()
    document = json.loads((folder / "zarr.json").read_text())
    del document["attributes"]["layout"]  # as layout 1 wrote it
    (folder / "zarr.json").write_text(json.dumps(document))
    fresh = ZarrFeatureStore(store.url)
    assert fresh.status(spec.key) == "missing"
    assert fresh.list_keys() == []
    with pytest.raises(Exception, match="older layout"):
        fresh.spec(spec.key)


def _key_of_format_1() -> str:
    import transfer_pipe.store.keys as keys

    saved = keys.FORMAT_VERSION
    keys.FORMAT_VERSION = 1
    try:
        return keys.embedding_key("b", "w", {}, "float32")
    finally:
        keys.FORMAT_VERSION = saved


# -- integrity ---------------------------------------------------------------------------


def test_a_damaged_chunk_is_an_error_naming_set_shard_and_fix(complete: Complete) -> None:
    # Mutation seen failing: read_rows without _guarded: a bare "Stored and computed
    # checksum do not match" ValueError.
    store, spec, folder = complete
    smash(folder / "features" / "stages.0" / "c" / "3" / "0")
    with pytest.raises(DamagedFeatureSet) as caught:
        ZarrFeatureStore(store.url).load(spec.key, layer="stages.0")
    message = str(caught.value)
    assert "shard 3 (features/stages.0)" in message and spec.key in message
    assert f"transfer-pipe verify {spec.key} --store {store.url} --repair" in message
    # The other layer is whole and still reads.
    assert ZarrFeatureStore(store.url).load(spec.key, layer="penultimate").features.shape[0] == 20


def test_damaged_group_metadata_is_an_error_not_a_missing_set(complete: Complete) -> None:
    # Mutation seen failing: status() catching DamagedFeatureSet as "missing" (an embed
    # would then silently recreate the set instead of repairing it).
    store, spec, folder = complete
    smash(folder / "zarr.json")
    with pytest.raises(DamagedFeatureSet, match=r"metadata feature_sets/k0/zarr\.json"):
        ZarrFeatureStore(store.url).status(spec.key)
    assert ZarrFeatureStore(store.url).list_keys() == []  # left out with a warning


@pytest.mark.parametrize(
    ("target", "shards", "metadata"),
    [
        ("features/penultimate/c/2/0", [2], []),
        ("shard_record/c/4", [4], []),
        ("features/stages.0/zarr.json", [], ["features/stages.0/zarr.json"]),
        ("zarr.json", [], ["zarr.json"]),
        ("sample_id/c/0", [], []),
    ],
)
def test_verify_names_the_damage_and_repair_recomputes_only_it(
    complete: Complete,
    target: str,
    shards: list[int],
    metadata: list[str],
) -> None:
    # Mutations seen failing: repair() not rewriting metadata from the spec (the
    # zarr.json case); repair() clearing every shard (all cases); _rewrite_columns
    # doing nothing (the sample_id case: the column stays damaged).
    store, spec, folder = complete
    before = {layer: store.load(spec.key, layer=layer).features for layer in spec.layers}
    smash(folder / target)
    found = ZarrFeatureStore(store.url).verify(spec.key)
    assert not found.ok
    assert list(found.shards) == shards
    assert list(found.metadata) == metadata
    repaired = ZarrFeatureStore(store.url).verify(spec.key, repair=True)
    assert repaired.actions
    again = ZarrFeatureStore(store.url)
    assert again.status(spec.key) == "incomplete"
    not_done = [int(s) for s in np.flatnonzero(~again.shards_done(spec.key))]
    assert not_done == shards
    for shard in not_done:  # what the next embed does
        write(again, spec, shard)
    again.mark_complete(spec.key, {"note": "repaired"})
    assert again.verify(spec.key).ok
    for layer in spec.layers:
        np.testing.assert_array_equal(again.load(spec.key, layer=layer).features, before[layer])
    assert again.row_table(spec.key)["sample_id"].tolist() == make_rows()["sample_id"].tolist()


def test_a_lost_object_is_found_by_its_nan_rows(complete: Complete) -> None:
    # Mutation seen failing: _check_features without the NaN-row comparison.
    store, spec, folder = complete
    (folder / "features" / "penultimate" / "c" / "1" / "0").unlink()
    assert list(ZarrFeatureStore(store.url).verify(spec.key).shards) == [1]


def test_xarray_opens_a_feature_set_from_its_consolidated_metadata(complete: Complete) -> None:
    # xarray is a test dependency, not one of the library. Mutation seen failing: the
    # table marker array without dimension_names (xarray's KeyError). xarray reads
    # consolidated metadata only at the root of the store it is given, hence the feature
    # set's folder as the store.
    import xarray

    _, _, folder = complete
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Failed to open ... consolidated metadata"
        dataset = xarray.open_zarr(str(folder), zarr_format=3)
    assert dataset["sample_id"].dims == ("row",)
    assert dataset["sample_id"].shape == (ROWS,)
    assert dataset["shard_record"].dims == ("shard",)
