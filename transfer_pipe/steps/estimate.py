"""Cost before work: what an embed or fine-tuning run would take, without doing it.

    estimate = estimate_embed(config)          # rows, layers, bytes per dtype, seconds
    print(embed_estimate_message(estimate))
    tuned = estimate_finetune(finetune_config)  # rows per split, seconds per epoch

Nothing is written: no store folder is created, no feature set started, no Prefect
imported. The numbers come from what the store has recorded where it can, else from a
short calibration on the run's own first images:

- **time**: images/s from the shard seconds of earlier complete feature sets of the same
  backbone and preprocessing (and device, where the store recorded one); else a few timed
  batches of the real model on the real first images (decode and forward pass, as a shard
  does them).
- **bytes**: the store's own code writes, in memory, the feature set's row columns and
  metadata (exact), and, per layer and dtype, one shard chunk holding sample features
  (rows an earlier run wrote with the same weights and preprocessing, else the
  calibration's): compressed bytes per row are measured on what the store really
  writes, zstd and padding included, not guessed from the width.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, get_args

import numpy as np

from transfer_pipe.backbones import BackboneSpec, get_backbone
from transfer_pipe.cluster import plan_cluster
from transfer_pipe.config import Dtype, EmbedConfig, FinetuneConfig
from transfer_pipe.data.manifest import Manifest
from transfer_pipe.data.sources import load_manifest
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.records import Record
from transfer_pipe.schema import (
    CONTENT_HASH,
    FAILURE,
    LABEL,
    SAMPLE_ID,
    SPLIT,
    TEST,
    TRAIN,
    URI,
    VAL,
)
from transfer_pipe.steps.embed import (
    cached_rows,
    check_embed_inputs,
    identity_of,
    library_versions,
    new_spec,
)
from transfer_pipe.store import FeatureSetSpec, FeatureStore, ShardStats, open_store
from transfer_pipe.store.layout import ROW, shareable

if TYPE_CHECKING:
    import pandas as pd

    from transfer_pipe.heads.tasks import Task

DTYPES: tuple[str, ...] = get_args(Dtype)
CALIBRATION_BATCHES = 3  # timed batches (after one untimed warm-up) when nothing is recorded
CALIBRATION_BATCH = 32  # images per calibration batch, at most


@dataclass(frozen=True)
class LayerEstimate(Record):
    """One layer of a feature set: its width and what a row of it costs in the store."""

    layer: str
    width: int
    bytes_per_row: dict[str, float]  # dtype -> compressed bytes per good row


@dataclass(frozen=True)
class EmbedEstimate(Record):
    """What ``transfer-pipe embed`` would do and cost; nothing of it is done."""

    feature_set: str
    store: str
    source: str
    backbone: str
    image_size: int
    device: str
    dtype: str
    status: str  # of the feature set in the store now: "missing" | "incomplete" | "complete"
    rows: int
    to_embed: int  # forward passes the run would make
    to_copy: int  # rows copied by content hash from other feature sets (same weights)
    already_written: int  # rows of shards an interrupted run wrote, or the whole set
    layers: list[LayerEstimate]
    bytes: int  # the feature set once complete, in ``dtype``
    bytes_by_dtype: dict[str, int]
    bytes_from: str
    images_per_s: float | None  # None when there is nothing to embed
    seconds: float | None  # expected embedding time on this machine; 0 with nothing to embed
    seconds_from: str


@dataclass(frozen=True)
class FinetuneEstimate(Record):
    """What ``transfer-pipe finetune`` would do and cost; nothing of it is done."""

    feature_set: str
    store: str
    backbone: str
    task: str
    policy: str
    epochs: int
    image_size: int
    device: str
    splits: dict[str, int]  # rows per split (for a source still to embed: if every image decodes)
    split_origin: str
    embed: EmbedEstimate | None  # the embed run that comes first, given a source
    seconds_per_epoch: float | None
    seconds: float | None  # embedding first plus ``epochs`` epochs (early stopping may cut it)
    seconds_from: str


# -- embed -------------------------------------------------------------------------------


def estimate_embed(config: EmbedConfig) -> EmbedEstimate:
    """Rows, layers and widths, store bytes per dtype and the expected time of the embed
    run ``config`` describes, after the same input checks; writes nothing."""
    backbone, layers, manifest = check_embed_inputs(config, dry_run=True)
    identity = identity_of(config, backbone, layers, manifest)
    store = open_store(config.store, config.storage_options)
    status = store.status(identity.key)
    image_size = identity.preprocessing.image_size
    if status == "complete":
        return _complete_estimate(config, store, identity.key, image_size)
    spec = new_spec(config, backbone, layers, manifest, identity)
    if status == "incomplete":
        spec = replace(spec, shard_size=store.spec(spec.key).shard_size)  # a resume keeps it
    pending = _pending_rows(store, spec, status, manifest)
    donors = cached_rows(store, spec.embedding_key, spec.layers, exclude=spec.lineage)
    hashes = manifest.table[CONTENT_HASH].to_numpy()
    to_copy = sum(1 for row in pending if hashes[row] in donors)
    to_embed = len(pending) - to_copy
    device = _device(config.device)

    recorded_rate = _recorded_rate(store, spec, device, config)
    sample = _recorded_sample(store, spec)
    calibration = None
    if (to_embed and recorded_rate is None) or sample is None:
        calibration = _calibrate(config, spec, manifest)
    if sample is None:
        assert calibration is not None
        sample = calibration.sample
    good_share = calibration.good_share if calibration is not None else 1.0
    layer_estimates, bytes_by_dtype = _bytes(spec, manifest, sample, good_share)
    rate, seconds_from = _rate(to_embed, recorded_rate, calibration)
    return EmbedEstimate(
        feature_set=spec.key,
        store=config.store,
        source=spec.source,
        backbone=spec.backbone,
        image_size=image_size,
        device=device,
        dtype=config.dtype,
        status=status,
        rows=spec.rows,
        to_embed=to_embed,
        to_copy=to_copy,
        already_written=spec.rows - len(pending),
        layers=layer_estimates,
        bytes=bytes_by_dtype[config.dtype],
        bytes_by_dtype=bytes_by_dtype,
        bytes_from=sample.origin,
        images_per_s=rate,
        seconds=to_embed / rate if rate else 0.0 if not to_embed else None,
        seconds_from=seconds_from,
    )


def _complete_estimate(
    config: EmbedConfig, store: FeatureStore, key: str, image_size: int
) -> EmbedEstimate:
    """A feature set the store holds complete costs nothing: its bytes are measured."""
    spec = store.spec(key)
    nbytes = store.nbytes(key)
    return EmbedEstimate(
        feature_set=key,
        store=config.store,
        source=spec.source,
        backbone=spec.backbone,
        image_size=image_size,
        device=config.device,
        dtype=spec.dtype,
        status="complete",
        rows=spec.rows,
        to_embed=0,
        to_copy=0,
        already_written=spec.rows,
        layers=[LayerEstimate(layer, spec.layer_dims[layer], {}) for layer in spec.layers],
        bytes=nbytes,
        bytes_by_dtype={spec.dtype: nbytes},
        bytes_from="measured: the feature set is complete in the store",
        images_per_s=None,
        seconds=0.0,
        seconds_from="nothing to embed: the store holds this feature set complete",
    )


def _pending_rows(
    store: FeatureStore, spec: FeatureSetSpec, status: str, manifest: Manifest
) -> list[int]:
    """Manifest rows whose content the run must write: one per distinct content its
    lineage does not hold (a version not started), or of the shards still to write."""
    hashes = manifest.table[CONTENT_HASH].astype(str).tolist()
    if status == "incomplete":
        pending = set(store.pending_shards(spec.key))
        rows = store.row_table(spec.key, columns=(CONTENT_HASH,))[ROW].to_numpy()
        wanted = {int(row) for row in rows if int(row) // spec.shard_size in pending}
        picked = {int(row): i for i, row in enumerate(rows) if int(row) in wanted}
        return sorted(picked.values())
    held = set(shareable(store.lineage_rows(spec.lineage))[CONTENT_HASH].astype(str))
    first: dict[str, int] = {}
    for i, content in enumerate(hashes):
        if content not in held:
            first.setdefault(content, i)
    return sorted(first.values())


def _device(requested: str) -> str:
    from transfer_pipe.cluster import resolve_device

    return resolve_device(requested).type  # as a run records it: cpu or cuda


# -- throughput ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sample:
    """Feature rows to measure compression on (float32, one array per layer)."""

    features: dict[str, np.ndarray]
    origin: str


@dataclass(frozen=True)
class _Calibration:
    sample: _Sample
    images_per_s: float
    images: int
    good_share: float  # of the calibration images that decoded


def _recorded_rate(
    store: FeatureStore, spec: FeatureSetSpec, device: str, config: EmbedConfig
) -> tuple[float, int] | None:
    """(images/s, feature sets measured) over the complete feature sets of the same
    backbone, preprocessing and forward precision (and device, where recorded) that
    embedded images. Shard seconds are per shard; the local cluster runs ``workers``
    shards at once."""
    parallel = max(1, plan_cluster(config.dask_address, config.workers).workers)
    images, seconds, runs = 0.0, 0.0, 0
    for key in store.list_keys():
        if key == spec.key or store.status(key) != "complete":
            continue
        other = store.spec(key)
        recorded_device = store.provenance(key).get("device")
        if (
            other.backbone != spec.backbone
            or other.preprocessing != spec.preprocessing
            or other.autocast != spec.autocast  # bfloat16 runs about 2x float32's rate
            or (recorded_device is not None and recorded_device != device)
        ):
            continue
        stats = store.shard_stats(key)
        embedding = stats[stats["embedded"] > 0]
        if embedding.empty:
            continue
        images += float(embedding["embedded"].sum())
        seconds += float(embedding["seconds"].sum()) / min(parallel, len(embedding))
        runs += 1
    return (images / seconds, runs) if runs and seconds > 0 else None


def _recorded_sample(store: FeatureStore, spec: FeatureSetSpec, rows: int = 256) -> _Sample | None:
    """Good rows of a complete float32 feature set with the same weights and
    preprocessing that holds every layer: what this run's features will look like."""
    for key in store.list_keys():
        other = store.spec(key)
        if (
            other.backbone != spec.backbone
            or other.weights_digest != spec.weights_digest
            or other.preprocessing != spec.preprocessing
            or other.dtype != "float32"
            or not set(spec.layers) <= set(other.layers)
            or store.status(key) != "complete"
        ):
            continue
        table = store.row_table(key, columns=(FAILURE,))
        good = np.flatnonzero((table[FAILURE] == "").to_numpy() & table["done"].to_numpy())
        if len(good) == 0:
            continue
        picked = good[:rows]
        features = {layer: store.read_rows(key, layer, picked) for layer in spec.layers}
        return _Sample(features, f"compression measured on {len(picked)} rows of feature set {key}")
    return None


