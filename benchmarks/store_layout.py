"""The store's layout before and after issue 11 (parts 3-4): objects, reads and bytes.

Builds one feature set through the store API (random features, the real row layout:
Fashion-MNIST-like sample ids and URIs, sha256 content hashes, 0.1% failed rows) with the
layout of commit 2c219cc ("before", its zarr_store.py loaded from git) and with today's
("after"), at two sizes, and fits ``count = fixed + per_row * rows`` to extrapolate to a
million and ten million images. Reads are counted at the Zarr store (each is one request
on S3): opening a complete feature set and reading its ``sample_id`` column, through the
library's own ``row_table``.

    python benchmarks/store_layout.py            # writes benchmarks/results/store_layout.json
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr.storage
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

from transfer_pipe.preprocessing import Preprocessing
from transfer_pipe.store import FeatureSetSpec, ShardStats, ZarrFeatureStore

BEFORE_COMMIT = "2c219cc"
SIZES = (10_000, 20_000)
DIM = 768  # one layer, as wide as a ViT-B or ResNet-50 bottleneck projection
FAILED_SHARE = 0.001
RESULTS = Path(__file__).parent / "results" / "store_layout.json"


class CountingStore(zarr.storage.WrapperStore[zarr.storage.LocalStore]):
    """A LocalStore that counts what would be requests on object storage."""

    def __init__(self, store: zarr.storage.LocalStore, counter: list[str]) -> None:
        super().__init__(store)
        self.counter = counter

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        self.counter.append(key)
        return await self._store.get(key, prototype, byte_range)

    async def exists(self, key: str) -> bool:
        self.counter.append(f"exists {key}")
        return await self._store.exists(key)


def old_store_class() -> type:
    """ZarrFeatureStore as it was at BEFORE_COMMIT (layout 1)."""
    source = subprocess.check_output(
        ["git", "show", f"{BEFORE_COMMIT}:transfer_pipe/store/zarr_store.py"],
        cwd=Path(__file__).parent.parent,
    )
    path = Path(tempfile.mkdtemp()) / "zarr_store_before.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("zarr_store_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ZarrFeatureStore  # type: ignore[no-any-return]


def rows_table(n: int) -> pd.DataFrame:
    splits = np.where(np.arange(n) % 7 == 0, "test", "train")
    return pd.DataFrame(
        {
            "sample_id": [f"{splits[i]}/{i:08d}" for i in range(n)],
            "uri": [f"s3://datasets/fashion-mnist/{splits[i]}/{i:08d}.png" for i in range(n)],
            "label": [f"class{i % 10}" for i in range(n)],
            "split": splits,
            "content_hash": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)],
        }
    )


def build(store: Any, rows: int, shard_size: int) -> str:
    """One complete feature set of ``rows`` rows; returns its key."""
    spec = FeatureSetSpec(
        key="bench",
        embedding_key="e",
        source="bench",
        backbone="bench",
        weights_digest="w",
        preprocessing=Preprocessing(224, (0.5,) * 3, (0.5,) * 3),
        layers=("penultimate",),
        layer_dims={"penultimate": DIM},
        dtype="float32",
        data_digest="d",
        rows=rows,
        shard_size=shard_size,
        lineage="bench",
    )
    store.create(spec, rows_table(rows))
    spec = store.spec(spec.key)  # as created (today's layout plans where its rows go)
    rng = np.random.default_rng(0)
    for shard in spec.new_shards if spec.appended >= 0 else range(spec.n_shards):
        span = spec.shard_rows(shard)
        values = rng.standard_normal((len(span), DIM), dtype=np.float32)
        failed = rng.random(len(span)) < FAILED_SHARE
        values[failed] = np.nan
        reasons = ["corrupt: cannot identify image file" if f else "" for f in failed]
        stats = ShardStats(len(span), 0, 1.0)
        store.write_shard(spec.key, shard, {"penultimate": values}, reasons, stats)
    store.mark_complete(spec.key, {})
    return spec.key


def measure(store_class: type, rows: int, shard_size: int) -> dict[str, float]:
    """Objects, bytes and counted reads of one freshly built feature set."""
    with tempfile.TemporaryDirectory() as folder:
        key = build(store_class(folder), rows, shard_size)
        files = [p for p in (Path(folder) / "feature_sets" / key).rglob("*") if p.is_file()]
        reads: list[str] = []
        reader = store_class(folder)
        reader._zarr_store = lambda read_only: CountingStore(  # count every Zarr request
            zarr.storage.LocalStore(folder, read_only=read_only), reads
        )
        started = time.perf_counter()
        ids = reader.row_table(key, columns=("sample_id",))["sample_id"]
        seconds = time.perf_counter() - started
        assert len(ids) == rows
        return {
            "objects": len(files),
            "bytes": sum(p.stat().st_size for p in files),
            "reads_open_and_sample_id": len(reads),
            "seconds_open_and_sample_id": round(seconds, 3),
            "objects_under_20kb": sum(p.stat().st_size < 20_000 for p in files),
        }


def extrapolate(small: dict[str, float], large: dict[str, float], rows: int) -> dict[str, int]:
    """``fixed + per_row * rows`` through the two measured sizes."""
    out = {}
    for name in ("objects", "bytes", "reads_open_and_sample_id"):
        per_row = (large[name] - small[name]) / (SIZES[1] - SIZES[0])
        out[name] = round(small[name] + per_row * (rows - SIZES[0]))
    return out


def main() -> None:
    layouts = {
        "before (layout 1, shard 512)": (old_store_class(), 512),
        "after (layout 2, shard 512)": (ZarrFeatureStore, 512),
        "after (layout 2, shard 4096)": (ZarrFeatureStore, 4096),
        "after (layout 2, shard 8192)": (ZarrFeatureStore, 8192),
    }
    results: dict[str, Any] = {
        "what": "one feature set, one layer of 768 float32, 0.1% failed rows; counts "
        "extrapolated linearly from the two measured sizes (string columns of layout 2 "
        "stay one object each up to 16M rows)",
        "measured_rows": list(SIZES),
        "layouts": {},
    }
    for name, (store_class, shard_size) in layouts.items():
        small, large = (measure(store_class, rows, shard_size) for rows in SIZES)
        results["layouts"][name] = {
            "measured": {str(SIZES[0]): small, str(SIZES[1]): large},
            "per_million_images": extrapolate(small, large, 1_000_000),
            "per_ten_million_images": extrapolate(small, large, 10_000_000),
        }
        print(name, json.dumps(results["layouts"][name]["per_million_images"]), flush=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
