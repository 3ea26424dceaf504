"""Decode -> resize as uint8 per image, normalise per batch: the same floats, bit for bit,
as the per-image preprocessing the feature store's keys were made with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.images import GOOD_KINDS, truncated_jpeg, write_image
from transfer_pipe.backbones import Preprocessing
from transfer_pipe.data.batch import prepare_batch, prepare_pixels
from transfer_pipe.data.decode import decode_image

MEAN = (0.498, 0.45, 0.3)
STD = (0.502, 0.2, 0.1)


def float_reference(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """The preprocessing as it was before batches were normalised (numpy, one image):
    float32 pixels * (1 / (255 std)) + (-mean / std), channels first."""
    size = (pre.image_size, pre.image_size)
    rgb = image.convert("RGB")
    if pre.resize == "center-crop":
        w, h = rgb.size
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        rgb = rgb.resize(size, Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
    elif rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    chw = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1)
    std, mean = np.float32(STD).reshape(3, 1, 1), np.float32(MEAN).reshape(3, 1, 1)
    scale = (1.0 / (255.0 * std)).astype(np.float32)
    offset = (-mean / std).astype(np.float32)
    return chw * scale + offset


@pytest.fixture
def files(tmp_path: Path) -> list[bytes]:
    """Every good kind of file (RGB, grey, palette, alpha, 16-bit, ...) plus two bad ones."""
    good = [write_image(tmp_path / f"{k}.img", seed=i, kind=k) for i, k in enumerate(GOOD_KINDS)]
    return [p.read_bytes() for p in good] + [truncated_jpeg(1), b""]


@pytest.mark.parametrize("resize", ["squash", "center-crop"])
def test_batches_normalise_to_the_per_image_floats_bit_for_bit(
    files: list[bytes], resize: str
) -> None:
    pre = Preprocessing(20, MEAN, STD, resize=resize)
    inputs = prepare_batch(files, decode_image, pre)
    good = len(GOOD_KINDS)
    assert inputs.ok == tuple(range(good)) and sorted(inputs.failures) == [good, good + 1]
    # The batch is in the layout the forward pass runs in, without a copy.
    assert inputs.images.is_contiguous(memory_format=torch.channels_last)
    expected = np.stack([float_reference(decode_image(b), pre) for b in files[:good]])
    # Mutation seen failing: normalising as (x / 255 - mean) / std (the same maths,
    # other roundings) differs in the last bits here.
    np.testing.assert_array_equal(inputs.images.numpy(), expected)
    for row in range(good):  # and the one-image door gives the same floats
        single = pre(decode_image(files[row]))
        assert single.is_contiguous()
        np.testing.assert_array_equal(single.numpy(), expected[row])


def test_greyscale_stays_one_channel_until_the_batch_broadcasts_it() -> None:
    pre = Preprocessing(8, MEAN, STD)
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 3, mode="L")
    assert pre.pixels(grey).shape == (8, 8, 1)
    colour = Image.fromarray(np.full((5, 7, 3), 200, dtype=np.uint8))
    pixels = prepare_pixels([grey, colour], lambda image: image, pre)
    assert pixels.pixels.dtype == torch.uint8 and pixels.pixels.shape == (2, 8, 8, 3)
    # Mutation seen failing: filling only channel 0 of a greyscale row (not broadcasting).
    for channel in range(3):
        np.testing.assert_array_equal(pixels.pixels[0, :, :, channel].numpy(), np.asarray(grey))
    np.testing.assert_array_equal(
        pre.normalize(pixels.pixels)[0].numpy(), float_reference(grey, pre)
    )


def test_a_batch_of_only_bad_images_has_no_pixels() -> None:
    pixels = prepare_pixels([b"", b"x"], decode_image, Preprocessing(8, MEAN, STD))
    assert pixels.pixels.shape == (0, 8, 8, 3) and pixels.ok == ()
    assert sorted(pixels.failures) == [0, 1]
