"""copy_shard: a donor lineage's whole shard becomes a shard of a new version's lineage,
byte for byte, only when the two line up; otherwise it writes no record and the caller
copies rows.

Stores on the local disk and in memory; no backbone (values written by hand). Each test
names, in a comment, the mutation of the code it was seen failing on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.support.failed_rows import FAILED, make_rows, make_spec, shard_values, write
from transfer_pipe.store import FeatureSetSpec, ZarrFeatureStore

DONOR = "lineage-donor"  # make_spec("donor")'s lineage
TARGET = "lineage-target"


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ZarrFeatureStore:
    if request.param == "local":
        return ZarrFeatureStore(str(tmp_path / "store"))
    return ZarrFeatureStore(f"memory://shard-copy-{tmp_path.name}")


def donor_and_target(
    store: ZarrFeatureStore, donor_rows: int = 22, changes: Mapping[str, object] | None = None
) -> tuple[FeatureSetSpec, FeatureSetSpec]:
    """A donor version of ``donor_rows`` rows (its own lineage) with every shard written,
    and an empty target version in a lineage of its own (with ``changes`` to its spec);
    both as created (where their rows live)."""
    store.create(replace(make_spec("donor"), rows=donor_rows), make_rows(donor_rows))
    donor = store.spec("donor")
    for shard in donor.new_shards:
        write(store, donor, shard)
    target = replace(make_spec("target"), **(changes or {}))  # type: ignore[arg-type]
    store.create(target, make_rows(target.rows))
    return donor, store.spec("target")


def test_an_aligned_shard_is_copied_whole(store: ZarrFeatureStore) -> None:
    # Mutations seen failing: the record written without copied_from / with reused 0;
    # _copy_object not copying the object (the target's rows read NaN).
    donor, _ = donor_and_target(store)
    assert store.copy_shard("target", 2, DONOR, 2)
    record = store.records(TARGET)[2]
    assert record == {
        "rows": 4,
        "embedded": 0,
        "reused": 4,
        "seconds": record["seconds"],
        "failures": {},
        "version": "target",
        "copied_from": {"lineage": DONOR, "shard": 2},
    }
    for layer in donor.layers:
        np.testing.assert_array_equal(
            store.read_lineage_rows(TARGET, layer, np.arange(8, 12)),
            shard_values(donor, 2)[layer],
        )
    for name in ("features/penultimate/c/2/0", "content_hash/c/2"):  # byte for byte
        copied = store.fs.cat_file(f"{store.lineage_folder(TARGET)}/{name}")
        assert copied == store.fs.cat_file(f"{store.lineage_folder(DONOR)}/{name}")
    assert store.shards_done("target").tolist() == [False, False, True, False, False, False]
    assert store.pending_shards("target") == [0, 1, 3, 4, 5]
    assert store.lineage_rows(TARGET)["content_hash"].tolist() == ["h8", "h9", "h10", "h11"]


def test_a_shard_with_failed_rows_is_not_copied(store: ZarrFeatureStore) -> None:
    donor_and_target(store)
    assert 21 in FAILED  # shard 5 (rows 20-21, the short last one) has a failed row
    # Mutation seen failing: copy_shard without its record.get("failures") check together
    # with _copy_object's NaN check (either alone refuses the shard).
    assert not store.copy_shard("target", 5, DONOR, 5)
    assert 5 not in store.records(TARGET)
    assert store.pending_shards("target") == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("change", [{"shard_size": 2}, {"dtype": "float16"}])
def test_shards_of_other_layouts_are_not_copied(
    store: ZarrFeatureStore, change: dict[str, object]
) -> None:
    donor_and_target(store, changes=change)
    # Mutation seen failing: _copy_object without the layout comparison (both cases; the
    # shard-size check alone is a second guard for the first).
    assert not store.copy_shard("target", 0, DONOR, 0)
    assert 0 not in store.records(TARGET)


def test_a_short_last_shard_is_not_copied_into_a_longer_one(store: ZarrFeatureStore) -> None:
    donor_and_target(store, donor_rows=21, changes={"rows": 22})  # shard 5: row 20 vs rows 20-21
    assert store.copy_shard("target", 4, DONOR, 4)  # full shards line up
    # Mutation seen failing: copy_shard without the row-count check together with
    # _copy_object's NaN check (the donor's unused tail row reads NaN: either alone
    # refuses the shard).
    assert not store.copy_shard("target", 5, DONOR, 5)
    assert sorted(store.records(TARGET)) == [4]


def test_a_donor_shard_not_written_or_lost_is_not_copied(store: ZarrFeatureStore) -> None:
    donor_and_target(store)
    folder = store.lineage_folder(DONOR)
    store.fs.rm_file(f"{folder}/shard_record/c/0")  # a write killed before its record
    store.fs.rm_file(f"{folder}/features/penultimate/c/3/0")  # lost
    # Mutations seen failing: copy_shard taking a missing record for a whole shard
    # (records(...).get(donor_shard) or {"rows": 4}: shard 0); _copy_object without its
    # NaN check (a lost object reads NaN) together with the FileNotFoundError handler of
    # the copy returning True (either alone refuses shard 3).
    assert not store.copy_shard("target", 0, DONOR, 0)
    assert not store.copy_shard("target", 3, DONOR, 3)
    assert store.records(TARGET) == {}
