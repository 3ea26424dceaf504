"""A feature set of 22 rows in shards of 4 (the last one short) with two failed rows,
written shard by shard as an embed writes it: NaN features and a failure reason."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.support import stores
from transfer_pipe.store import FeatureSetSpec, ShardStats, ZarrFeatureStore

LAYERS = {"penultimate": 6, "stages.0": 3}
ROWS, SHARD = 22, 4  # 6 shards, the last one short
FAILED = {5: "corrupt: bad bytes", 21: "empty: zero-byte file"}


def make_spec(key: str = "k0") -> FeatureSetSpec:
    return stores.make_spec(key, layers=LAYERS, rows=ROWS, shard=SHARD)


def make_rows(n: int = ROWS) -> pd.DataFrame:
    return stores.make_rows(n, train=15)


def shard_values(spec: FeatureSetSpec, shard: int) -> dict[str, np.ndarray]:
    """Row r holds r * (1..dim); a failed row is NaN, as an embed writes it."""
    rows = np.array(spec.shard_rows(shard), dtype=np.float32)
    values = {}
    for layer, dim in spec.layer_dims.items():
        block = np.outer(rows, np.arange(1, dim + 1)).astype(np.float32)
        block[[r - rows[0].astype(int) for r in spec.shard_rows(shard) if r in FAILED]] = np.nan
        values[layer] = block
    return values


def write(store: ZarrFeatureStore, spec: FeatureSetSpec, shard: int) -> None:
    spec = store.spec(spec.key)  # as created: a first version's rows are its lineage's
    reasons = [FAILED.get(r, "") for r in spec.shard_rows(shard)]
    store.write_shard(spec.key, shard, shard_values(spec, shard), reasons, ShardStats(4, 0, 0.5))
