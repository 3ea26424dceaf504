"""The cost of an embed run: rows to embed or copy, the store's bytes per dtype and the
expected time, after the run's own input checks."""

from __future__ import annotations

from dataclasses import replace

from transfer_pipe.config import EmbedConfig
from transfer_pipe.data.manifest import Manifest
from transfer_pipe.schema import CONTENT_HASH
from transfer_pipe.steps.embed import check_embed_inputs, identity_of, new_spec, reusable_rows
from transfer_pipe.steps.estimate.records import EmbedEstimate, LayerEstimate
from transfer_pipe.steps.estimate.storage import feature_set_bytes
from transfer_pipe.steps.estimate.throughput import (
    calibrate,
    expected_rate,
    recorded_rate,
    recorded_sample,
)
from transfer_pipe.store import FeatureSetSpec, FeatureStore, open_store
from transfer_pipe.store.layout import ROW, shareable


def estimate_embed(config: EmbedConfig) -> EmbedEstimate:
    """Rows, layers and widths, store bytes per dtype and the expected time of the embed
    run ``config`` describes, after the same input checks; writes nothing."""
    return estimate_embed_with_manifest(config)[0]


def estimate_embed_with_manifest(config: EmbedConfig) -> tuple[EmbedEstimate, Manifest]:
    """``estimate_embed``, and the (limited) manifest its checks listed: a dry run that
    needs the source's rows too reads them from it, not from the source again."""
    backbone, layers, manifest = check_embed_inputs(config, dry_run=True)
    identity = identity_of(config, backbone, layers, manifest)
    store = open_store(config.store, config.storage_options)
    status = store.status(identity.key)
    image_size = identity.preprocessing.image_size
    if status == "complete":
        return _complete_estimate(config, store, identity.key, image_size), manifest
    spec = new_spec(config, backbone, layers, manifest, identity)
    if status == "incomplete":
        spec = replace(spec, shard_size=store.spec(spec.key).shard_size)  # a resume keeps it
    pending = _pending_rows(store, spec, status, manifest)
    donors = reusable_rows(store, spec)
    hashes = manifest.table[CONTENT_HASH].to_numpy()
    to_copy = sum(1 for row in pending if hashes[row] in donors)
    to_embed = len(pending) - to_copy
    device = device_type(config.device)

    recorded = recorded_rate(store, spec, device, config)
    sample = recorded_sample(store, spec)
    calibration = None
    if (to_embed and recorded is None) or sample is None:
        calibration = calibrate(config, spec, manifest)
    if sample is None:
        assert calibration is not None
        sample = calibration.sample
    good_share = calibration.good_share if calibration is not None else 1.0
    layer_estimates, bytes_by_dtype = feature_set_bytes(spec, manifest, sample, good_share)
    rate, seconds_from = expected_rate(to_embed, recorded, calibration)
    estimate = EmbedEstimate(
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
    return estimate, manifest


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


def device_type(requested: str) -> str:
    """``cpu`` or ``cuda``: where a run on ``requested`` would run its forward passes."""
    from transfer_pipe.cluster import resolve_device

    return resolve_device(requested).type  # as a run records it: cpu or cuda
