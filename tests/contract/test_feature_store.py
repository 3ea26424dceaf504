"""The FeatureStore contract, run against every real implementation: a local folder (as a
path and as a file:// URL), the in-memory store, and S3 on a loopback S3-compatible server,
all opened through the one door, ``open_store``.

A feature set is a version of a lineage (``store.base``): a first version appends all its
rows; a later one shares every row whose content its lineage holds and appends the rest.
The tests of versions name, in a comment, the mutation of the code they were seen failing
on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
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
from transfer_pipe.store import FeatureSetSpec, FeatureStore, ShardStats, open_store

LINEAGE = "lineage-shared"


@pytest.fixture(params=STORE_PARAMS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FeatureStore:
    return request.param(request, tmp_path)


def test_lifecycle_missing_incomplete_complete(store: FeatureStore) -> None:
    spec = make_spec()
    assert store.status(spec.key) == "missing"
    assert store.list_keys() == []
    store.create(spec, make_rows())
    assert store.status(spec.key) == "incomplete"
    # A first version of its lineage: every row appended, from the lineage's first shard.
    assert store.spec(spec.key) == replace(spec, appended=ROWS, first_shard=0, parent=None)
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
    # listing of versions/ hides the writer's feature set).
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
    store.create(make_spec(), make_rows())
    spec = store.spec("k0")  # as planned: where its rows live
    store.write_shard(spec.key, 0, shard_values(spec, 0), [""] * SHARD, ShardStats(4, 0, 0.1))
    with pytest.raises(RuntimeError):
        store.mark_complete(spec.key, {})
    assert store.shards_done(spec.key).tolist() == [True, False, False]
    assert store.pending_shards(spec.key) == [1, 2]


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
    store.create(make_spec(), make_rows())
    spec = store.spec("k0")
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
    store.create(make_spec(), make_rows())
    spec = store.spec("k0")
    store.write_shard(spec.key, 0, shard_values(spec, 0), ["", "x: y", "", ""], ShardStats(3, 0, 1))
    store.create(make_spec(), make_rows())
    # The written shard is its lineage's: the rows it holds are shared, not written again.
    again = store.spec(spec.key)
    assert again.appended == ROWS - SHARD
    assert store.pending_shards(spec.key) == list(again.new_shards)
    assert not store.shards_done(spec.key).any()
    assert store.failures(spec.key)["sample_id"].tolist() == ["s01"]  # the same bytes fail


def test_catalog_reports_rows_failures_and_bytes(store: FeatureStore) -> None:
    spec = make_spec()
    store.create(spec, make_rows())
    fill(store, spec, failures={3: "corrupt: x"})
    store.mark_complete(spec.key, {})
    [info] = store.catalog()
    assert (info.key, info.rows, info.failed, info.status) == (spec.key, ROWS, 1, "complete")
    assert info.nbytes > 0
    assert info.layers == tuple(LAYERS)
    assert (info.lineage, info.parent, info.added, info.removed, info.changed) == (
        spec.lineage,
        None,
        ROWS,
        0,
        0,
    )


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
    chunk_dir = f"{root}/lineages/{spec.lineage}/features/penultimate/c"
    fs.pipe_file(f"{chunk_dir}/zarr.0123abcd.partial", b"half a chunk")
    assert store.recover(spec.key) == 1
    assert not fs.glob(f"{root}/**/*.partial")
    assert store.shards_done(spec.key).all()
    assert store.load(spec.key).features.shape == (ROWS, LAYERS["penultimate"])


# -- versions of one lineage -------------------------------------------------------------


def first_version(store: FeatureStore) -> FeatureSetSpec:
    """Version k0 of LINEAGE (ROWS rows, s00..s09 with contents h0..h9), complete."""
    spec = make_spec("k0", lineage=LINEAGE)
    store.create(spec, make_rows())
    fill(store, spec)
    store.mark_complete(spec.key, {})
    return store.spec(spec.key)


def second_rows() -> pd.DataFrame:
    """k0's rows less s03, with s05's content changed, and s10, s11 added."""
    rows = make_rows(ROWS + 2)
    rows = rows[rows["sample_id"] != "s03"].reset_index(drop=True)
    rows.loc[rows["sample_id"] == "s05", "content_hash"] = "h5-edited"
    return rows


def second_version(store: FeatureStore) -> FeatureSetSpec:
    """Version k1 of LINEAGE with second_rows(), created, filled and complete."""
    rows = second_rows()
    store.create(replace(make_spec("k1", lineage=LINEAGE), rows=len(rows)), rows)
    fill(store, store.spec("k1"))
    store.mark_complete("k1", {})
    return store.spec("k1")


def test_a_second_version_shares_every_unchanged_row(store: FeatureStore) -> None:
    # Mutations seen failing: _plan_rows never sharing (row = None for every content:
    # appended 11); create() without parent=head (parent None); _changes reporting
    # "changed": 0.
    first = first_version(store)
    rows = second_rows()
    store.create(replace(make_spec("k1", lineage=LINEAGE), rows=len(rows)), rows)
    second = store.spec("k1")
    assert second.parent == first.key
    assert second.appended == 3  # h5-edited, h10, h11
    assert second.first_shard == first.first_shard + first.n_shards
    assert store.pending_shards("k1") == list(second.new_shards) == [3]

    old = store.row_table(first.key).set_index("sample_id")["row"]
    new = store.row_table("k1").set_index("sample_id")["row"]
    unchanged = [f"s{i:02d}" for i in range(ROWS) if i not in (3, 5)]
    assert new.loc[unchanged].tolist() == old.loc[unchanged].tolist()
    appended_rows = new.loc[["s05", "s10", "s11"]].tolist()
    assert appended_rows == list(second.shard_rows(3))  # 12, 13, 14: in manifest order

    fill(store, second)
    store.mark_complete("k1", {})
    info = store.info("k1")
    assert (info.lineage, info.parent) == (LINEAGE, first.key)
    assert (info.added, info.removed, info.changed) == (2, 1, 1)
    assert 0 < info.new_bytes < store.info(first.key).new_bytes

    # Each version loads exactly its own rows, with the values of its lineage rows.
    loaded = store.load("k1", layer="stages.0")
    assert loaded.sample_ids.tolist() == rows["sample_id"].tolist()
    np.testing.assert_array_equal(loaded.features[:, 0], new.loc[loaded.sample_ids].to_numpy())
    before = store.load(first.key, layer="stages.0")
    assert before.sample_ids.tolist() == make_rows()["sample_id"].tolist()
    np.testing.assert_array_equal(before.features, np.outer(np.arange(ROWS), [1, 2, 3]))


def test_a_version_of_contents_the_lineage_holds_appends_nothing(store: FeatureStore) -> None:
    # Mutations seen failing: FeatureSetSpec.n_shards at least 1 (a shard task for
    # nothing); _plan_rows never sharing (row = None for every content: appended 10).
    first = first_version(store)
    rows = make_rows()
    rows.loc[0, ["sample_id", "uri"]] = ["renamed", "file:///data/renamed.png"]
    store.create(make_spec("k1", lineage=LINEAGE), rows)
    second = store.spec("k1")
    assert (second.appended, second.n_shards, list(second.new_shards)) == (0, 0, [])
    assert store.pending_shards("k1") == []
    store.mark_complete("k1", {})  # nothing to write
    assert (store.info("k1").added, store.info("k1").removed) == (1, 1)
    loaded = store.load("k1", sample_ids=["renamed", "s01"])
    np.testing.assert_array_equal(
        loaded.features, store.load(first.key, sample_ids=["s00", "s01"]).features
    )


def test_verify_finds_a_whole_version_ok(store: FeatureStore) -> None:
    # Mutation seen failing: integrity._check_columns taking the table's positions
    # (np.arange(len(table))) for its lineage rows: k1's shared rows then "disagree".
    first_version(store)
    second_version(store)
    for key in ("k0", "k1"):
        damage = store.verify(key)
        assert damage.ok, damage.problems
        assert damage.problems == ()


def test_dropped_shards_are_pending_again_for_the_versions_on_them(store: FeatureStore) -> None:
    # Mutations seen failing: layout.shard_objects without the shard's record (the
    # dropped shard still reads as written); shards_of without the table's rows (only
    # the appended shards: k1 is not told its shard 1 is gone).
    first_version(store)
    second_version(store)
    assert store.shards_of("k0") == {0, 1, 2}
    assert store.shards_of("k1") == {0, 1, 2, 3}  # shares 0-2, appended 3
    written = store.written_shards(LINEAGE)
    assert sorted(written) == [0, 1, 2, 3] and all(size > 0 for size in written.values())

    freed = store.drop_shards(LINEAGE, [3])
    assert store.pending_shards("k0") == []  # not on shard 3
    assert store.pending_shards("k1") == [3]
    assert store.shards_done("k1").tolist() == [False]
    assert sorted(store.written_shards(LINEAGE)) == [0, 1, 2]
    assert freed == written[3]

    store.drop_shards(LINEAGE, [1])
    assert store.pending_shards("k0") == [1]
    assert store.pending_shards("k1") == [1, 3]
    assert store.shards_done("k0").tolist() == [True, False, True]
    assert sorted(store.written_shards(LINEAGE)) == [0, 2]


def write_random(store: FeatureStore, key: str, seed: int) -> None:
    """Every appended shard of ``key``, random (incompressible) values, then complete."""
    spec = store.spec(key)
    rng = np.random.default_rng(seed)
    for shard in spec.new_shards:
        n = len(spec.shard_rows(shard))
        values = {layer: rng.normal(size=(n, dim)) for layer, dim in spec.layer_dims.items()}
        store.write_shard(key, shard, values, [""] * n, ShardStats(n, 0, 0.0))
    store.mark_complete(key, {})


def test_a_second_version_grows_the_store_by_its_new_rows_not_a_copy(
    store: FeatureStore,
) -> None:
    # Mutation seen failing: _plan_rows never sharing (k1 appends all its rows: the
    # store grows by a copy of k0's shards).
    n, size = 256, 32  # 64 KiB of float32 features: the documents weigh little beside
    spec = replace(
        make_spec("k0", lineage=LINEAGE),
        rows=n,
        shard_size=size,
        layers=("penultimate",),
        layer_dims={"penultimate": 64},
    )
    rows = make_rows(n + 8)
    store.create(spec, rows.iloc[:n])
    write_random(store, "k0", seed=0)
    one = store.store_nbytes()
    k0_shards = sum(store.written_shards(LINEAGE).values())

    changed = rows.iloc[8:].copy()  # 8 removed, 8 added, 8 changed: one new shard
    changed.loc[changed.index[:8], "content_hash"] += "-edited"
    store.create(replace(spec, key="k1"), changed)
    write_random(store, "k1", seed=1)
    grown = store.store_nbytes() - one
    assert 0 < grown < k0_shards / 3  # one shard of 16 rows and a table, not a copy
    assert store.store_nbytes() < 1.25 * one
    assert store.spec("k1").appended == 16


def test_a_shard_of_another_lineage_that_lines_up_is_copied_whole(store: FeatureStore) -> None:
    # Mutation seen failing: copy_shard refusing a shard without failures (its failure
    # object does not exist: Zarr stores no chunk of fill values only).
    donor = make_spec("donor", lineage="A")
    store.create(donor, make_rows())
    fill(store, donor)
    target = make_spec("target", lineage="B")
    store.create(target, make_rows())
    assert store.copy_shard("target", 0, "A", 0)
    assert store.shards_done("target").tolist() == [True, False, False]
    np.testing.assert_array_equal(
        store.read_lineage_rows("B", "penultimate", np.arange(SHARD)),
        store.read_lineage_rows("A", "penultimate", np.arange(SHARD)),
    )
    hashes = store.lineage_rows("B")["content_hash"].tolist()
    assert hashes == [f"h{i}" for i in range(SHARD)]
    assert not store.copy_shard("target", 2, "A", 1)  # 2 rows do not take a shard of 4


def test_the_hash_cache_of_a_source_is_kept_in_the_store(store: FeatureStore) -> None:
    # Mutation seen failing: HashCache.save never writing (a new handle misses).
    cache = store.hash_cache("folder:/data")
    assert cache.lookup("/data/a.png", "size=3;mtime=1") is None
    cache.record("/data/a.png", "size=3;mtime=1", "ab" * 32, hit=False)
    assert cache.save()
    again = open_store(store.url).hash_cache("folder:/data")
    assert again.lookup("/data/a.png", "size=3;mtime=1") == "ab" * 32
    assert again.lookup("/data/a.png", "size=3;mtime=2") is None  # another stamp: read it
    assert (
        open_store(store.url)
        .hash_cache("folder:/data", rehash=True)
        .lookup("/data/a.png", "size=3;mtime=1")
        is None
    )
