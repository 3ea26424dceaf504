"""Every torchvision classification model as ``torchvision/<name>[:<WEIGHTS>]``.

``torchvision/resnet18`` is the architecture with deterministic random weights;
``torchvision/resnet18:IMAGENET1K_V1`` carries torchvision's weights enum (URL,
preprocessing, metadata), downloaded on first use. Ids resolve lazily: nothing is built
at import (torchvision itself is imported on first use: it takes seconds), and a model's
structure is inspected on the meta device (no memory, no init).
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
from torch import nn

from transfer_pipe.backbones.builtin import TORCHVISION_PREFIX as PREFIX
from transfer_pipe.backbones.registry import PENULTIMATE, BackboneEntry
from transfer_pipe.backbones.taps import NHWC_LAYERS_ATTR, LayerTap
from transfer_pipe.backbones.weights import (
    DEFAULT_SEED,
    Architecture,
    RandomInit,
    file_sha256,
    seeded,
)
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

LICENSE = "BSD-3-Clause (torchvision code); pretrained weights: see the torchvision model docs"


@functools.cache
def model_names() -> tuple[str, ...]:
    """Names of torchvision's classification models (``resnet18``, ``vit_b_16``, ...)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def list_ids() -> list[str]:
    return [PREFIX + name for name in model_names()]


def _arch_kwargs(name: str, weights: WeightsEnum | None) -> dict[str, Any]:
    """Constructor arguments that make the architecture match ``weights`` (or random init)."""
    kwargs: dict[str, Any] = {}
    if name in ("googlenet", "inception_v3"):
        # Their pretrained weights expect transform_input=True (torchvision sets it when
        # loading the enum); init_weights=True keeps random init explicit and quiet.
        kwargs["init_weights"] = weights is None
        if weights is not None:
            kwargs["transform_input"] = True
    if weights is not None:
        kwargs["num_classes"] = len(weights.meta["categories"])
    return kwargs


def _tag_layouts(name: str, model: nn.Module) -> nn.Module:
    """Mark Swin's [B, H, W, C] stage outputs so LayerTap pools the right axes."""
    if name.startswith("swin"):
        features = getattr(model, "features", None)
        if isinstance(features, nn.Sequential):
            nhwc = [f"features.{n}" for n, _ in features.named_children()] + ["norm"]
            setattr(model, NHWC_LAYERS_ATTR, tuple(nhwc))
    return model


def _architecture(name: str, weights: WeightsEnum | None) -> nn.Module:
    """The architecture matching ``weights``, randomly initialised (by the caller's RNG)."""
    from torchvision.models import get_model

    return _tag_layouts(name, get_model(name, weights=None, **_arch_kwargs(name, weights)))


@functools.lru_cache(maxsize=4)
def _skeleton(name: str) -> nn.Module | None:
    """The architecture on the meta device (structure only), or None if it cannot be
    built there (regnets compute their widths with tensors)."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _architecture(name, None)
    except (NotImplementedError, RuntimeError):
        return None


def _children(module: nn.Module, prefix: str) -> list[str]:
    return [f"{prefix}.{n}" for n, _ in module.named_children()]


def stage_layers(name: str) -> list[str]:
    """Module names of the stages of torchvision model ``name``, shallow to deep."""
    if re.match(r"(resnet|resnext|wide_resnet)\d", name):
        return [f"layer{i}" for i in range(1, 5)]
    if name.startswith("regnet"):
        return [f"trunk_output.block{i}" for i in range(1, 5)]
    if name.startswith("shufflenet"):
        return ["stage2", "stage3", "stage4"]
    model = _skeleton(name)
    kids = dict(model.named_children()) if model is not None else {}
    named = [n for n in kids if re.fullmatch(r"inception\d\w|Mixed_\d\w", n)]
    if named:  # googlenet, inception_v3
        return named
    encoder_layers = getattr(kids.get("encoder"), "layers", None)
    if isinstance(encoder_layers, nn.Module):  # vit
        return _children(encoder_layers, "encoder.layers")
    if isinstance(kids.get("blocks"), nn.ModuleList):
        return _children(kids["blocks"], "blocks")  # maxvit
    if isinstance(kids.get("layers"), nn.Sequential):  # mnasnet: its stacks are Sequentials
        return [
            f"layers.{n}"
            for n, m in kids["layers"].named_children()
            if isinstance(m, nn.Sequential)
        ]
    features = kids.get("features")
    if isinstance(features, nn.Sequential):
        items = list(features.named_children())
        dense = [f"features.{n}" for n, _ in items if n.startswith("denseblock")]
        if dense:
            return dense
        plain = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d)
        if all(isinstance(m, plain) for _, m in items):  # vgg, alexnet: a stage ends in a pool
            return [f"features.{n}" for n, m in items if isinstance(m, nn.MaxPool2d)]
        return _children(features, "features")
    raise TransferPipeError(
        f"no stage list is known for torchvision model {name}; "
        "name its layers explicitly (module names from model.named_modules())"
    )


def _feature_dim(name: str, image_size: int) -> int | None:
    """Width of the penultimate features, from the meta-device skeleton."""
    model = _skeleton(name)
    if model is None:
        return None
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return int(linears[-1].in_features)
    tap = LayerTap(model, [PENULTIMATE])
    try:
        x = torch.empty(1, 3, image_size, image_size, device="meta")
        return int(tap.eval()(x)[PENULTIMATE].shape[1])
    finally:
        tap.remove()


def _download(weights: WeightsEnum, backbone: str) -> str:
    """Path of the weights file in torch's hub cache, downloading it if missing."""
    filename = os.path.basename(urlparse(weights.url).path)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # torchvision names its files <name>-<sha256 prefix>.pth: verify the download with it.
    match = re.search(r"-([a-f0-9]{6,})\.", filename)
    try:
        torch.hub.download_url_to_file(
            weights.url, path, hash_prefix=match.group(1) if match else None, progress=False
        )
    except Exception as exc:  # URLError, timeouts, hash mismatch...
        raise TransferPipeError(
            f"the weights of {backbone} could not be downloaded from {weights.url} ({exc}). "
            f"Download that file where you have internet and pass --weights-file PATH with "
            f"the local state dict instead (same backbone id)."
        ) from exc
    return path


