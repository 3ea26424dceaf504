"""A run's identity: what determines its embeddings (the feature-set key, the lineage),
known from the registry and the manifest without building the model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transfer_pipe.backbones import BackboneSpec, Preprocessing, get_backbone
from transfer_pipe.backbones.registry import StoreLocation
from transfer_pipe.config import EmbedConfig
from transfer_pipe.data.manifest import Manifest
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.store import (
    FeatureStore,
    LineageSpec,
    embedding_key,
    feature_set_key,
    lineage_id,
)


def run_backbone(config: EmbedConfig) -> BackboneSpec:
    """The run's backbone; a published ``finetuned/<run>`` id is looked up in the run's
    store too (where it is registered), so it resolves on any machine."""
    store = StoreLocation.of(config.store, config.storage_options)
    return get_backbone(config.backbone, config.weights_file, stores=(store,))


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
    """The identity of ``config``'s run of ``backbone`` on ``layers`` over ``manifest``."""
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
        backbone.id, weights_digest, preprocessing, config.dtype, config.autocast
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


def known_lineage(store: FeatureStore, identity: Identity) -> LineageSpec | None:
    """The lineage the run's version joins, when the store has it: its layers were checked
    and measured when it was made, so a night need not build the model for them."""
    try:
        return store.lineage_spec(identity.lineage)
    except TransferPipeError:
        return None
