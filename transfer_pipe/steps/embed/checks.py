"""The checks before an embed run writes anything: backbone, layers, device, source and
store; the source's manifest they load, with its content hashes cached in the store; and
the model the driver builds to check layers and measure their widths."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from transfer_pipe.backbones import BackboneSpec
from transfer_pipe.cluster import plan_cluster, resolve_device
from transfer_pipe.config import EmbedConfig
from transfer_pipe.data.device_decode import check_decode_device, decodes_on_device
from transfer_pipe.data.manifest import Manifest
from transfer_pipe.data.sources import check_source, load_manifest, source_cache_id
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.files import check_writable_without_writing
from transfer_pipe.run_context import RunContext, current_context
from transfer_pipe.steps.embed.identity import identity_of, known_lineage, run_backbone
from transfer_pipe.store import FeatureStore, open_store
from transfer_pipe.store.hash_cache import CACHE_FOLDER, HashCache
from transfer_pipe.store.layout import FOREIGN_FOLDERS

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)


def check_embed_inputs(
    config: EmbedConfig, *, dry_run: bool = False, context: RunContext | None = None
) -> tuple[BackboneSpec, list[str], Manifest]:
    """Fail fast, before any orchestration starts and before anything is written, on the
    mistakes a user makes most: an unknown backbone or layer, a weights file that does not
    fit, a missing dataset or one whose content cannot be read (an empty folder, a manifest
    without its columns or naming missing files), a store that cannot be written. Returns
    the backbone, the resolved layer names and the (limited) manifest.

    The model is built (which checks the layers, and that a ``--weights-file`` fits the
    backbone) unless the store holds the run's feature set complete: it was checked then.
    The manifest is handed to the run that follows in ``context`` (default: the one the
    caller opened, ``run_context``). ``dry_run`` checks the store without its one write
    (the probe that may create its folder) and hands no manifest on: a dry run leaves no
    trace."""
    backbone = run_backbone(config)
    _check_device_here(config)
    check_source(config.source)
    hashes = source_hash_cache(config)
    manifest = load_manifest(config.source, hashes=hashes).limit(config.limit)
    layers = backbone.layer_names(config.layers)
    store = open_store(config.store, config.storage_options)
    identity = identity_of(config, backbone, layers, manifest)
    _check_device_decode_here(config, identity.preprocessing.decode)
    if store.status(identity.key) != "complete" and known_lineage(store, identity) is None:
        layers = model_layers(backbone, config.layers)  # a new lineage: check its layers
    if dry_run:
        check_writable_without_writing(config.store)
        return backbone, layers, manifest
    store.ensure_writable()  # last: it may create the store's folder
    _save_hashes(store, hashes)
    (context or current_context()).keep_manifest(config, manifest)
    return backbone, layers, manifest


def checked_inputs(
    config: EmbedConfig, context: RunContext
) -> tuple[BackboneSpec, list[str], Manifest]:
    """``check_embed_inputs``, reusing the manifest a check just kept in ``context``."""
    manifest = context.take_manifest(config)
    if manifest is None:
        checked = check_embed_inputs(config, context=context)
        context.take_manifest(config)  # this run's own listing: not for the next one
        return checked
    backbone = run_backbone(config)
    return backbone, backbone.layer_names(config.layers), manifest


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


@functools.lru_cache(maxsize=1)
def _driver_model(backbone: BackboneSpec) -> nn.Module:
    """The model the driver inspects (layer names, widths), built once per process."""
    return backbone.build()


def model_layers(backbone: BackboneSpec, requested: Sequence[str]) -> list[str]:
    """The requested layers, checked against the built model."""
    from transfer_pipe.backbones.taps import resolve_layers

    return resolve_layers(backbone, _driver_model(backbone), list(requested))


def layer_widths(backbone: BackboneSpec, layers: Sequence[str], image_size: int) -> dict[str, int]:
    """Each of ``layers``' feature width at ``image_size``, measured on the built model."""
    from transfer_pipe.backbones.taps import layer_widths as measured

    return measured(_driver_model(backbone), layers, image_size)
