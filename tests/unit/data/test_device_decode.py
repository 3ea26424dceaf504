"""JPEGs decoded on the model's device (``--decode nvjpeg``), checked on a CPU: the same
batched ``torchvision.io.decode_jpeg`` call a GPU run makes, on ``device="cpu"``
(libjpeg-turbo), with real files written by Pillow. What the device cannot decode as
Pillow would goes to Pillow, image by image, and every bad file is recorded as the CPU
path records it."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.io
from PIL import Image

from tests.support.photos import EXIF_ORIENTATION, crop, encode, source_photos
from transfer_pipe.data.batch import Pixels, prepare_pixels, prepare_pixels_on
from transfer_pipe.data.decode import decode_image
from transfer_pipe.data.device_decode import (
    DeviceJpeg,
    check_decode_device,
    device_jpeg,
    device_pixels,
)
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.preprocessing import Preprocessing

SIZE = 64


def _preprocessing(resize: str = "squash", size: int = SIZE) -> Preprocessing:
    return Preprocessing(size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), resize, decode="nvjpeg")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A 500 x 375 crop of a real photograph."""
    return crop(np.random.default_rng(1), source_photos()["coffee"], (500, 375))


def _jpeg(image: Image.Image, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def _bogus_huffman_table(data: bytes) -> bytes:
    """``data`` with its first Huffman table's code counts overwritten: the header still
    parses and the file still ends at EOI, but libjpeg (Pillow's and torchvision's) and
    nvJPEG refuse to decode it."""
    broken = bytearray(data)
    dht = broken.index(b"\xff\xc4")
    broken[dht + 5 : dht + 21] = b"\xff" * 16
    return bytes(broken)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many images each call of the batched decoder was given."""
    seen: list[int] = []
    real = torchvision.io.decode_jpeg

    def spy(input: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(input) if isinstance(input, list) else 1)
        return real(input, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", spy)
    return seen


def _on_cpu(datas: list[bytes], preprocessing: Preprocessing) -> Pixels:
    """The reference: every file decoded and resized by Pillow (``prepare_pixels``)."""
    return prepare_pixels(datas, decode_image, preprocessing)


def _on_device(datas: list[bytes], preprocessing: Preprocessing) -> Pixels:
    return prepare_pixels_on(datas, bytes, preprocessing, "cpu")


def _level_diffs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.to(torch.int16) - b.to(torch.int16)).abs()


def test_plain_jpegs_go_to_the_device_in_one_call_and_the_rest_to_pillow(
    photo: Image.Image, calls: list[int]
) -> None:
    kinds: dict[str, bytes] = {
        "baseline": encode(photo, "jpeg"),
        "cmyk": _jpeg(photo.convert("CMYK")),
        "progressive": encode(photo, "progressive"),
        "p3": encode(photo, "p3"),  # a profile to convert: Pillow's LittleCMS does it
        "exif": encode(photo, "exif"),
        "webp": encode(photo, "webp"),
        "grey": _jpeg(photo.convert("L")),
        "truncated": encode(photo, "jpeg")[:20_000],
    }
    datas = list(kinds.values())
    assert [device_jpeg(d) is not None for d in datas] == [
        True, False, True, False, True, False, True, False
    ]  # fmt: skip
    preprocessing = _preprocessing()
    reference, result = _on_cpu(datas, preprocessing), _on_device(datas, preprocessing)
    # Mutations seen failing here: CMYK sent to the device (5 images in the call); the
    # EOI check dropped (the truncated file fails the batched call: [5, 1, 1, 1, 1, 1]).
    assert calls == [4]
    assert (result.ok, result.failures, result.notes) == (
        reference.ok,
        reference.failures,
        reference.notes,
    )
    assert result.failures[7].startswith("truncated:")
    by_kind = dict(zip([list(kinds)[i] for i in result.ok], range(len(result.ok)), strict=True))
    for kind, row in by_kind.items():
        diffs = _level_diffs(result.pixels[row], reference.pixels[row])
        if kind in ("cmyk", "p3", "webp"):  # Pillow's own pixels
            assert int(diffs.max()) == 0, kind
        else:  # the same libjpeg here; a resize of Pillow's filter, rounded its way
            assert int(diffs.max()) <= 1 and float(diffs.float().mean()) < 0.02, kind


def test_a_batch_the_decoder_refuses_is_retried_image_by_image(
    photo: Image.Image, calls: list[int]
) -> None:
    """The batched call returns nothing when one file fails it: each file alone, the one
    refused decoded by Pillow, whose reason is the row's failure."""
    good = encode(photo, "jpeg")
    datas = [good, _bogus_huffman_table(good), encode(photo, "progressive")]
    assert all(device_jpeg(d) is not None for d in datas)  # its header looks fine
    preprocessing = _preprocessing()
    reference, result = _on_cpu(datas, preprocessing), _on_device(datas, preprocessing)
    # Mutation seen failing here: no retry, the whole batch sent to Pillow ([3]).
    assert calls == [3, 1, 1, 1]
    assert result.ok == (0, 2) and result.failures == reference.failures
    assert result.failures[1].startswith("corrupt:")
    assert int(_level_diffs(result.pixels, reference.pixels).max()) <= 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_turns_as_pillow_turns_it(
    photo: Image.Image, orientation: int
) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    data = _jpeg(photo.resize((120, 80)), exif=exif.tobytes())
    jpeg = device_jpeg(data)
    assert jpeg is not None and jpeg.orientation == orientation
    preprocessing = _preprocessing("center-crop", size=48)
    result, reference = _on_device([data], preprocessing), _on_cpu([data], preprocessing)
    # Mutation seen failing here: orientations 5 and 7 swapped (a transpose turned the
    # wrong way: dozens of levels off).
    assert int(_level_diffs(result.pixels, reference.pixels).max()) <= 1


@pytest.mark.parametrize("resize", ["squash", "center-crop"])
@pytest.mark.parametrize("shape", [(501, 375), (375, 500), (100, 61), (33, 30)])
def test_the_tensor_resize_is_pillows_within_a_level(
    photo: Image.Image, resize: str, shape: tuple[int, int]
) -> None:
    """Shrinking, enlarging, and center crops that start between two pixels (501 - 375
    is odd), from the same decoded pixels."""
    image = photo.resize(shape)
    preprocessing = _preprocessing(resize)
    expected = torch.from_numpy(preprocessing.pixels(image).copy())
    planes = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    diffs = _level_diffs(preprocessing.tensor_pixels(planes), expected)
    # Mutation seen failing here: the crop cut on whole pixels (three of these shapes; a
    # 500 x 375 photo at 224 px was 1.7 levels off on average, up to 53).
    assert int(diffs.max()) <= 1 and float(diffs.float().mean()) < 0.05


def test_many_large_photos_are_decoded_a_budget_of_pixels_at_a_time(
    photo: Image.Image, calls: list[int]
) -> None:
    data = encode(photo, "jpeg")
    jpeg = device_jpeg(data)
    assert isinstance(jpeg, DeviceJpeg) and jpeg.pixels == 500 * 375
    resized = device_pixels([jpeg] * 5, _preprocessing(), "cpu", budget=2 * jpeg.pixels)
    # Mutation seen failing here: the budget ignored ([5]).
    assert calls == [2, 2, 1]
    assert all(r is not None and r.shape == (SIZE, SIZE, 3) for r in resized)


@pytest.mark.parametrize(
    ("decode", "device", "refused"),
    [("nvjpeg", "cpu", True), ("nvjpeg", "cuda", False), ("dct", "cpu", False)],
)
def test_a_device_decode_is_refused_where_it_would_not_be_nvjpeg(
    decode: str, device: str, refused: bool
) -> None:
    check: Callable[[], None] = lambda: check_decode_device(decode, torch.device(device))  # noqa: E731
    if not refused:
        check()
        return
    with pytest.raises(TransferPipeError, match="CUDA device; this run's device is cpu"):
        check()