def _calibrate(config: EmbedConfig, spec: FeatureSetSpec, manifest: Manifest) -> _Calibration:
    """A few timed batches of the real model on the first images: decode, preprocess and
    the forward pass, as an embed shard runs them (one untimed warm-up batch first, which
    also builds the model)."""
    from transfer_pipe.backbones import Preprocessing
    from transfer_pipe.data.read import read_bytes, read_image
    from transfer_pipe.features.batch import embed_images
    from transfer_pipe.features.tasks import EmbedderConfig

    embedder = EmbedderConfig(
        backbone=spec.backbone,
        weights_file=spec.weights_file,
        layers=spec.layers,
        preprocessing=Preprocessing.from_dict(spec.preprocessing),
        device=config.device,
        autocast=config.autocast,
    )
    batch = min(config.batch_size, CALIBRATION_BATCH)
    uris = manifest.table[URI].tolist()
    load = functools.partial(read_image, draft_to=embedder.preprocessing.draft_to)
    embed_images(uris[:batch], load, embedder, batch, read=read_bytes)  # warm-up: builds the model
    timed = uris[: batch * CALIBRATION_BATCHES]
    started = time.perf_counter()
    result = embed_images(timed, load, embedder, batch, read=read_bytes)
    seconds = time.perf_counter() - started
    if not result.ok:
        raise TransferPipeError(
            f"none of the first {len(timed)} images of {spec.source} could be read (e.g. "
            f"{next(iter(result.failures.values()))}); fix the source before embedding it."
        )
    sample = _Sample(
        result.features, f"compression measured on {len(result.ok)} freshly embedded rows"
    )
    return _Calibration(
        sample=sample,
        images_per_s=len(timed) / seconds,
        images=len(timed),
        good_share=len(result.ok) / len(timed),
    )


