"""Real features for head tests, cheap enough for unit tests: EfficientNet-Lite0's
``stages.5`` (192 values, the best of its layers for a probe at this size) on Fashion-MNIST
images at 32 x 32, the first images of each class of the test file; embedded once per
process (about 3 s for 1,500 images on one core) through the backbone's own
preprocessing."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from tests.support.images import fashion_mnist_folder

LAYER = "stages.5"
IMAGE_SIZE = 32
POOL_PER_CLASS = 150  # images of each class embedded: draws come from these


def fashion_features() -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [10 * POOL_PER_CLASS, 192], class names [same]): class by class,
    each class's images in file order. Skips the test when the dataset is not installed."""
    if fashion_mnist_folder() is None:
        pytest.skip("Fashion-MNIST's IDX files are not installed (`make data` installs them)")
    return _embedded()


@functools.cache
def _embedded() -> tuple[np.ndarray, np.ndarray]:
    import torch
    from PIL import Image

    from transfer_pipe.backbones import get_backbone
    from transfer_pipe.backbones.taps import LayerTap
    from transfer_pipe.data.idx import FASHION_MNIST_CLASSES, read_idx

    folder = fashion_mnist_folder()
    assert folder is not None
    images = read_idx(folder / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    index = np.concatenate(
        [np.flatnonzero(labels == c)[:POOL_PER_CLASS] for c in range(len(FASHION_MNIST_CLASSES))]
    )
    spec = get_backbone("efficientnet_lite0.in1k")
    preprocessing = dataclasses.replace(spec.preprocessing, image_size=IMAGE_SIZE)
    pixels = np.stack([preprocessing.pixels(Image.fromarray(images[i])) for i in index])
    tap = LayerTap(spec.build(), [LAYER]).eval()
    with torch.inference_mode():
        features = tap(preprocessing.normalize(torch.from_numpy(pixels)))[LAYER]
    names = np.asarray(FASHION_MNIST_CLASSES)[labels[index]]
    return np.asarray(features, dtype=np.float32), names
