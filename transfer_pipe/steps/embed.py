"""One function per pipeline step: what the flows call, each usable without Prefect.

    plan = prepare_embedding(config)           # manifest, key, store check, pending shards
    results = compute_shards(plan)             # Dask: only the shards not yet written
    summary = finalize_embedding(plan, results)

Every step is idempotent: rerunning after a crash, or on unchanged data, redoes nothing
that the store already holds. A run whose feature set the store holds complete answers
from the registry, the manifest and the store alone: the model is not built, and torch,
the shard code and Dask are not imported (seconds that a nightly rerun would pay for
nothing). They are imported where the first shard is planned.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.metadata
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from transfer_pipe.backbones import BackboneSpec, Preprocessing, get_backbone
from transfer_pipe.backbones.published import use_store
from transfer_pipe.cluster import plan_cluster, resolve_device
from transfer_pipe.config import EmbedConfig
from transfer_pipe.data.device_decode import check_decode_device, decodes_on_device
from transfer_pipe.data.manifest import Manifest
from transfer_pipe.data.sources import check_source, load_manifest, source_cache_id
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.features.tasks import (
    EmbedderConfig,
    Reuse,
    ShardCopy,
    ShardResult,
    ShardTask,
    run_shard,
)
from transfer_pipe.files import check_writable_without_writing
from transfer_pipe.schema import CONTENT_HASH, FAILURE, SAMPLE_ID, URI
from transfer_pipe.steps.failures import StepFailed, failure_report
from transfer_pipe.steps.results import EmbedSummary
from transfer_pipe.store import (
    FeatureSetSpec,
    FeatureStore,
    LineageSpec,
    embedding_key,
    feature_set_key,
    lineage_id,
    open_store,
)
from transfer_pipe.store.claims import Holder, every
from transfer_pipe.store.hash_cache import CACHE_FOLDER, HashCache
from transfer_pipe.store.layout import FOREIGN_FOLDERS, ROW, shareable

if TYPE_CHECKING:
    from torch import nn

    from transfer_pipe.store.claims import Claim

logger = logging.getLogger(__name__)
ProgressCallback = Callable[[int, int], None]
_LIBRARIES = ("transfer-pipe", "torch", "torchvision", "numpy", "zarr", "dask", "pillow")


@dataclass(frozen=True)
class EmbedPlan:
    """What an embed run will do; built before any image is touched."""

    config: EmbedConfig
    spec: FeatureSetSpec
    status_before: str  # "missing" | "incomplete" | "complete"
    tasks: list[ShardTask]
    shards_already_done: int  # by an earlier, interrupted run of the same feature set
    seconds: dict[str, float] = field(default_factory=dict)


def run_backbone(config: EmbedConfig) -> BackboneSpec:
    """The run's backbone; a published ``finetuned/<run>`` id is looked up in the run's
    store too (where it is registered), so it resolves on any machine."""
    use_store(config.store, config.storage_options)
    return get_backbone(config.backbone, config.weights_file)


def check_embed_inputs(
    config: EmbedConfig, *, dry_run: bool = False
) -> tuple[BackboneSpec, list[str], Manifest]:
    """Fail fast, before any orchestration starts and before anything is written, on the
    mistakes a user makes most: an unknown backbone or layer, a weights file that does not
    fit, a missing dataset or one whose content cannot be read (an empty folder, a manifest
    without its columns or naming missing files), a store that cannot be written. Returns
    the backbone, the resolved layer names and the (limited) manifest.

    The model is built (which checks the layers, and that a ``--weights-file`` fits the
    backbone) unless the store holds the run's feature set complete: it was checked then.
    ``dry_run`` checks the store without its one write (the probe that may create its
    folder) and hands no manifest to a run: a dry run leaves no trace."""
    backbone = run_backbone(config)
    _check_device_here(config)
    check_source(config.source)
    hashes = source_hash_cache(config)
    manifest = load_manifest(config.source, hashes=hashes).limit(config.limit)
    layers = backbone.layer_names(config.layers)
    store = open_store(config.store, config.storage_options)
    identity = identity_of(config, backbone, layers, manifest)
    _check_device_decode_here(config, identity.preprocessing.decode)
    if store.status(identity.key) != "complete" and _lineage(store, identity) is None:
        layers = _model_layers(backbone, config.layers)  # a new lineage: check its layers
    if dry_run:
        check_writable_without_writing(config.store)
        return backbone, layers, manifest
    store.ensure_writable()  # last: it may create the store's folder
    _save_hashes(store, hashes)
    _checked_manifests[config] = manifest
    while len(_checked_manifests) > 4:  # only the runs about to start; never a cache
        del _checked_manifests[next(iter(_checked_manifests))]
    return backbone, layers, manifest


def _check_device_here(config: EmbedConfig) -> None:
    """``--autocast fp16`` or ``--compile`` on a local run without CUDA fails here, before
    anything is written (on a cluster each worker checks its own device)."""
    if not (config.autocast == "fp16" or config.compile) or _on_cluster(config):
        return
    from transfer_pipe.features.embedder import check_autocast  # torch: for this choice only

    device = resolve_device(config.device)
    check_autocast(config.autocast, device)
    if config.compile and device.type != "cuda":
        raise TransferPipeError(
            f"--compile compiles the model on a CUDA device; this run's device is "
            f"{device.type}: leave --compile out (the same feature set, eager)"
        )


def _check_device_decode_here(config: EmbedConfig, decode: str) -> None:
    """``--decode nvjpeg`` on a local run without CUDA fails here, before anything is
    written (``decode``: the run's, after its source is known: a folder without JPEGs
    decodes in full whatever the option says)."""
    if not decodes_on_device(decode) or _on_cluster(config):
        return
    check_decode_device(decode, resolve_device(config.device))


def _on_cluster(config: EmbedConfig) -> bool:
    return plan_cluster(config.dask_address, None).address is not None


# The manifest a check just loaded, taken (once) by the run that follows it in the same
# process, so a source is listed and hashed once, not twice. Taken, not kept: a long-lived
# process (a worker running scheduled runs) lists the source afresh every run.
_checked_manifests: dict[EmbedConfig, Manifest] = {}


def _checked(config: EmbedConfig) -> tuple[BackboneSpec, list[str], Manifest]:
    """``check_embed_inputs``, reusing the manifest of a check just made for ``config``."""
    manifest = _checked_manifests.pop(config, None)
    if manifest is None:
        checked = check_embed_inputs(config)
        _checked_manifests.pop(config, None)  # this run's own listing: not for the next one
        return checked
    backbone = run_backbone(config)
    return backbone, backbone.layer_names(config.layers), manifest


def source_hash_cache(config: EmbedConfig) -> HashCache | None:
    """The store's cache of ``config.source``'s content hashes (``store.hash_cache``), so
    files unchanged since a run that listed them are not read again (all are with
    ``rehash``); None for sources hashed from memory (IDX, ``fashion-mnist``)."""
    cache_id = source_cache_id(config.source)
    if cache_id is None:
        return None
    store = open_store(config.store, config.storage_options)
    return store.hash_cache(cache_id, rehash=config.rehash)


def _save_hashes(store: FeatureStore, hashes: HashCache | None) -> None:
    """Keep this run's content hashes in the store (only once it is known writable); the
    first time, mark the cache folder as not Zarr data, as ``create`` marks it too."""
    if hashes is None:
        return
    logger.info(
        "content hashes: %d files read, %d recognised unchanged (by size and "
        "modification time; --rehash reads them all)",
        hashes.misses,
        hashes.hits,
    )
    if hashes.save():
        try:
            store.note_folder(CACHE_FOLDER, FOREIGN_FOLDERS[CACHE_FOLDER])
        except Exception as err:  # the next run's create() marks it; never fail a run
            logger.warning("could not mark %s/ in %s (%s)", CACHE_FOLDER, store.url, err)


@dataclass(frozen=True)
class Identity:
    """What determines a run's embeddings, known without building the model."""

    key: str
    embedding_key: str
    weights_digest: str
    data_digest: str
    preprocessing: Preprocessing
    lineage: str  # the source's embeddings under this model configuration


