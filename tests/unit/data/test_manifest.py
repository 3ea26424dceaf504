import pandas as pd
import pytest

from transfer_pipe.data.manifest import Manifest
from transfer_pipe.errors import TransferPipeError


def manifest(n_train: int = 90, n_test: int = 10) -> Manifest:
    ids = [f"train/{i:03d}" for i in range(n_train)] + [f"test/{i:03d}" for i in range(n_test)]
    table = pd.DataFrame(
        {
            "sample_id": ids,
            "uri": [f"file:///x/{i}" for i in ids],
            "label": ["a"] * len(ids),
            "split": [i.split("/")[0] for i in ids],
            "content_hash": [f"h{i}" for i in ids],
        }
    )
    return Manifest.from_rows(table, "test")


def test_limit_keeps_each_splits_share_and_is_stable() -> None:
    small = manifest().limit(20)
    assert len(small) == 20
    assert small.table["split"].value_counts().to_dict() == {"train": 18, "test": 2}
    assert small.table.equals(manifest().limit(20).table)
    assert set(small.table["sample_id"]) <= set(manifest().limit(40).table["sample_id"])
    # No limit, or one above the row count: every row, in the manifest's own order.
    # Mutation: `n = n or 0` in limit (None read as no rows) makes this fail.
    whole = manifest()
    assert whole.limit(None).table.equals(whole.table)
    assert whole.limit(1000).table.equals(whole.table)


def test_digest_follows_every_column() -> None:
    base = manifest()
    relabelled = base.table.copy()
    relabelled.loc[3, "label"] = "b"
    assert Manifest(relabelled, "test").digest() != base.digest()
    assert manifest().digest() == base.digest()


def test_duplicate_sample_ids_are_refused() -> None:
    table = manifest().table
    table.loc[1, "sample_id"] = table.loc[0, "sample_id"]
    with pytest.raises(TransferPipeError, match="unique sample_id"):
        Manifest(table, "test")


def test_a_larger_limit_keeps_every_row_of_a_smaller_one() -> None:
    # Three splits whose shares cross their rounding boundaries at different n: with
    # per-split floor quotas plus a remainder, n=4 held fewer train rows than n=3.
    # Mutation: restoring those quotas (group.head(floor share) + remainder to the largest
    # split) makes this fail.
    rows = [
        {
            "sample_id": f"{split}{i:03d}",
            "uri": f"file:///{split}{i}",
            "label": str(i % 3),
            "split": split,
            "content_hash": f"{split}{i}",
        }
        for split, count in (("train", 50), ("val", 25), ("test", 25))
        for i in range(count)
    ]
    full = Manifest.from_rows(pd.DataFrame(rows), "test")
    previous: set[str] = set()
    for n in range(1, len(full) + 1):
        limited = full.limit(n)
        ids = set(limited.table["sample_id"])
        assert len(ids) == n and previous <= ids, n
        counts = limited.table["split"].value_counts()
        for split, count in (("train", 50), ("val", 25), ("test", 25)):
            assert abs(counts.get(split, 0) - n * count / len(full)) <= 1, (n, split)
        previous = ids
