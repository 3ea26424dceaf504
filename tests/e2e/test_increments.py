"""A folder that grows: the next embed reads only the new files, copies the shards that
line up whole, and computes only the new images' shards.

A folder of 8 real image files (2 classes, shards of 4) is embedded; 3 files appended to
the last class (their ids sort after every known one) make a grown folder whose first 2
shards hold exactly the first feature set's 2 shards. The grown folder's embed copies
those shards' objects (records say ``copied_from``), embeds the 3 new images, passes
``verify``, and equals an embed of the grown folder from scratch. A file added in the
first class shifts every later row: those shards copy rows (nothing misaligned is
copied whole). Runs the library's embed step (Dask, real files, the tiny backbone)
without Prefect, and once with the store on S3 (moto on loopback).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.support.images import make_dataset, write_image
from transfer_pipe.config import EmbedConfig
from transfer_pipe.data import sources
from transfer_pipe.steps import embed
from transfer_pipe.store import ZarrFeatureStore, open_store

SHARD = 4
OLD = time.time() - 3600  # one fixed time: re-dating a file changes its stamp


def config(images: Path | str, store: Path | str, **options: object) -> EmbedConfig:
    return EmbedConfig(
        source=str(images),
        store=str(store),
        backbone="tiny_test",
        shard_size=SHARD,
        workers=1,
        **options,  # type: ignore[arg-type]
    )


def age(folder: Path) -> None:
    """Date every file an hour back: old enough for its hash to be remembered."""
    for path in folder.rglob("*"):
        os.utime(path, (OLD, OLD))


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The image files whose bytes the manifest reads to hash them."""
    seen: list[str] = []
    real = sources._hash_one

    def counting(url: str) -> str | OSError:
        seen.append(url.rsplit("/", 2)[-2] + "/" + url.rsplit("/", 1)[-1])
        return real(url)

    monkeypatch.setattr(sources, "_hash_one", counting)
    return seen


def zarr_store(url: str | Path) -> ZarrFeatureStore:
    store = open_store(str(url))
    assert isinstance(store, ZarrFeatureStore)
    return store


def records(store_url: str, key: str) -> list[dict[str, object]]:
    found = zarr_store(store_url).records(key)
    assert all(r is not None for r in found)
    return [r for r in found if r is not None]


def test_appended_files_copy_aligned_shards_whole(tmp_path: Path, reads: list[str]) -> None:
    images, store = tmp_path / "images", tmp_path / "store"
    make_dataset(images, classes=2, per_class=4, bad=False)
    age(images)
    first = embed(config(images, store))
    assert (first.rows, first.embedded) == (8, 8)

    for i in range(4, 7):  # class1/img0004..6: sort after every known id
        write_image(images / "class1" / f"img{i:04d}.png", 5000 + i)
    age(images)
    reads.clear()
    grown = embed(config(images, store))

    # Mutation seen failing: HashCache.lookup always None (all 11 files read again).
    assert sorted(reads) == [f"class1/img{i:04d}.png" for i in range(4, 7)]
    assert (grown.rows, grown.embedded, grown.reused, grown.failed) == (11, 3, 8, 0)
    # Mutation seen failing: _shard_tasks with copy=None (shards 0-1 copy rows, no
    # copied_from), and copy_shard writing "reused": 0.
    shard_records = records(str(store), grown.feature_set)
    assert [r.get("copied_from") for r in shard_records] == [
        {"feature_set": first.feature_set, "shard": 0},
        {"feature_set": first.feature_set, "shard": 1},
        None,
    ]
    assert [(r["embedded"], r["reused"]) for r in shard_records] == [(0, 4), (0, 4), (3, 0)]

    # Mutation seen failing: copy_shard copying the donor's shard 0 into every target
    # shard (values differ from scratch), and skipping the object copy (verify: NaN rows).
    scratch = embed(config(images, tmp_path / "scratch"))
    assert scratch.feature_set == grown.feature_set  # same content, same key
    ours = open_store(str(store)).load(grown.feature_set)
    theirs = open_store(str(tmp_path / "scratch")).load(scratch.feature_set)
    assert list(ours.sample_ids) == list(theirs.sample_ids)
    np.testing.assert_allclose(ours.features, theirs.features, rtol=1e-5, atol=1e-6)
    assert zarr_store(store).verify(grown.feature_set).ok

    with warnings.catch_warnings():  # the cache folder is marked: Zarr lists no stranger
        warnings.simplefilter("error")
        zarr.open_group(str(store), mode="r").members(max_depth=None)


def test_a_file_sorting_among_known_ones_copies_rows(tmp_path: Path) -> None:
    images, store = tmp_path / "images", tmp_path / "store"
    make_dataset(images, classes=2, per_class=4, bad=False)
    first = embed(config(images, store))
    write_image(images / "class0" / "first.png", 777)  # sorts first: every row shifts
    grown = embed(config(images, store))
    assert (grown.rows, grown.embedded, grown.reused) == (9, 1, 8)
    shard_records = records(str(store), grown.feature_set)
    # Every known image moved one row on: no shard of the new set holds a donor shard.
    assert all("copied_from" not in r for r in shard_records)
    old = open_store(str(store)).load(first.feature_set)
    new = open_store(str(store)).load(grown.feature_set, sample_ids=list(old.sample_ids))
    np.testing.assert_array_equal(new.features, old.features)
    assert zarr_store(store).verify(grown.feature_set).ok


def test_shards_copy_whole_on_s3(tmp_path: Path, s3_bucket: str) -> None:
    images, store = tmp_path / "images", f"s3://{s3_bucket}/store"
    make_dataset(images, classes=2, per_class=4, bad=False)
    age(images)
    first = embed(config(images, store))
    write_image(images / "class1" / "img0009.png", 9)
    age(images)
    grown = embed(config(images, store))
    assert (grown.embedded, grown.reused) == (1, 8)
    copied = [r.get("copied_from") for r in records(store, grown.feature_set)]
    assert copied == [
        {"feature_set": first.feature_set, "shard": 0},
        {"feature_set": first.feature_set, "shard": 1},
        None,
    ]
    assert zarr_store(store).verify(grown.feature_set).ok
    scratch = embed(config(images, tmp_path / "scratch"))
    np.testing.assert_allclose(
        open_store(store).load(grown.feature_set).features,
        open_store(str(tmp_path / "scratch")).load(scratch.feature_set).features,
        rtol=1e-5,
        atol=1e-6,
    )