def identity_of(
    config: EmbedConfig, backbone: BackboneSpec, layers: Sequence[str], manifest: Manifest
) -> Identity:
    preprocessing = backbone.preprocessing
    if config.image_size is not None:
        preprocessing = preprocessing.replace(image_size=config.image_size)
    # The decode mode changes only a JPEG's pixels: a source without one keeps a full
    # decode's key (the same features whatever the option says). Colour management
    # changes only image files' pixels: an IDX source keeps the key it always had.
    preprocessing = preprocessing.replace(
        decode=config.decode if manifest.has_jpeg else "full",
        colour="srgb" if manifest.has_image_files else "stored",
    )
    weights_digest = backbone.weights_digest()
    emb_key = embedding_key(
        backbone.id, weights_digest, preprocessing.to_dict(), config.dtype, config.autocast
    )
    data_digest = manifest.digest()
    return Identity(
        key=feature_set_key(emb_key, list(layers), data_digest),
        embedding_key=emb_key,
        weights_digest=weights_digest,
        data_digest=data_digest,
        preprocessing=preprocessing,
        lineage=lineage_id(manifest.source, emb_key, list(layers)),
    )


def _lineage(store: FeatureStore, identity: Identity) -> LineageSpec | None:
    """The lineage the run's version joins, when the store has it: its layers were checked
    and measured when it was made, so a night need not build the model for them."""
    try:
        return store.lineage_spec(identity.lineage)
    except TransferPipeError:
        return None


