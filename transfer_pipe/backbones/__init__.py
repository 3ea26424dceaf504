"""Backbones: string ids -> specs (weights, preprocessing, metadata), builds, layer taps.

Example::

    from transfer_pipe.backbones.taps import LayerTap, resolve_layers

    spec = get_backbone("efficientnet_lite0.in1k")
    model = spec.build()
    with LayerTap(model, resolve_layers(spec, model, ["stages"])) as tap:
        features = tap(batch)  # {"stages.0": Tensor[B, 16], ..., "stages.6": Tensor[B, 320]}

This package imports without torch (specs, digests and layer names need none); the
layer taps (``backbones.taps``) and the networks import it when a model is built.
"""

from transfer_pipe.backbones import builtin, published  # noqa: F401  (registers ids)
from transfer_pipe.backbones.builtin import EFFICIENTNET_LITE0, TINY_TEST, random_variant
from transfer_pipe.backbones.published import publish_backbone
from transfer_pipe.backbones.registry import (
    PENULTIMATE,
    STAGES,
    BackboneEntry,
    BackboneSpec,
    StoreLocation,
    get_backbone,
    list_backbones,
    register,
)
from transfer_pipe.preprocessing import Preprocessing

__all__ = [
    "EFFICIENTNET_LITE0",
    "PENULTIMATE",
    "STAGES",
    "TINY_TEST",
    "BackboneEntry",
    "BackboneSpec",
    "Preprocessing",
    "StoreLocation",
    "get_backbone",
    "list_backbones",
    "publish_backbone",
    "random_variant",
    "register",
]
