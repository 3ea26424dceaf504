"""The store's bytes of a feature set, per layer and dtype: the store's own code writes, in
memory, the row columns and metadata (exact) and one shard chunk of sample rows per layer
and dtype (measured: zstd and padding included)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from transfer_pipe.data.manifest import Manifest
from transfer_pipe.schema import CONTENT_HASH
from transfer_pipe.steps.embed import library_versions
from transfer_pipe.steps.estimate.records import DTYPES, LayerEstimate
from transfer_pipe.steps.estimate.throughput import Sample
from transfer_pipe.store import FeatureSetSpec, FeatureStore, ShardStats, open_store
from transfer_pipe.store.provenance import Completion, RowCounts


@contextlib.contextmanager
def _scratch_store() -> Iterator[FeatureStore]:
    """A store in memory (fsspec's ``memory://``), removed on exit: the store's own code
    writes there what it would write on disk, and nothing reaches the disk."""
    import fsspec

    name = f"transfer-pipe-estimate-{uuid.uuid4().hex}"
    try:
        yield open_store(f"memory://{name}")
    finally:
        memory = fsspec.filesystem("memory")
        if memory.exists(f"/{name}"):
            memory.rm(f"/{name}", recursive=True)


def feature_set_bytes(
    spec: FeatureSetSpec, manifest: Manifest, sample: Sample, good_share: float
) -> tuple[list[LayerEstimate], dict[str, int]]:
    """Per layer its compressed bytes per row, and the whole feature set's bytes per dtype:
    the row columns, metadata and shard markers as written (exact), plus every layer's
    chunks at the measured cost (``good_share`` of the rows are expected to decode;
    a failed row is NaN, which the store does not write)."""
    costs: dict[tuple[str, str], tuple[float, float]] = {}
    with _scratch_store() as scratch:
        structure, spec = _structure_bytes(scratch, spec, manifest)
        for layer in spec.layers:
            for dtype in DTYPES:
                costs[layer, dtype] = _chunk_cost(scratch, spec, manifest, layer, dtype, sample)
    good = [round(len(spec.shard_rows(s)) * good_share) for s in spec.new_shards]
    totals = {
        dtype: int(
            structure
            + sum(
                costs[layer, dtype][0] + k * costs[layer, dtype][1]
                for layer in spec.layers
                for k in good
                if k
            )
        )
        for dtype in DTYPES
    }
    layers = [
        LayerEstimate(
            layer,
            spec.layer_dims[layer],
            {dtype: round(costs[layer, dtype][1], 1) for dtype in DTYPES},
        )
        for layer in spec.layers
    ]
    return layers, totals


def _structure_bytes(
    store: FeatureStore, spec: FeatureSetSpec, manifest: Manifest
) -> tuple[int, FeatureSetSpec]:
    """Bytes of ``spec``'s feature set without feature chunks, written as a run writes it:
    created from the manifest (every distinct content its own row, as in a store of its
    own), every shard marked written, completed with a provenance; and the spec so
    planned."""
    store.create(spec, manifest.table)
    spec = store.spec(spec.key)
    for shard in spec.new_shards:
        n = len(spec.shard_rows(shard))
        nan = {
            layer: np.full((n, spec.layer_dims[layer]), np.nan, np.float32) for layer in spec.layers
        }
        store.write_shard(spec.key, shard, nan, [""] * n, ShardStats(n, 0, 1.0))
    completion = Completion(
        finished="2000-01-01T00:00:00+00:00",
        libraries=library_versions(),
        counts=RowCounts(rows=spec.rows, failed=0, embedded=spec.rows, reused_from_other_sets=0),
        seconds={"check": 1.0 / 3, "prepare": 1.0 / 3, "shards": 1.0 / 3},
    )
    store.mark_complete(spec.key, completion.to_dict())
    return store.nbytes(spec.key), spec


def _chunk_cost(
    store: FeatureStore,
    spec: FeatureSetSpec,
    manifest: Manifest,
    layer: str,
    dtype: str,
    sample: Sample,
) -> tuple[float, float]:
    """(bytes per written chunk, bytes per good row) of ``layer`` stored as ``dtype``: one
    shard's chunk is written with none, half and all of the sample rows (NaN elsewhere, as
    a shard with failures or the last, short shard holds) and measured each time."""
    size = spec.shard_size
    values = np.asarray(sample.features[layer], np.float32)[:size]
    n = len(values)
    one = replace(
        spec,
        key=f"chunk-{layer}-{dtype}",
        layers=(layer,),
        layer_dims={layer: spec.layer_dims[layer]},
        dtype=dtype,
        rows=size,
        lineage=f"chunk-{layer}-{dtype}",
    )
    rows = manifest.table.iloc[np.arange(size) % len(manifest)].reset_index(drop=True)
    rows[CONTENT_HASH] = [f"row-{i}" for i in range(size)]  # every row its own content
    store.create(one, rows)

    def written(k: int) -> int:
        block = np.full((size, values.shape[1]), np.nan, np.float32)
        block[:k] = values[:k]
        store.write_shard(one.key, 0, {layer: block}, [""] * size, ShardStats(k, 0, 1.0))
        return store.nbytes(one.key)

    empty, half, full = written(0), written(n // 2), written(n)
    per_row = (full - half) / (n - n // 2)
    return max(0.0, full - empty - n * per_row), per_row
