"""The FeatureStore contract, run against every real implementation: a local folder (as a
path and as a file:// URL), the in-memory store, and S3 on a loopback S3-compatible server,
all opened through the one door, ``open_store``."""

from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import pytest

from tests.support.stores import (
    LAYERS,
    ROWS,
    SHARD,
    STORE_PARAMS,
    fill,
    make_rows,
    make_spec,
    shard_values,
)
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.store import FeatureStore, ShardStats, open_store


@pytest.fixture(params=STORE_PARAMS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FeatureStore:
    return request.param(request, tmp_path)


def test_lifecycle_missing_incomplete_complete(store: FeatureStore) -> None:
    spec = make_spec()
    assert store.status(spec.key) == "missing"
    assert store.list_keys() == []
    store.create(spec, make_rows())
    assert store.status(spec.key) == "incomplete"
    assert store.spec(spec.key) == spec
    assert not store.shards_done(spec.key).any()
    fill(store, spec)
    store.mark_complete(spec.key, {"note": "done"})
    assert store.status(spec.key) == "complete"
    assert store.list_keys() == [spec.key]
    assert store.provenance(spec.key)["note"] == "done"


def test_another_handle_sees_progress_and_completion(store: FeatureStore) -> None:
    """Workers and other runs write through their own handles (their own processes): a
    reader sees their feature set as soon as it is initialized, as in progress until it is
    complete, and then complete, with the values they wrote."""
    # Mutation seen failing: s3 default "use_listings_cache": True (the reader's cached
    # listing of feature_sets/ hides the writer's feature set).
    earlier, spec = make_spec("k0"), make_spec("k1")
    store.create(earlier, make_rows())
    assert store.list_keys() == [earlier.key]  # the reader has listed (could have cached)
    writer = open_store(store.url, {"skip_instance_cache": True})  # a new fsspec client
    writer.create(spec, make_rows())
    assert store.list_keys() == [earlier.key, spec.key]
    assert store.status(spec.key) == "incomplete"
    fill(writer, spec)
    assert store.status(spec.key) == "incomplete"  # all shards written, not yet complete
    writer.mark_complete(spec.key, {})
    assert [(i.key, i.status) for i in store.catalog()] == [
        (earlier.key, "incomplete"),
        (spec.key, "complete"),
    ]
    np.testing.assert_array_equal(
        store.load(spec.key, layer="stages.0").features,
        np.outer(np.arange(ROWS), [1, 2, 3]),
    )


def test_cannot_complete_with_shards_missing(store: FeatureStore) -> None:
    spec = make_spec()
    store.create(spec, make_rows())
    store.write_shard(spec.key, 0, shard_values(spec, 0), [""] * SHARD, ShardStats(4, 0, 0.1))
    with pytest.raises(RuntimeError):
        store.mark_complete(spec.key, {})
    assert store.shards_done(spec.key).tolist() == [True, False, False]


def test_values_round_trip_and_failed_rows_are_excluded(store: FeatureStore) -> None:
    spec = make_spec()
    store.create(spec, make_rows())
    fill(store, spec, failures={1: "corrupt: bad bytes", 8: "empty: zero-byte file"})
    failures = store.failures(spec.key)
    assert failures["sample_id"].tolist() == ["s01", "s08"]
    assert failures["reason"].tolist() == ["corrupt: bad bytes", "empty: zero-byte file"]
    loaded = store.load(spec.key, layer="stages.0")
    assert loaded.sample_ids.tolist() == [f"s{i:02d}" for i in range(ROWS) if i not in (1, 8)]
    expected = np.outer(np.array([i for i in range(ROWS) if i not in (1, 8)]), [1, 2, 3])
    np.testing.assert_array_equal(loaded.features, expected)
    assert loaded.labels.tolist() == [f"c{i % 3}" for i in range(ROWS) if i not in (1, 8)]


def test_load_by_split_and_by_sample_id_order(store: FeatureStore) -> None:
    spec = make_spec()
    store.create(spec, make_rows())
    fill(store, spec)
    test = store.load(spec.key, split="test")
    assert test.sample_ids.tolist() == ["s07", "s08", "s09"]
    assert set(test.splits) == {"test"}
    joined = store.load(spec.key, sample_ids=["s09", "s02"])
    assert joined.sample_ids.tolist() == ["s09", "s02"]
    assert joined.labels.tolist() == ["c0", "c2"]
    np.testing.assert_array_equal(joined.features[:, 0], [9, 2])
    as_dask = store.load(spec.key, split="train", as_dask=True)
    np.testing.assert_array_equal(
        as_dask.features.compute(), store.load(spec.key, split="train").features
    )


def test_rewriting_a_shard_replaces_it_exactly(store: FeatureStore) -> None:
    spec = make_spec()
    store.create(spec, make_rows())
    store.write_shard(spec.key, 0, shard_values(spec, 0), ["", "x: y", "", ""], ShardStats(3, 0, 1))
    store.write_shard(spec.key, 0, shard_values(spec, 0), [""] * SHARD, ShardStats(4, 0, 1))
    assert store.row_table(spec.key)["failure"].tolist()[:SHARD] == [""] * SHARD
    assert store.shard_stats(spec.key)["embedded"].tolist()[0] == 4


def test_float16_is_stored_as_float16(store: FeatureStore) -> None:
    spec = make_spec(dtype="float16")
    store.create(spec, make_rows())
    fill(store, spec)
    assert store.load(spec.key).features.dtype == np.float16


def test_recreating_an_interrupted_creation_starts_clean(store: FeatureStore) -> None:
    spec = make_spec()
    store.create(spec, make_rows())
    store.write_shard(spec.key, 0, shard_values(spec, 0), ["", "x: y", "", ""], ShardStats(3, 0, 1))
    store.create(spec, make_rows())
    assert not store.shards_done(spec.key).any()
    assert len(store.failures(spec.key)) == 0


def test_catalog_reports_rows_failures_and_bytes(store: FeatureStore) -> None:
    spec = make_spec()
    store.create(spec, make_rows())
    fill(store, spec, failures={3: "corrupt: x"})
    store.mark_complete(spec.key, {})
    [info] = store.catalog()
    assert (info.key, info.rows, info.failed, info.status) == (spec.key, ROWS, 1, "complete")
    assert info.nbytes > 0
    assert info.layers == tuple(LAYERS)


def test_unknown_key_names_the_fix(store: FeatureStore) -> None:
    with pytest.raises(TransferPipeError, match="transfer-pipe ls"):
        store.spec("nope")


def test_unwritable_store_is_reported_before_writing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TransferPipeError, match="--store"):
        open_store(str(blocker / "store")).ensure_writable()


def test_recover_removes_partial_writes_only(store: FeatureStore) -> None:
    spec = make_spec()
    store.create(spec, make_rows())
    fill(store, spec)
    fs, root = fsspec.core.url_to_fs(store.url)
    chunk_dir = f"{root}/feature_sets/{spec.key}/features/penultimate/c"
    fs.pipe_file(f"{chunk_dir}/zarr.0123abcd.partial", b"half a chunk")
    assert store.recover(spec.key) == 1
    assert not fs.glob(f"{root}/**/*.partial")
    assert store.shards_done(spec.key).all()
    assert store.load(spec.key).features.shape == (ROWS, LAYERS["penultimate"])
