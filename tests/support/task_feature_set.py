"""One-layer feature sets written through the store API to draw tasks from: each row
traceable by its features, failed rows as the embedding step writes them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tests.support.stores import TINY_PREPROCESSING
from transfer_pipe.store import FeatureSetSpec, FeatureStore, ShardStats, ZarrFeatureStore

LAYER = "penultimate"
KEY = "fs0"


@dataclass(frozen=True)
class Source:
    """What was written into the feature set, row by row, to check results against."""

    sample_ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    failed: frozenset[int]

    def row_of(self, sample_id: str) -> int:
        return int(np.flatnonzero(self.sample_ids == sample_id)[0])

    def usable(self) -> list[int]:
        return [i for i in range(len(self.sample_ids)) if i not in self.failed]


def build_feature_set(
    store: FeatureStore,
    labels: list[str],
    splits: list[str],
    *,
    failures: dict[int, str] | None = None,
    key: str = KEY,
    dim: int = 4,
    shard_size: int = 16,
    seed: int = 0,
    features: np.ndarray | None = None,
    more_layers: dict[str, np.ndarray] | None = None,
) -> Source:
    """Write a complete feature set through the store API: one layer, ``LAYER``, and
    ``more_layers`` (name -> one row per label) after it.

    Feature column 0 holds the row number, so every loaded row can be traced back to the
    row it came from; sample ids are shuffled so that their order is not the row order.
    Failed rows get NaN features and a failure reason, as the embedding step writes them.
    ``features`` (one row per label) replaces the random ones, row numbers included.
    """
    n = len(labels)
    rng = np.random.default_rng(seed)
    sample_ids = np.array([f"img-{i:04d}" for i in rng.permutation(n)])
    if features is None:
        features = rng.normal(size=(n, dim)).astype(np.float32)
        features[:, 0] = np.arange(n)
    else:
        features = np.asarray(features, np.float32)
        dim = features.shape[1]
    failures = failures or {}
    more = {name: np.asarray(values, np.float32) for name, values in (more_layers or {}).items()}
    spec = FeatureSetSpec(
        key=key,
        embedding_key=f"emb-{key}",
        source="test",
        backbone="tiny_test",
        weights_digest="w",
        preprocessing=TINY_PREPROCESSING,
        layers=(LAYER, *more),
        layer_dims={LAYER: dim, **{name: values.shape[1] for name, values in more.items()}},
        dtype="float32",
        data_digest="d",
        rows=n,
        shard_size=shard_size,
        lineage=f"lineage-{key}",
    )
    rows = pd.DataFrame(
        {
            "sample_id": sample_ids,
            "uri": [f"file:///data/{s}.png" for s in sample_ids],
            "label": labels,
            "split": splits,
            "content_hash": [f"h-{s}" for s in sample_ids],
        }
    )
    store.create(spec, rows)
    spec = store.spec(key)  # a first version: its lineage rows are its own rows
    for shard in spec.new_shards:
        span = spec.shard_rows(shard)
        values = features[span.start : span.stop].copy()
        reasons = [failures.get(row, "") for row in span]
        for offset, row in enumerate(span):
            if row in failures:
                values[offset] = np.nan
        arrays = {LAYER: values, **{name: v[span.start : span.stop] for name, v in more.items()}}
        store.write_shard(key, shard, arrays, reasons, ShardStats(len(span), 0, 0.0))
    store.mark_complete(key, {"note": "test fixture"})
    return Source(sample_ids, np.asarray(labels), np.asarray(splits), frozenset(failures))


def uneven_store(tmp_path: Path) -> str:
    """A store holding one feature set with source splits: 40 / 20 / 8 training rows of
    ant / bee / cat (the features carry class signal), 4 validation and 4 test rows each."""
    url = str(tmp_path / "store")
    counts = {"ant": 40, "bee": 20, "cat": 8}
    labels = [c for c, n in counts.items() for _ in range(n)]
    labels += [c for c in counts for _ in range(8)]
    splits = ["train"] * sum(counts.values()) + ["val", "test"] * 12
    build_feature_set(ZarrFeatureStore(url), labels, splits, dim=4)
    return url