def _rate(
    to_embed: int, recorded: tuple[float, int] | None, calibration: _Calibration | None
) -> tuple[float | None, str]:
    """Images/s and where it came from."""
    if not to_embed:
        return None, "nothing to embed: every row is written or copied"
    if recorded is not None:
        rate, runs = recorded
        return rate, f"recorded: shard seconds of {runs} earlier feature set(s) in the store"
    assert calibration is not None
    return (
        calibration.images_per_s,
        f"calibrated: {calibration.images} of the first images timed through the model",
    )


# -- bytes -------------------------------------------------------------------------------


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


def _bytes(
    spec: FeatureSetSpec, manifest: Manifest, sample: _Sample, good_share: float
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
    store.mark_complete(
        spec.key,
        {
            "finished": "2000-01-01T00:00:00+00:00",
            "libraries": library_versions(),
            "counts": {
                "rows": spec.rows,
                "failed": 0,
                "embedded": spec.rows,
                "reused_from_other_sets": 0,
            },
            "seconds": {"check": 1.0 / 3, "prepare": 1.0 / 3, "shards": 1.0 / 3},
        },
    )
    return store.nbytes(spec.key), spec


def _chunk_cost(
    store: FeatureStore,
    spec: FeatureSetSpec,
    manifest: Manifest,
    layer: str,
    dtype: str,
    sample: _Sample,
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


# -- the terminal ----------------------------------------------------------------------------


def _size(nbytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    if seconds < 0.1:
        return "under 0.1 s"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def embed_estimate_message(estimate: EmbedEstimate) -> str:
    """The estimate as a few lines for the terminal: what would be embedded or copied,
    one line per layer, the store's bytes per dtype and the expected time."""
    e = estimate
    lines = [
        f"dry run, nothing embedded or written: feature set {e.feature_set} ({e.status} in "
        f"{e.store}), {e.rows} rows of {e.source} through {e.backbone} at {e.image_size} px "
        f"on {e.device}",
        f"  images to embed: {e.to_embed}; rows to copy from other feature sets: {e.to_copy}; "
        f"rows already written: {e.already_written}",
    ]
    dtypes = [d for d in DTYPES if d in e.bytes_by_dtype]
    if any(layer.bytes_per_row for layer in e.layers):
        name_width = max(len("layer"), *(len(layer.layer) for layer in e.layers))
        header = (
            "  "
            + "layer".ljust(name_width)
            + "  width"
            + "".join(f"  {d + ' B/row':>15}" for d in dtypes)
        )
        lines.append(header)
        for layer in e.layers:
            cells = "".join(f"  {layer.bytes_per_row[d]:>15.1f}" for d in dtypes)
            lines.append(f"  {layer.layer.ljust(name_width)}  {layer.width:>5}{cells}")
    else:
        lines.append(
            "  layers: " + ", ".join(f"{layer.layer} ({layer.width})" for layer in e.layers)
        )
    sizes = ", ".join(
        f"{_size(e.bytes_by_dtype[d])} as {d}" + (" (this run)" if d == e.dtype else "")
        for d in dtypes
    )
    lines.append(f"  store: {sizes}; {e.bytes_from}")
    if e.seconds is None:
        lines.append(f"  time: cannot be estimated ({e.seconds_from})")
    elif e.to_embed:
        lines.append(
            f"  time: {_duration(e.seconds)} of embedding at {e.images_per_s:.1f} "
            f"images/s ({e.seconds_from}), plus start-up (Prefect, Dask, model load)"
        )
    else:
        lines.append(f"  time: no forward pass ({e.seconds_from})")
    return "\n".join(lines)


# -- fine-tuning -----------------------------------------------------------------------------


def estimate_finetune(config: FinetuneConfig) -> FinetuneEstimate:
    """Rows per split, the feature set to embed first (given a source) and the expected
    time per epoch of the fine-tuning run ``config`` describes; writes nothing. Seconds
    per epoch come from earlier fine-tuning runs in the store with the same backbone,
    image size, device and policy, else from a few timed forward+backward steps."""
    from transfer_pipe.heads.tasks import parse_task
    from transfer_pipe.steps.train import check_features

    task = parse_task(config.task)
    embedded: EmbedEstimate | None = None
    store = open_store(config.store, config.storage_options)
    if config.embed is not None:
        embedded = estimate_embed(config.embed)
        backbone = get_backbone(config.embed.backbone, config.embed.weights_file)
        key, image_size = embedded.feature_set, embedded.image_size
        rows = _rows_to_split(store, key, config.embed)
    else:
        assert config.feature_set is not None
        spec, _ = check_features(config.store, config.feature_set, None, config.storage_options)
        backbone = get_backbone(spec.backbone, spec.weights_file)
        key, image_size = spec.key, int(spec.preprocessing["image_size"])
        rows = _rows_to_split(store, key, None)
    splits, origin = _split_sizes(task, rows, config)
    device = _device(config.device)
    recorded = _recorded_epoch_cost(
        store, backbone.id, image_size, device, config.policy, config.storage_options
    )
    if recorded is not None:
        per_image, seconds_from = recorded
    else:
        per_image, seconds_from = _calibrate_training(config, backbone, image_size, rows)
    per_epoch = splits[TRAIN] * per_image[0] + splits[VAL] * per_image[1]
    before = embedded.seconds if embedded is not None else 0.0
    return FinetuneEstimate(
        feature_set=key,
        store=config.store,
        backbone=backbone.id,
        task=config.task,
        policy=config.policy,
        epochs=config.epochs,
        image_size=image_size,
        device=device,
        splits=splits,
        split_origin=origin,
        embed=embedded,
        seconds_per_epoch=per_epoch,
        seconds=None if before is None else before + config.epochs * per_epoch,
        seconds_from=seconds_from,
    )


def _rows_to_split(store: FeatureStore, key: str, embed: EmbedConfig | None) -> pd.DataFrame:
    """sample_id, uri, label and split of the rows the task will see: the good rows of a
    complete feature set, else every row of the source (as if every image decodes)."""
    if store.status(key) == "complete":
        table = store.row_table(key, columns=(SAMPLE_ID, URI, LABEL, SPLIT, FAILURE))
        return table[(table[FAILURE] == "") & table["done"]].reset_index(drop=True)
    assert embed is not None
    return load_manifest(embed.source).limit(embed.limit).table


def _split_sizes(
    task: Task, rows: pd.DataFrame, config: FinetuneConfig
) -> tuple[dict[str, int], str]:
    """Rows per split as the heads flow would split them (``heads.tasks``' own rule)."""
    from transfer_pipe.heads.tasks import SplitOptions, SplitRows, _split, _task_labels

    ids = rows[SAMPLE_ID].to_numpy().astype(str)
    labels, _ = _task_labels(task, ids, rows[LABEL].to_numpy().astype(str))
    keep = labels != ""
    labelled = SplitRows(np.empty((int(keep.sum()), 0)), labels[keep], ids[keep])
    options = SplitOptions(config.val_fraction, config.test_fraction, config.split_seed)
    train, val, test, origin = _split(labelled, rows[SPLIT].to_numpy()[keep], options)
    return {TRAIN: len(train), VAL: len(val), TEST: len(test)}, origin


def _recorded_epoch_cost(
    store: FeatureStore,
    backbone: str,
    image_size: int,
    device: str,
    policy: str,
    storage_options: str | None = None,
) -> tuple[tuple[float, float], str] | None:
    """((seconds per training image, per validation image), origin) from the fine-tuning
    runs in the store with the same backbone, image size, device and policy: their epoch
    seconds (training and validation together) spread over their rows."""
    from transfer_pipe.finetune.persist import list_cards

    seconds, images, runs = 0.0, 0, 0
    for card in list_cards(store.url, storage_options):
        result = card.result
        if (
            card.backbone != backbone
            or result.image_size != image_size
            or result.device != device
            or result.policy != policy
            or not result.history
        ):
            continue
        seconds += float(result.history[-1]["seconds"])
        images += len(result.history) * (card.splits.train + card.splits.val)
        runs += 1
    if not runs or not images:
        return None
    per_image = seconds / images
    return (per_image, per_image), f"recorded: {runs} earlier fine-tuning run(s) in the store"


def _calibrate_training(
    config: FinetuneConfig, backbone: BackboneSpec, image_size: int, rows: pd.DataFrame
) -> tuple[tuple[float, float], str]:
    """(seconds per training image, per validation image), timed on the first images:
    forward+backward+step of the policy's model, then a forward pass without gradients
    (one untimed warm-up step first)."""
    import torch

    from transfer_pipe.data.batch import prepare_batch
    from transfer_pipe.data.read import read_image
    from transfer_pipe.finetune.surgery import build_finetune_model

    preprocessing = backbone.preprocessing.replace(image_size=image_size)
    batch = min(config.batch_size, CALIBRATION_BATCH)
    inputs = prepare_batch(rows[URI].tolist()[:batch], read_image, preprocessing)
    if not inputs.ok:
        raise TransferPipeError("none of the first images could be read; fix the source first.")
    device = torch.device(_device(config.device))
    images = inputs.images.to(device)
    targets = torch.zeros(len(images), dtype=torch.long, device=device)
    model = build_finetune_model(backbone, 2, config.policy, image_size).to(device)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=1e-6)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), targets).backward()
        optimizer.step()

    model.train()
    step()  # warm-up
    started = time.perf_counter()
    for _ in range(CALIBRATION_BATCHES - 1):
        step()
    train_s = (time.perf_counter() - started) / ((CALIBRATION_BATCHES - 1) * len(images))
    model.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        model(images)
    eval_s = (time.perf_counter() - started) / len(images)
    return (
        (train_s, eval_s),
        f"calibrated: {CALIBRATION_BATCHES - 1} training steps on {len(images)} of the first "
        "images (image decoding and augmentation not included)",
    )


