"""The shard size a feature set gets when the user names none."""

from __future__ import annotations

import pytest

from transfer_pipe.steps.embed import default_shard_size


@pytest.mark.parametrize(
    ("rows", "size"),
    [(10, 512), (70_000, 512), (131_072, 512), (131_073, 1024), (1_000_000, 4096), (10**7, 8192)],
)
def test_small_sets_keep_512_rows_per_shard_large_ones_get_larger_shards(
    rows: int, size: int
) -> None:
    # Mutation: no doubling (always 512) fails the 1M and 10M rows; no cap fails 10M.
    assert default_shard_size(rows) == size


def test_a_million_images_make_few_objects_and_enough_tasks() -> None:
    """Each shard task writes one object per layer (and one record): under 500 objects
    per layer for a million images, yet more than 100 tasks to spread over workers."""
    tasks = -(-1_000_000 // default_shard_size(1_000_000))
    assert 100 < tasks < 500
