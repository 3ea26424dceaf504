"""Preprocessing: sizes, crop geometry and normalisation on images with known pixels."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from transfer_pipe.backbones import Preprocessing
from transfer_pipe.errors import TransferPipeError

MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.1)


def solid(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


@pytest.mark.parametrize("resize", ["squash", "center-crop"])
def test_solid_colour_normalises_per_channel(resize: str) -> None:
    pre = Preprocessing(16, MEAN, STD, resize=resize)
    out = pre(solid((255, 102, 0)))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32 and out.is_contiguous()
    expected = [(255 / 255 - 0.5) / 0.25, (102 / 255 - 0.4) / 0.2, (0 - 0.3) / 0.1]
    for channel, value in enumerate(expected):
        torch.testing.assert_close(out[channel], torch.full((16, 16), value), atol=1e-5, rtol=0)


def test_center_crop_keeps_only_the_central_square() -> None:
    # 8x4 image: a white 4x4 square in the middle, black 2-pixel bars left and right.
    pixels = np.zeros((4, 8, 3), dtype=np.uint8)
    pixels[:, 2:6] = 255
    image = Image.fromarray(pixels)
    cropped = Preprocessing(4, (0.0,) * 3, (1.0,) * 3, resize="center-crop")(image)
    torch.testing.assert_close(cropped, torch.ones(3, 4, 4), atol=1e-5, rtol=0)
    squashed = Preprocessing(4, (0.0,) * 3, (1.0,) * 3, resize="squash")(image)
    assert squashed.shape == (3, 4, 4)
    # Squash keeps the black bars: the edge columns are darker than the centre ones.
    assert squashed[:, :, 0].max() < squashed[:, :, 1].min()
    assert squashed[:, :, 3].max() < squashed[:, :, 2].min()


def test_center_crop_of_portrait_image_has_requested_size() -> None:
    out = Preprocessing(24, MEAN, STD, resize="center-crop")(solid((1, 2, 3), (30, 77)))
    assert out.shape == (3, 24, 24)


def test_greyscale_equals_its_rgb_conversion() -> None:
    grey = Image.fromarray((np.arange(28 * 28) % 251).astype(np.uint8).reshape(28, 28), mode="L")
    pre = Preprocessing(32, MEAN, STD)
    torch.testing.assert_close(pre(grey), pre(grey.convert("RGB")), atol=1e-5, rtol=0)


def test_other_modes_are_converted() -> None:
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    out = Preprocessing(8, (0.0,) * 3, (1.0,) * 3)(rgba)
    torch.testing.assert_close(out[0], torch.ones(8, 8))


def test_to_dict_is_json_and_round_trips() -> None:
    pre = Preprocessing(64, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], resize="center-crop")  # type: ignore[arg-type]
    data = json.loads(json.dumps(pre.to_dict()))
    assert Preprocessing.from_dict(data) == pre
    assert pre.mean == (0.5, 0.5, 0.5)  # lists are stored as tuples: specs stay hashable
    assert hash(pre) == hash(Preprocessing.from_dict(data))


def test_replace_changes_only_the_given_field() -> None:
    pre = Preprocessing(224, MEAN, STD, resize="center-crop")
    small = pre.replace(image_size=64)
    assert small == Preprocessing(64, MEAN, STD, resize="center-crop")
    assert small.to_dict() != pre.to_dict()
    assert small(solid((9, 9, 9))).shape == (3, 64, 64)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 0},
        {"resize": "stretch"},
        {"std": (1.0, 0.0, 1.0)},
        {"mean": (0.5, 0.5)},
    ],
)
def test_invalid_settings_raise(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"image_size": 8, "mean": MEAN, "std": STD, **kwargs}
    with pytest.raises(TransferPipeError):
        Preprocessing(**args)  # type: ignore[arg-type]