def finetune_estimate_message(estimate: FinetuneEstimate) -> str:
    """The fine-tuning estimate for the terminal: the embed run first (if any), rows per
    split and the expected time per epoch."""
    e = estimate
    lines = [embed_estimate_message(e.embed)] if e.embed is not None else []
    splits = "/".join(str(e.splits[s]) for s in (TRAIN, VAL, TEST))
    lines.append(
        f"dry run, nothing trained: fine-tune {e.backbone} ({e.policy}) on feature set "
        f"{e.feature_set} for task {e.task} at {e.image_size} px on {e.device}; "
        f"train/val/test {splits} ({e.split_origin})"
    )
    if e.seconds_per_epoch is None:
        lines.append(f"  time: cannot be estimated ({e.seconds_from})")
    else:
        total = (
            "" if e.seconds is None else f"; {_duration(e.seconds)} in all for {e.epochs} epochs"
        )
        lines.append(
            f"  time: {_duration(e.seconds_per_epoch)} per epoch ({e.seconds_from}){total}"
            " (early stopping may end it sooner)"
        )
    return "\n".join(lines)


__all__ = [
    "EmbedEstimate",
    "FinetuneEstimate",
    "LayerEstimate",
    "embed_estimate_message",
    "estimate_embed",
    "estimate_finetune",
    "finetune_estimate_message",
]
