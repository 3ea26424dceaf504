"""Every real FeatureStore implementation, each opened through ``open_store``, and a small
feature set (10 rows in shards of 4) to fill one with."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

from transfer_pipe.preprocessing import Preprocessing
from transfer_pipe.store import FeatureSetSpec, FeatureStore, ShardStats, open_store

LAYERS = {"penultimate": 5, "stages.0": 3}
ROWS = 10
SHARD = 4
# The test backbone's (``tiny_test``) preprocessing, as a spec or card records it.
TINY_PREPROCESSING = Preprocessing(32, (0.5,) * 3, (0.25,) * 3)


def local_zarr(request: pytest.FixtureRequest, tmp_path: Path) -> FeatureStore:
    return open_store(str(tmp_path / "store"))


def local_zarr_url(request: pytest.FixtureRequest, tmp_path: Path) -> FeatureStore:
    return open_store((tmp_path / "store-url").as_uri())


def memory(request: pytest.FixtureRequest, tmp_path: Path) -> FeatureStore:
    name = f"contract-{uuid.uuid4().hex}"
    request.addfinalizer(lambda: _forget_memory(name))
    return open_store(f"memory://{name}/store")


def _forget_memory(name: str) -> None:
    memory = fsspec.filesystem("memory")
    if memory.exists(f"/{name}"):
        memory.rm(f"/{name}", recursive=True)


def s3(request: pytest.FixtureRequest, tmp_path: Path) -> FeatureStore:
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/store")


IMPLEMENTATIONS: list[Callable[[pytest.FixtureRequest, Path], FeatureStore]] = [
    local_zarr,
    local_zarr_url,
    memory,
    s3,
]
# What a contract suite's ``store`` fixture takes as its params: one per implementation,
# named after it, the S3 one marked ``s3`` (it starts the session's S3 server).
STORE_PARAMS = [
    pytest.param(make, id=make.__name__, marks=[pytest.mark.s3] if make is s3 else [])
    for make in IMPLEMENTATIONS
]


def make_spec(
    key: str = "k0",
    dtype: str = "float32",
    embedding: str = "emb",
    lineage: str | None = None,
    *,
    layers: dict[str, int] = LAYERS,
    rows: int = ROWS,
    shard: int = SHARD,
) -> FeatureSetSpec:
    """A spec of ``rows`` rows in shards of ``shard``; by default in a lineage of its own."""
    return FeatureSetSpec(
        key=key,
        embedding_key=embedding,
        source="test",
        backbone="tiny_test",
        weights_digest="w",
        preprocessing=TINY_PREPROCESSING,
        layers=tuple(layers),
        layer_dims=dict(layers),
        dtype=dtype,
        data_digest="d",
        rows=rows,
        shard_size=shard,
        lineage=lineage or f"lineage-{key}",
    )


def make_rows(n: int = ROWS, train: int = 7) -> pd.DataFrame:
    """``n`` rows of three labels, the first ``train`` of them in the train split."""
    return pd.DataFrame(
        {
            "sample_id": [f"s{i:02d}" for i in range(n)],
            "uri": [f"file:///data/{i}.png" for i in range(n)],
            "label": [f"c{i % 3}" for i in range(n)],
            "split": ["train" if i < train else "test" for i in range(n)],
            "content_hash": [f"h{i}" for i in range(n)],
        }
    )


def shard_values(spec: FeatureSetSpec, shard: int) -> dict[str, np.ndarray]:
    rows = np.array(spec.shard_rows(shard), dtype=np.float32)
    return {layer: np.outer(rows, np.arange(1, dim + 1)) for layer, dim in spec.layer_dims.items()}


def fill(store: FeatureStore, spec: FeatureSetSpec, failures: dict[int, str] | None = None) -> None:
    failures = failures or {}
    spec = store.spec(spec.key)  # as created: where its rows live
    for shard in spec.new_shards:
        rows = spec.shard_rows(shard)
        reasons = [failures.get(r, "") for r in rows]
        store.write_shard(
            spec.key, shard, shard_values(spec, shard), reasons, ShardStats(4, 0, 0.1)
        )
