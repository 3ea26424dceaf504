"""One shard, start to finish, inside a worker: decode, preprocess, forward, write."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from transfer_pipe.data.decode import DecodeError
from transfer_pipe.data.read import read_image
from transfer_pipe.features.embedder import EmbedderConfig, get_embedder, use_threads
from transfer_pipe.store import ShardStats, shared_store


@dataclass(frozen=True)
class Reuse:
    """Copy row ``source_row`` of feature set ``source`` into offset ``offset`` of a shard."""

    offset: int
    source: str
    source_row: int


@dataclass(frozen=True)
class ShardTask:
    """Small and picklable: what one Dask task needs to produce one shard."""

    store: str
    key: str
    shard: int
    uris: tuple[str, ...]  # one per row of the shard
    reuse: tuple[Reuse, ...]  # rows copied from other feature sets by content hash
    embedder: EmbedderConfig
    layer_dims: tuple[tuple[str, int], ...]
    batch_size: int


@dataclass(frozen=True)
class ShardResult:
    shard: int
    rows: int
    embedded: int
    reused: int
    failed: int
    seconds: float
    finished: float  # wall-clock time.time(), to measure steady-state throughput


def run_shard(task: ShardTask) -> ShardResult:
    """Produce and durably write one shard; returns a small summary, never arrays."""
    started = time.perf_counter()
    use_threads(task.embedder)
    store = shared_store(task.store)
    n = len(task.uris)
    features = {layer: np.full((n, dim), np.nan, np.float32) for layer, dim in task.layer_dims}
    failures = [""] * n

    by_source: dict[str, list[Reuse]] = defaultdict(list)
    for reuse in task.reuse:
        by_source[reuse.source].append(reuse)
    for source, reuses in by_source.items():
        offsets = [r.offset for r in reuses]
        rows = np.array([r.source_row for r in reuses])
        for layer in features:
            features[layer][offsets] = store.read_rows(source, layer, rows)

    reused_offsets = {r.offset for r in task.reuse}
    to_embed = [i for i in range(n) if i not in reused_offsets]
    embedded = 0
    for start in range(0, len(to_embed), task.batch_size):
        batch = to_embed[start : start + task.batch_size]
        good, tensors = _decode_batch(task, batch, failures)
        if tensors:
            outputs = get_embedder(task.embedder)(torch.stack(tensors))
            for layer, values in outputs.items():
                features[layer][good] = values
            embedded += len(good)

    seconds = time.perf_counter() - started
    store.write_shard(
        task.key, task.shard, features, failures, ShardStats(embedded, len(task.reuse), seconds)
    )
    return ShardResult(
        shard=task.shard,
        rows=n,
        embedded=embedded,
        reused=len(task.reuse),
        failed=sum(1 for f in failures if f),
        seconds=seconds,
        finished=time.time(),
    )


def _decode_batch(
    task: ShardTask, offsets: list[int], failures: list[str]
) -> tuple[list[int], list[torch.Tensor]]:
    """Decode and preprocess; a bad image becomes a failure reason, never an exception."""
    preprocess = task.embedder.preprocessing
    good: list[int] = []
    tensors: list[torch.Tensor] = []
    for offset in offsets:
        try:
            tensors.append(preprocess(read_image(task.uris[offset])))
        except DecodeError as err:
            failures[offset] = str(err) or err.__class__.__name__
            continue
        good.append(offset)
    return good, tensors
