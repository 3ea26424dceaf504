"""Images per second of an embed run: recorded by earlier complete feature sets of the
same backbone and preprocessing, else measured on a few batches of the run's own first
images (which also gives the sample rows whose compression the store's bytes come from)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

from transfer_pipe.backbones import StoreLocation
from transfer_pipe.cluster import plan_cluster
from transfer_pipe.config import EmbedConfig
from transfer_pipe.data.manifest import Manifest
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.schema import FAILURE, URI
from transfer_pipe.store import FeatureSetSpec, FeatureStore

CALIBRATION_BATCHES = 3  # timed batches (after one untimed warm-up) when nothing is recorded
CALIBRATION_BATCH = 32  # images per calibration batch, at most


@dataclass(frozen=True)
class Sample:
    """Feature rows to measure compression on (float32, one array per layer)."""

    features: dict[str, np.ndarray]
    origin: str


@dataclass(frozen=True)
class Calibration:
    """A few batches timed through the model: the rows they gave, and how fast."""

    sample: Sample
    images_per_s: float
    images: int
    good_share: float  # of the calibration images that decoded


def recorded_rate(
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


def recorded_sample(store: FeatureStore, spec: FeatureSetSpec, rows: int = 256) -> Sample | None:
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
        return Sample(features, f"compression measured on {len(picked)} rows of feature set {key}")
    return None


def calibrate(config: EmbedConfig, spec: FeatureSetSpec, manifest: Manifest) -> Calibration:
    """A few timed batches of the real model on the first images: decode, preprocess and
    the forward pass, as an embed shard runs them (one untimed warm-up batch first, which
    also builds the model)."""
    from transfer_pipe.data.read import read_bytes, read_image
    from transfer_pipe.features.batch import embed_images
    from transfer_pipe.features.tasks import EmbedderConfig

    embedder = EmbedderConfig(
        backbone=spec.backbone,
        weights_file=spec.weights_file,
        layers=spec.layers,
        preprocessing=spec.preprocessing,
        device=config.device,
        autocast=config.autocast,
        stores=(StoreLocation.of(config.store, config.storage_options),),
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
    sample = Sample(
        result.features, f"compression measured on {len(result.ok)} freshly embedded rows"
    )
    return Calibration(
        sample=sample,
        images_per_s=len(timed) / seconds,
        images=len(timed),
        good_share=len(result.ok) / len(timed),
    )


def expected_rate(
    to_embed: int, recorded: tuple[float, int] | None, calibration: Calibration | None
) -> tuple[float | None, str]:
    """Images/s and where it came from (None with nothing to embed)."""
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
