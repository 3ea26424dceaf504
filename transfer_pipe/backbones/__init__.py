"""Backbones: string ids -> specs (weights, preprocessing, metadata), builds, layer taps.

Example::

    spec = get_backbone("efficientnet_lite0.in1k")
    model = spec.build()
    with LayerTap(model, resolve_layers(spec, model, ["stages"])) as tap:
        features = tap(batch)  # {"stages.0": Tensor[B, 16], ..., "stages.6": Tensor[B, 320]}
"""

from transfer_pipe.backbones import (  # noqa: F401  (registers ids)
    builtin,
    published,
    torchvision_backbones,
)
from transfer_pipe.backbones.builtin import EFFICIENTNET_LITE0, TINY_TEST
from transfer_pipe.backbones.preprocessing import Preprocessing
from transfer_pipe.backbones.published import publish_backbone
from transfer_pipe.backbones.registry import (
    BackboneEntry,
    BackboneSpec,
    get_backbone,
    list_backbones,
    register,
)
from transfer_pipe.backbones.taps import PENULTIMATE, STAGES, LayerTap, resolve_layers

__all__ = [
    "EFFICIENTNET_LITE0",
    "PENULTIMATE",
    "STAGES",
    "TINY_TEST",
    "BackboneEntry",
    "BackboneSpec",
    "LayerTap",
    "Preprocessing",
    "get_backbone",
    "list_backbones",
    "publish_backbone",
    "register",
    "resolve_layers",
]