def complete_plan(config: EmbedConfig) -> EmbedPlan | None:
    """The (empty) plan of a run whose feature set the store holds complete, found from the
    registry, the manifest and the store alone, writing nothing; None when there is work
    to do."""
    started = time.perf_counter()
    backbone = run_backbone(config)
    check_source(config.source)
    manifest = load_manifest(config.source, hashes=source_hash_cache(config)).limit(config.limit)
    layers = backbone.layer_names(config.layers)
    return _plan_if_complete(config, identity_of(config, backbone, layers, manifest), started)


def _plan_if_complete(config: EmbedConfig, identity: Identity, started: float) -> EmbedPlan | None:
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
    return EmbedPlan(config, spec, "complete", [], spec.n_shards, seconds)


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
    lineage = _lineage(store, identity)
    widths = (
        dict(lineage.layer_dims)
        if lineage is not None
        else _layer_widths(backbone, layers, identity.preprocessing.image_size)
    )
    return FeatureSetSpec(
        key=identity.key,
        embedding_key=identity.embedding_key,
        source=manifest.source,
        backbone=backbone.id,
        weights_digest=identity.weights_digest,
        weights_file=backbone.weights_file,
        preprocessing=identity.preprocessing.to_dict(),
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


def prepare_embedding(config: EmbedConfig) -> EmbedPlan:
    """Resolve the feature-set key and plan the shards still to write.

    Everything that can be wrong with the input is checked (``check_embed_inputs``) before
    the store is written to.
    """
    started = time.perf_counter()
    backbone, layers, manifest = _checked(config)
    checked_seconds = time.perf_counter() - started
    identity = identity_of(config, backbone, layers, manifest)
    complete = _plan_if_complete(config, identity, started)
    if complete is not None:
        return replace(complete, seconds={"check": checked_seconds, **complete.seconds})
    store = open_store(config.store, config.storage_options)
    key = identity.key
    if not _claim(store, key, identity.lineage):  # another run completed it meanwhile
        complete = _plan_if_complete(config, identity, started)
        assert complete is not None
        return replace(complete, seconds={"check": checked_seconds, **complete.seconds})
    status = store.status(key)
    preprocessing = identity.preprocessing
    spec = new_spec(config, backbone, layers, manifest, identity)
    if status == "missing":
        store.create(spec, manifest.table)
    elif status == "incomplete":
        store.recover(key)
    spec = store.spec(key)  # where its rows live: shared, appended (kept on a resume)
    pending = store.pending_shards(key)
    embedder = EmbedderConfig(
        backbone=backbone.id,
        weights_file=backbone.weights_file,  # made absolute: workers may run elsewhere
        layers=tuple(layers),
        preprocessing=preprocessing,
        device=config.device,
        autocast=config.autocast,
        threads=plan_cluster(config.dask_address, config.workers).torch_threads,
        compile=config.compile,
        weights_digest=identity.weights_digest,
    )
    donors = reusable_rows(store, spec) if pending else Donors()
    tasks = _shard_tasks(config, spec, store, manifest, pending, donors, embedder)
    already = spec.n_shards - len(set(pending) & set(spec.new_shards))
    logger.info(
        "feature set %s: %d images of %s through %s at %d px (layers %s), %s; "
        "lineage %s: %d new contents appended, %d rows shared with its earlier versions; "
        "%d shards to write, %d already written, %d rows to copy from other lineages",
        key,
        spec.rows,
        spec.source,
        spec.backbone,
        preprocessing.image_size,
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
    )


# The claims this process holds, by (store, feature set): taken by prepare_embedding,
# given back by finalize_embedding or release_claim (a plan crosses Prefect tasks, which
# may pickle it; a claim's heartbeat thread cannot travel with it).
_claims: dict[tuple[str, str], Claim] = {}


def _claim(store: FeatureStore, key: str, lineage: str) -> bool:
    """Take the claim of ``lineage`` to write its version ``key``, waiting while another
    run holds it (``store.claims``); False when that run completed ``key`` meanwhile:
    nothing to write. (Another version of the lineage it completed becomes the parent.)"""
    if (store.url, key) in _claims and _claims[store.url, key].held:
        return True  # a retried prepare task of this same run

    def waiting(holder: Holder) -> None:
        status = store.status(key)
        written = int(store.shards_done(key).sum()) if status == "incomplete" else 0
        logger.warning(  # the run stands still: say why, where a user looks
            "lineage %s of feature set %s is being written by another run (%s; %d shards "
            "written so far): waiting for it, to reuse what it writes",
            lineage,
            key,
            holder.describe(),
            written,
        )

    claim = store.claim(
        lineage, done=lambda: store.status(key) == "complete", waiting=every(30, waiting)
    )
    if claim is None:
        return False
    _claims[store.url, key] = claim
    return True


def release_claim(plan: EmbedPlan) -> None:
    """Give back the claim ``prepare_embedding`` took for ``plan`` (if this process still
    holds it): a run that stops for any reason lets the next one go on at once."""
    claim = _claims.pop((plan.config.store, plan.spec.key), None)
    if claim is not None:
        claim.release()


def _shard_tasks(
    config: EmbedConfig,
    spec: FeatureSetSpec,
    store: FeatureStore,
    manifest: Manifest,
    pending: Sequence[int],
    donors: Donors,
    embedder: EmbedderConfig,
) -> list[ShardTask]:
    """One task per lineage shard still to write, the embed-heaviest first (copy-only
    shards then fill the gaps at the end). A shard whose images a shard of another lineage
    holds in the same order (``Donors.shards``) copies that shard's objects whole; others
    copy the rows other lineages hold by content hash, and embed the rest.

    A shard's rows are the version's rows that live in it. A shard a repair cleared may
    also hold rows only other versions of the lineage name: their images are read again
    from those versions' URIs, each checked against its content hash (a file changed or
    gone since, or a row no version names, is written as lost)."""
    run = uuid.uuid4().hex  # one store handle per run in each worker
    table = store.row_table(spec.key, columns=(SAMPLE_ID, URI))
    # The version's content is the manifest's (the same key): its hashes by sample id.
    content = manifest.table.set_index(SAMPLE_ID)[CONTENT_HASH].astype(str)
    table[CONTENT_HASH] = content.reindex(table[SAMPLE_ID]).to_numpy()
    table = table.drop_duplicates(ROW).set_index(ROW)  # shared contents: one row each
    table["foreign"] = False
    rewritten = [shard for shard in pending if not spec.shard_rows(shard)]
    written: pd.DataFrame = pd.DataFrame()
    if rewritten:  # cleared by a repair, or written with rows a repair lost
        table = _with_rows_of_other_versions(store, spec, table, set(rewritten))
        written = shareable(store.lineage_rows(spec.lineage))  # rows to keep as they are
    layer_dims = tuple((layer, spec.layer_dims[layer]) for layer in spec.layers)
    tasks = []
    for shard in pending:
        start = shard * spec.shard_size
        appended = spec.shard_rows(shard)
        if appended:
            used = len(appended)
        else:  # up to the last row any version names
            mine = table.index[(table.index >= start) & (table.index < start + spec.shard_size)]
            used = int(mine.max()) - start + 1
        rows = table.reindex(range(start, start + used))
        uris = tuple("" if isinstance(u, float) else str(u) for u in rows[URI].tolist())
        hashes = ["" if isinstance(h, float) else str(h) for h in rows[CONTENT_HASH].tolist()]
        foreign = tuple(f is True for f in rows["foreign"].tolist())
        # A written shard rewritten for rows a repair lost: the others keep their values.
        kept = {} if written.empty else _kept_rows(written, start, used)
        reuse = tuple(
            Reuse(offset, spec.lineage, kept[offset])
            if offset in kept
            else Reuse(offset, *donors[content])
            for offset, content in enumerate(hashes)
            if offset in kept or content in donors
        )
        aligned = donors.shards.get((spec.shard_size, _shard_digest(hashes)))
        tasks.append(
            ShardTask(
                store=config.store,
                storage_options=config.storage_options,
                key=spec.key,
                shard=shard,
                uris=uris,
                hashes=tuple(hashes),
                reuse=reuse,
                embedder=embedder,
                layer_dims=layer_dims,
                batch_size=config.batch_size,
                decoders=config.decoders,
                copy=None if aligned is None else ShardCopy(*aligned),
                foreign=foreign,
                run=run,
            )
        )
    return sorted(tasks, key=lambda task: len(task.reuse))


def _with_rows_of_other_versions(
    store: FeatureStore, spec: FeatureSetSpec, table: pd.DataFrame, shards: set[int]
) -> pd.DataFrame:
    """``table`` (by lineage row: uri, content_hash) with the rows in ``shards`` that only
    other versions of the lineage name, with their URIs and content hashes."""
    found = [table]
    for key in store.list_keys():
        if key == spec.key or store.spec(key).lineage != spec.lineage:
            continue
        other = store.row_table(key, columns=(URI, CONTENT_HASH)).drop_duplicates(ROW)
        inside = np.isin(other[ROW].to_numpy() // spec.shard_size, list(shards))
        named = other.loc[inside & (other[CONTENT_HASH] != ""), [ROW, URI, CONTENT_HASH]]
        found.append(named.set_index(ROW).assign(foreign=True))
    merged = pd.concat(found)
    return merged[~merged.index.duplicated(keep="first")]


def _kept_rows(written: pd.DataFrame, start: int, used: int) -> dict[int, int]:
    """Offset -> lineage row of the good rows already written in the shard at ``start``:
    a rewrite copies them as they are."""
    rows = written.index[(written.index >= start) & (written.index < start + used)]
    good = written.loc[rows, FAILURE] == ""
    return {int(row) - start: int(row) for row in rows[good.to_numpy()]}


class Donors(dict[str, tuple[str, int]]):
    """content_hash -> (lineage, row) of good rows other lineages hold, and in ``shards``:
    (shard size, ``_shard_digest`` of a shard's content hashes in order) -> (lineage,
    shard) for their written shards without failed rows."""

    def __init__(self) -> None:
        super().__init__()
        self.shards: dict[tuple[int, str], tuple[str, int]] = {}


def _shard_digest(hashes: Sequence[str]) -> str:
    """One digest of a shard's content hashes in row order."""
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def reusable_rows(store: FeatureStore, spec: FeatureSetSpec) -> Donors:
    """content_hash -> (lineage, row) for good rows of other lineages that share this
    version's embedding key (model, weights, preprocessing, dtype) and hold its layers,
    and their whole shards (``Donors``)."""
    return cached_rows(store, spec.embedding_key, spec.layers, exclude=spec.lineage)


def cached_rows(
    store: FeatureStore, embedding_key: str, layers: Sequence[str], exclude: str | None = None
) -> Donors:
    """content_hash -> (lineage, row) for every good, written row of the store's lineages
    with ``embedding_key`` that hold all of ``layers`` (but lineage ``exclude``); and their
    written shards without failed rows, by content (``Donors.shards``)."""
    donors = Donors()
    for lineage in store.lineages():
        if lineage.lineage == exclude:
            continue
        if lineage.embedding_key != embedding_key or not set(layers) <= set(lineage.layers):
            continue
        rows = store.lineage_rows(lineage.lineage)
        good = rows[rows[FAILURE] == ""]
        for content_hash, row in zip(good[CONTENT_HASH], good.index, strict=True):
            donors.setdefault(str(content_hash), (lineage.lineage, int(row)))
        shard_of = rows.index.to_numpy() // lineage.shard_size
        for shard in np.unique(shard_of).tolist():
            mine = rows[shard_of == shard]
            if (mine[FAILURE] == "").all():
                digest = _shard_digest(mine[CONTENT_HASH].astype(str).tolist())
                donors.shards.setdefault((lineage.shard_size, digest), (lineage.lineage, shard))
    return donors


def compute_shards(
    plan: EmbedPlan, on_progress: Sequence[ProgressCallback] = ()
) -> list[ShardResult]:
    """Run the pending shards on Dask; returns one small summary per shard written."""
    if not plan.tasks:
        return []
    from distributed import as_completed
    from tqdm import tqdm

    from transfer_pipe.cluster import cluster_resources, dask_client

    cluster = plan_cluster(plan.config.dask_address, plan.config.workers)
    results: list[ShardResult] = []
    total = len(plan.tasks)
    with (
        dask_client(cluster) as client,
        tqdm(total=total, unit="shard", desc=f"embed {plan.spec.key}") as bar,
    ):
        # Checked before submitting: a resource no worker offers would wait forever.
        resources = cluster_resources(client, cluster, plan.config.device)
        futures = client.map(
            run_shard,
            plan.tasks,
            key=[f"shard-{plan.spec.key}-{t.shard}" for t in plan.tasks],
            resources=resources or None,
        )
        shard_of = {f.key: t.shard for f, t in zip(futures, plan.tasks, strict=True)}
        try:
            for future in as_completed(futures):
                results.append(_shard_result(future, shard_of[future.key], plan))
                bar.update(1)
                for callback in on_progress:
                    callback(len(results), total)
        except (Exception, asyncio.CancelledError) as exc:
            # The scheduler's loss surfaces, by timing, as a cancelled future, a closed
            # comm or a cancelled wait: whichever it is, a client cut off from its
            # scheduler means the run cannot go on (a retry would only wait to connect).
            if isinstance(exc, TransferPipeError) or not _cut_off(client):
                raise
            written = {r.shard for r in results}
            pending = next(t.shard for t in plan.tasks if t.shard not in written)
            raise TransferPipeError(_lost_message(plan, pending)) from exc
    logger.info(
        "feature set %s: %d shards written, %d images embedded, %d copied, %d failed",
        plan.spec.key,
        len(results),
        sum(r.embedded for r in results),
        sum(r.reused for r in results),
        sum(r.failed for r in results),
    )
    return sorted(results, key=lambda r: r.shard)


def _cut_off(client: Any, wait_s: float = 5.0) -> bool:
    """Whether ``client`` lost its scheduler. The error that reports the loss can reach
    the driver before the client's own status changes (seen on a loaded machine, where a
    task retry then waited 30 s to connect and reported that instead), so a running
    status is given ``wait_s`` to change."""
    deadline = time.monotonic() + wait_s
    while client.status == "running":
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _lost_message(plan: EmbedPlan, shard: int) -> str:
    return (
        f"lost the Dask scheduler at {plan_cluster(plan.config.dask_address, 0).address} "
        f"while shard {shard} of feature set {plan.spec.key} was pending: the run "
        "stops. Shards already written are kept; restart the scheduler and its "
        "workers and run again to resume from them."
    )


def _shard_result(future: Any, shard: int, plan: EmbedPlan) -> ShardResult:
    """The shard's summary, or ``StepFailed`` naming the shard and the cause (a user's
    mistake, ``TransferPipeError``, passes as it is). The shards written before stay
    written: the next run resumes from them."""
    from transfer_pipe.cluster import lost_scheduler

    try:
        result: ShardResult = future.result()
    except TransferPipeError:
        raise
    except Exception as exc:
        if lost_scheduler(exc):  # not transient: no retry can reach the lost scheduler
            raise TransferPipeError(_lost_message(plan, shard)) from exc
        raise StepFailed(
            f"shard {shard} of {plan.spec.n_shards} (rows {plan.spec.shard_rows(shard).start}-"
            f"{plan.spec.shard_rows(shard).stop - 1}) of feature set {plan.spec.key} failed: "
            f"{type(exc).__name__}: {exc}. Shards already written are kept; run again to "
            "resume from them."
        ) from exc
    return result


def finalize_embedding(plan: EmbedPlan, results: Sequence[ShardResult]) -> EmbedSummary:
    """Mark the feature set complete (once every shard is written) and summarize the run."""
    store = open_store(plan.config.store, plan.config.storage_options)
    key = plan.spec.key
    if plan.status_before == "complete":
        failed = store.failed_count(key)
        if failed:
            logger.warning(
                "feature set %s: %d of its %d images failed when it was made; the run's "
                "failures table and `transfer-pipe show %s` list them",
                key,
                failed,
                plan.spec.rows,
                key,
            )
        return _summary(plan, results, failed, store.noted_count(key), "complete")
    stats = store.shard_stats(key)
    failures = failure_report(store, key, limit=0)
    failed = failures.total
    if failed:
        logger.warning(
            "feature set %s: %s, out of %d images; the run's failures table and "
            "`transfer-pipe show %s` list them",
            key,
            failures.message,
            plan.spec.rows,
            key,
        )
    if failures.noted:
        logger.warning(
            "feature set %s: %s; the failures table's notes and `transfer-pipe show %s` "
            "say which and why",
            key,
            failures.note_message,
            key,
        )
    claim = _claims.get((store.url, key))
    if claim is not None and not claim.held:
        # It stalled past its claim's expiry and another run took over: that run marks
        # the feature set complete (one writer of its attributes).
        logger.warning("feature set %s: another run took over its claim; it completes it", key)
    elif store.status(key) != "complete":
        store.mark_complete(
            key,
            {
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                "libraries": library_versions(),
                # Where the forward passes ran: a dry run's time estimate matches on it.
                "device": _device_name(plan.config.device, results),
                "counts": {
                    "rows": plan.spec.rows,
                    "failed": failed,
                    "noted": failures.noted,
                    "embedded": int(stats["embedded"].sum()),
                    "reused_from_other_sets": int(stats["reused"].sum()),
                },
                "seconds": {**plan.seconds, "shards": float(stats["seconds"].sum())},
            },
        )
    release_claim(plan)
    return _summary(plan, results, failed, failures.noted, store.status(key))


def _device_name(requested: str, results: Sequence[ShardResult]) -> str:
    """``cpu`` or ``cuda``: where this run's forward passes ran, as its workers said; for
    a run that ran none (its shards written by an earlier attempt, or copied), what
    ``requested`` (``auto`` included) resolves to here."""
    ran = {r.device for r in results if r.device}
    if ran:
        return "cuda" if "cuda" in ran else ran.pop()
    if requested != "auto":
        return requested.split(":", 1)[0]
    return resolve_device(requested).type  # imports torch: rare (a resume with no work)


def _summary(
    plan: EmbedPlan, results: Sequence[ShardResult], failed: int, noted: int, status: str
) -> EmbedSummary:
    """What the run did, in numbers."""
    embedded = sum(r.embedded for r in results)
    return EmbedSummary(
        feature_set=plan.spec.key,
        store=plan.config.store,
        source=plan.spec.source,
        backbone=plan.spec.backbone,
        layers=list(plan.spec.layers),
        rows=plan.spec.rows,
        failed=failed,
        embedded=embedded,
        reused=plan.spec.rows - failed - embedded,
        shards=plan.spec.n_shards,
        shards_computed=len(results),
        shards_already_done=plan.shards_already_done,
        status_before=plan.status_before,
        steady_images_per_s=steady_rate(results),
        status=status,
        noted=noted,
    )


def embed_message(summary: EmbedSummary) -> str:
    """One line on what an embed run did, e.g. ``feature set 3f..: 18 images embedded, 0
    reused; 4 images failed (see the failures table)``."""
    message = (
        f"feature set {summary.feature_set}: {summary.embedded} images embedded, "
        f"{summary.reused} reused"
    )
    if summary.failed:
        images = "image" if summary.failed == 1 else "images"
        message += f"; {summary.failed} {images} failed (see the failures table)"
    return message


def embed(config: EmbedConfig, on_progress: Sequence[ProgressCallback] = ()) -> EmbedSummary:
    """The whole embed pipeline without an orchestrator (notebooks, tests)."""
    plan = prepare_embedding(config)
    try:
        return finalize_embedding(plan, compute_shards(plan, on_progress))
    finally:
        release_claim(plan)


def steady_rate(results: Sequence[ShardResult]) -> float | None:
    """Images/s once the workers are warm: rows finished after the first shard completed."""
    if len(results) < 2:
        return None
    ordered = sorted(results, key=lambda r: r.finished)
    span = ordered[-1].finished - ordered[0].finished
    rows = sum(r.rows for r in ordered[1:])
    return rows / span if span > 0 else None


def library_versions(names: Sequence[str] = _LIBRARIES) -> dict[str, str]:
    """Installed version of each distribution in ``names`` (provenance, model cards)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@functools.lru_cache(maxsize=1)
def _driver_model(backbone: BackboneSpec) -> nn.Module:
    """The model the driver inspects (layer names, widths), built once per process."""
    return backbone.build()


def _model_layers(backbone: BackboneSpec, requested: Sequence[str]) -> list[str]:
    """The requested layers, checked against the built model."""
    from transfer_pipe.backbones.taps import resolve_layers

    return resolve_layers(backbone, _driver_model(backbone), list(requested))


def _layer_widths(backbone: BackboneSpec, layers: Sequence[str], image_size: int) -> dict[str, int]:
    from transfer_pipe.backbones.taps import layer_widths

    return layer_widths(_driver_model(backbone), layers, image_size)


__all__ = [
    "EmbedPlan",
    "compute_shards",
    "embed",
    "embed_message",
    "finalize_embedding",
    "prepare_embedding",
    "release_claim",
    "reusable_rows",
]