@dataclass(frozen=True)
class TorchvisionWeights:
    """A torchvision weights enum: downloaded once into torch's hub cache."""

    name: str
    weights: WeightsEnum

    @property
    def backbone(self) -> str:
        """The backbone id these weights belong to."""
        return f"{PREFIX}{self.name}:{self.weights.name}"

    def digest(self) -> str:
        """sha256 hex digest of the downloaded file (downloads it if needed)."""
        return file_sha256(_download(self.weights, self.backbone))

    def materialize(self, architecture: Architecture, backbone: str) -> nn.Module:
        """torchvision's own builder, which applies per-model loading fixes."""
        from torchvision.models import get_model

        _download(self.weights, backbone)  # so the builder only reads the cache
        with seeded(DEFAULT_SEED):  # init runs before loading; keep the caller's RNG intact
            return _tag_layouts(self.name, get_model(self.name, weights=self.weights))

    def describe(self) -> str:
        """E.g. ``torchvision ResNet18_Weights.IMAGENET1K_V1``."""
        return f"torchvision {type(self.weights).__name__}.{self.weights.name}"


def _preprocessing(weights: WeightsEnum | None) -> Preprocessing:
    if weights is None:
        return Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, resize="center-crop")
    t = weights.transforms()
    (mr, mg, mb), (sr, sg, sb) = t.mean, t.std
    return Preprocessing(int(t.crop_size[0]), (mr, mg, mb), (sr, sg, sb), resize="center-crop")


def _metadata(name: str, weights: WeightsEnum | None, image_size: int) -> dict[str, Any]:
    import torchvision
    from torchvision.models import get_model_weights

    model = _skeleton(name)
    default = get_model_weights(name).DEFAULT
    meta: dict[str, Any] = {
        "architecture": name,
        "num_params": (
            sum(p.numel() for p in model.parameters())
            if model is not None
            else default.meta.get("num_params")
        ),
        "feature_dim": _feature_dim(name, image_size),
        "imagenet_top1": None,
        "source": f"torchvision {torchvision.__version__}",
        "license": LICENSE,
    }
    if weights is not None:
        meta["num_params"] = weights.meta.get("num_params", meta["num_params"])
        meta["imagenet_top1"] = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
        meta["weights_url"] = weights.url
        meta["recipe"] = weights.meta.get("recipe")
    return meta


@functools.cache
def resolve(backbone_id: str) -> BackboneEntry | None:
    """The entry for ``torchvision/<name>[:<WEIGHTS>]``; None if ``<name>`` is unknown."""
    import torchvision
    from torchvision.models import get_model_weights

    name, _, enum_name = backbone_id.removeprefix(PREFIX).partition(":")
    if name not in model_names():
        return None
    weights: WeightsEnum | None = None
    if enum_name:
        enum = get_model_weights(name)
        if enum_name not in enum.__members__:
            choices = ", ".join(m for m in enum.__members__ if m != "DEFAULT")
            raise TransferPipeError(
                f"torchvision model {name} has no weights {enum_name!r}; use one of {choices} "
                f"(e.g. {PREFIX}{name}:DEFAULT), or {PREFIX}{name} for random weights"
            )
        weights = enum[enum_name]
    canonical = PREFIX + name + (f":{weights.name}" if weights is not None else "")
    preprocessing = _preprocessing(weights)
    architecture: Callable[[], nn.Module] = functools.partial(_architecture, name, weights)
    return BackboneEntry(
        id=canonical,
        architecture=architecture,
        weights=(
            TorchvisionWeights(name, weights)
            if weights is not None
            else RandomInit(arch=canonical, versions=(("torchvision", torchvision.__version__),))
        ),
        preprocessing=preprocessing,
        metadata=_metadata(name, weights, preprocessing.image_size),
        stages=functools.partial(stage_layers, name),
    )
