"""One shard, start to finish, inside a worker: decode, preprocess, forward, write."""

from __future__ import annotations

import functools
import hashlib
import time
from collections import defaultdict

import numpy as np
from PIL import Image

from transfer_pipe.data.decode import DecodeError, decode_image
from transfer_pipe.data.idx import split_idx_uri
from transfer_pipe.data.read import read_bytes, read_image
from transfer_pipe.features.batch import embed_images
from transfer_pipe.features.embedder import get_embedder, use_threads
from transfer_pipe.features.tasks import Reuse, ShardResult, ShardTask
from transfer_pipe.store import ShardStats, shared_store
from transfer_pipe.store.layout import LOST

LOST_ROW = (
    f"{LOST}: its shard was damaged and repaired, and no version of its lineage names its "
    "image any more"
)


def produce_shard(task: ShardTask) -> ShardResult:
    """Produce and durably write one shard (what ``tasks.run_shard`` runs in a worker);
    returns a small summary, never arrays."""
    started = time.perf_counter()
    use_threads(task.embedder)
    store = shared_store(task.store, task.storage_options, task.run)
    n = len(task.uris)
    copy = task.copy
    if copy is not None and store.copy_shard(task.key, task.shard, copy.source, copy.shard):
        seconds = time.perf_counter() - started
        return ShardResult(
            shard=task.shard,
            rows=n,
            embedded=0,
            reused=n,
            failed=0,
            seconds=seconds,
            finished=time.time(),
            copied=True,
            copy_seconds=seconds,
        )
    features = {layer: np.full((n, dim), np.nan, np.float32) for layer, dim in task.layer_dims}
    failures = ["" if uri else LOST_ROW for uri in task.uris]

    _copy_reused(task, features)
    copy_seconds = time.perf_counter() - started
    embedded, notes = _embed_new(task, features, failures)

    seconds = time.perf_counter() - started
    stats = ShardStats(embedded, len(task.reuse), seconds)
    store.write_shard(task.key, task.shard, features, failures, stats, task.hashes, notes)
    return ShardResult(
        shard=task.shard,
        rows=n,
        embedded=embedded,
        reused=len(task.reuse),
        failed=sum(1 for f in failures if f),
        seconds=seconds,
        finished=time.time(),
        copy_seconds=copy_seconds,
        device=get_embedder(task.embedder).device.type if embedded else "",
    )


def _copy_reused(task: ShardTask, features: dict[str, np.ndarray]) -> None:
    """Fill the rows found by content hash with their values from the donor feature sets."""
    store = shared_store(task.store, task.storage_options, task.run)
    by_source: dict[str, list[Reuse]] = defaultdict(list)
    for reuse in task.reuse:
        by_source[reuse.source].append(reuse)
    for source, reuses in by_source.items():
        offsets = [r.offset for r in reuses]
        rows = np.array([r.source_row for r in reuses])
        for layer in features:
            features[layer][offsets] = store.read_lineage_rows(source, layer, rows)


def _embed_new(
    task: ShardTask, features: dict[str, np.ndarray], failures: list[str]
) -> tuple[int, dict[int, str]]:
    """Embed the rows not reused into ``features``, a bad image's reason into ``failures``;
    returns how many rows were embedded, and what decoding noted (offset -> note)."""
    reused = {r.offset for r in task.reuse}
    offsets = [i for i, uri in enumerate(task.uris) if i not in reused and uri]
    foreign = task.foreign or (False,) * len(task.uris)
    items = [(task.uris[i], task.hashes[i] if foreign[i] else "") for i in offsets]
    load = functools.partial(_read, draft_to=task.embedder.preprocessing.draft_to)
    embedded = embed_images(
        items, load, task.embedder, task.batch_size, read=_fetch, decoders=task.decoders
    )
    result = embedded.placed(offsets)
    for offset, reason in result.failures.items():
        failures[offset] = reason
    for layer, values in result.features.items():
        features[layer][list(result.ok)] = values
    return len(result.ok), result.notes


def _read(item: tuple[str, str], draft_to: int | None = None) -> Image.Image:
    """The image at ``item``'s URI; with a content hash, only if its bytes still have it
    (``_fetch``)."""
    uri, content_hash = item
    if not content_hash or split_idx_uri(uri) is not None:
        return read_image(uri, draft_to)
    return decode_image(_fetch(item), draft_to=draft_to)


def _fetch(item: tuple[str, str]) -> bytes:
    """The bytes at ``item``'s URI (what a decode on the device starts from); with a
    content hash, only if they still have it (else a DecodeError whose reason marks the
    row lost: its content is gone)."""
    uri, content_hash = item
    if not content_hash:
        return read_bytes(uri)
    try:
        data = read_bytes(uri)
    except DecodeError as err:
        raise DecodeError(LOST, f"{uri} can no longer be read ({err})") from err
    if hashlib.sha256(data).hexdigest() != content_hash:
        raise DecodeError(LOST, f"{uri} changed since its row was written; it is not that image")
    return data
