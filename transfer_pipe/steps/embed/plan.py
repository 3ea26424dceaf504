"""What an embed run will do, decided before any image is touched: the feature set's spec,
whether the store holds it complete, and the shard tasks still to run."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from transfer_pipe.backbones import BackboneSpec
from transfer_pipe.cluster import plan_cluster
from transfer_pipe.config import EmbedConfig
from transfer_pipe.data.manifest import Manifest
from transfer_pipe.data.sources import check_source, load_manifest
from transfer_pipe.features.tasks import EmbedderConfig, ShardTask
from transfer_pipe.run_context import RunContext, current_context
from transfer_pipe.steps.embed.checks import checked_inputs, layer_widths, source_hash_cache
from transfer_pipe.steps.embed.claims import take_claim
from transfer_pipe.steps.embed.identity import Identity, identity_of, known_lineage, run_backbone
from transfer_pipe.steps.embed.reuse import Donors, reusable_rows
from transfer_pipe.steps.embed.shards import shard_tasks
from transfer_pipe.store import FeatureSetSpec, open_store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedPlan:
    """What an embed run will do; built before any image is touched."""

    config: EmbedConfig
    spec: FeatureSetSpec
    status_before: str  # "missing" | "incomplete" | "complete"
    tasks: list[ShardTask]
    shards_already_done: int  # by an earlier, interrupted run of the same feature set
    seconds: dict[str, float] = field(default_factory=dict)
    # The context the plan was made in: the claim its run holds (``claims``).
    context: RunContext = field(default_factory=RunContext, compare=False, repr=False)


def complete_plan(config: EmbedConfig) -> EmbedPlan | None:
    """The (empty) plan of a run whose feature set the store holds complete, found from the
    registry, the manifest and the store alone, writing nothing; None when there is work
    to do."""
    started = time.perf_counter()
    backbone = run_backbone(config)
    check_source(config.source)
    manifest = load_manifest(config.source, hashes=source_hash_cache(config)).limit(config.limit)
    layers = backbone.layer_names(config.layers)
    identity = identity_of(config, backbone, layers, manifest)
    return _plan_if_complete(config, identity, started, current_context())


def _plan_if_complete(
    config: EmbedConfig, identity: Identity, started: float, context: RunContext
) -> EmbedPlan | None:
    store = open_store(config.store, config.storage_options)
    if store.status(identity.key) != "complete":
        return None
    spec = store.spec(identity.key)
    logger.info(
        "feature set %s: %d images of %s through %s, complete in the store; nothing to embed",
        identity.key,
        spec.rows,
        spec.source,
        spec.backbone,
    )
    seconds = {"prepare": time.perf_counter() - started}
    return EmbedPlan(config, spec, "complete", [], spec.n_shards, seconds, context)


def new_spec(
    config: EmbedConfig,
    backbone: BackboneSpec,
    layers: Sequence[str],
    manifest: Manifest,
    identity: Identity,
) -> FeatureSetSpec:
    """The spec of the feature set ``config`` would create (for a new lineage, the model is
    built, once per process, for the layer widths; a lineage knows them)."""
    store = open_store(config.store, config.storage_options)
    lineage = known_lineage(store, identity)
    widths = (
        dict(lineage.layer_dims)
        if lineage is not None
        else layer_widths(backbone, layers, identity.preprocessing.image_size)
    )
    return FeatureSetSpec(
        key=identity.key,
        embedding_key=identity.embedding_key,
        source=manifest.source,
        backbone=backbone.id,
        weights_digest=identity.weights_digest,
        weights_file=backbone.weights_file,
        preprocessing=identity.preprocessing,
        layers=tuple(layers),
        layer_dims=widths,
        dtype=config.dtype,
        autocast=config.autocast,
        data_digest=identity.data_digest,
        rows=len(manifest),
        shard_size=config.shard_size or default_shard_size(len(manifest)),
        backbone_metadata=dict(backbone.metadata),
        lineage=identity.lineage,
    )


def default_shard_size(rows: int) -> int:
    """Rows per shard task when the user names none: 512, doubled while there would be
    more than 256 tasks, at most 8192. Each task writes one object per layer, so large
    sets get few, large objects (245 per layer for a million images), small ones keep
    enough tasks to spread over the workers and to show progress."""
    size = 512
    while size < 8192 and rows > 256 * size:
        size *= 2
    return size


def prepare_embedding(config: EmbedConfig, context: RunContext | None = None) -> EmbedPlan:
    """Resolve the feature-set key and plan the shards still to write; returns the plan.

    Everything that can be wrong with the input is checked (``check_embed_inputs``) before
    the store is written to. The manifest a check kept in ``context`` (default: the one
    the caller opened, ``run_context``) is used, and the claim taken is kept there.
    """
    context = context or current_context()
    started = time.perf_counter()
    backbone, layers, manifest = checked_inputs(config, context)
    checked_seconds = time.perf_counter() - started
    identity = identity_of(config, backbone, layers, manifest)
    complete = _plan_if_complete(config, identity, started, context)
    if complete is not None:
        return replace(complete, seconds={"check": checked_seconds, **complete.seconds})
    store = open_store(config.store, config.storage_options)
    key = identity.key
    if not take_claim(context, store, key, identity.lineage):  # another run completed it
        complete = _plan_if_complete(config, identity, started, context)
        assert complete is not None
        return replace(complete, seconds={"check": checked_seconds, **complete.seconds})
    status = store.status(key)
    spec = new_spec(config, backbone, layers, manifest, identity)
    if status == "missing":
        store.create(spec, manifest.table)
    elif status == "incomplete":
        store.recover(key)
    spec = store.spec(key)  # where its rows live: shared, appended (kept on a resume)
    pending = store.pending_shards(key)
    embedder = _embedder(config, backbone, layers, identity)
    donors = reusable_rows(store, spec) if pending else Donors()
    tasks = shard_tasks(config, spec, store, manifest, pending, donors, embedder)
    already = spec.n_shards - len(set(pending) & set(spec.new_shards))
    logger.info(
        "feature set %s: %d images of %s through %s at %d px (layers %s), %s; "
        "lineage %s: %d new contents appended, %d rows shared with its earlier versions; "
        "%d shards to write, %d already written, %d rows to copy from other lineages",
        key,
        spec.rows,
        spec.source,
        spec.backbone,
        identity.preprocessing.image_size,
        ", ".join(spec.layers),
        status,
        spec.lineage,
        spec.appended,
        spec.rows - spec.appended,
        len(tasks),
        already,
        sum(len(task.reuse) for task in tasks),
    )
    return EmbedPlan(
        config=config,
        spec=spec,
        status_before=status,
        tasks=tasks,
        shards_already_done=already,
        seconds={"check": checked_seconds, "prepare": time.perf_counter() - started},
        context=context,
    )


def _embedder(
    config: EmbedConfig, backbone: BackboneSpec, layers: Sequence[str], identity: Identity
) -> EmbedderConfig:
    """What each shard's worker builds to embed: the run's model, layers and device."""
    return EmbedderConfig(
        backbone=backbone.id,
        weights_file=backbone.weights_file,  # made absolute: workers may run elsewhere
        layers=tuple(layers),
        preprocessing=identity.preprocessing,
        device=config.device,
        autocast=config.autocast,
        threads=plan_cluster(config.dask_address, config.workers).torch_threads,
        compile=config.compile,
        weights_digest=identity.weights_digest,
        stores=backbone.stores,  # the run's store: where a finetuned/<run> id is published
    )
