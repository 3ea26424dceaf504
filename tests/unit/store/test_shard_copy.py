"""copy_shard: a donor's whole shard becomes a new feature set's shard, byte for byte, only
when the two line up; otherwise it writes nothing and the caller copies rows.

Stores on the local disk and in memory; no backbone (values written by hand). Each test
names, in a comment, the mutation of the code it was seen failing on.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.support.failed_rows import FAILED, make_rows, make_spec, shard_values, write
from transfer_pipe.store import FeatureSetSpec, ZarrFeatureStore
from transfer_pipe.store.shard_copy import copy_shard


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ZarrFeatureStore:
    if request.param == "local":
        return ZarrFeatureStore(str(tmp_path / "store"))
    return ZarrFeatureStore(f"memory://shard-copy-{tmp_path.name}")


def donor_and_target(
    store: ZarrFeatureStore, donor_rows: int = 22, **changes: object
) -> tuple[FeatureSetSpec, FeatureSetSpec]:
    """A donor of ``donor_rows`` rows with every shard written, and an empty target (with
    ``changes`` to its spec)."""
    donor = replace(make_spec("donor"), rows=donor_rows)
    store.create(donor, make_rows(donor_rows))
    for shard in range(donor.n_shards):
        write(store, donor, shard)
    target = replace(make_spec("target"), **changes)  # type: ignore[arg-type]
    store.create(target, make_rows(target.rows))
    return donor, target


def test_an_aligned_shard_is_copied_whole(store: ZarrFeatureStore) -> None:
    donor, _ = donor_and_target(store)
    assert copy_shard(store, "target", 2, "donor", 2)
    record = store.records("target")[2]
    # Mutation seen failing: the record written without copied_from / with reused 0.
    assert record == {
        "embedded": 0,
        "reused": 4,
        "seconds": record["seconds"] if record else None,
        "failures": {},
        "copied_from": {"feature_set": "donor", "shard": 2},
    }
    for layer in donor.layers:
        rows = np.arange(8, 12)
        np.testing.assert_array_equal(
            store.read_rows("target", layer, rows), shard_values(donor, 2)[layer]
        )
    assert store.shards_done("target").tolist() == [False, False, True, False, False, False]


def test_a_shard_with_failed_rows_is_not_copied(store: ZarrFeatureStore) -> None:
    donor_and_target(store)
    assert 21 in FAILED  # shard 5 (rows 20-21, the short last one) has a failed row
    # Mutation seen failing: copy_shard without its record.get("failures") check together
    # with _copy_layer's NaN check (either alone refuses the shard).
    assert not copy_shard(store, "target", 5, "donor", 5)
    assert store.records("target")[5] is None


@pytest.mark.parametrize("change", [{"shard_size": 2}, {"dtype": "float16"}])
def test_shards_of_other_layouts_are_not_copied(
    store: ZarrFeatureStore, change: dict[str, object]
) -> None:
    donor_and_target(store, **change)
    # Mutation seen failing: _copy_layer without the layout comparison (both cases; the
    # shard-size check alone is a second guard for the first).
    assert not copy_shard(store, "target", 0, "donor", 0)
    assert store.records("target")[0] is None


def test_a_short_last_shard_is_not_copied_into_a_longer_one(store: ZarrFeatureStore) -> None:
    donor_and_target(store, donor_rows=21, rows=22)  # shard 5: row 20 vs rows 20-21
    assert copy_shard(store, "target", 4, "donor", 4)  # full shards line up
    # Mutation seen failing: copy_shard without the row-count check.
    assert not copy_shard(store, "target", 5, "donor", 5)
    assert store.records("target")[5] is None


def test_a_donor_shard_not_written_or_lost_is_not_copied(store: ZarrFeatureStore) -> None:
    donor_and_target(store)
    store.fs.rm_file(f"{store.folder('donor')}/features/penultimate/c/3/0")
    # Mutation seen failing: _copy_layer without its NaN check (a lost object reads NaN)
    # together with the FileNotFoundError handler of the copy (either alone refuses it).
    assert not copy_shard(store, "target", 3, "donor", 3)
    assert store.records("target")[3] is None
