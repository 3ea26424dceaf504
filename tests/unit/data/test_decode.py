"""decode_image / image_from_array: every test builds a real file with Pillow and decodes it."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, features

from transfer_pipe.data import decode
from transfer_pipe.data.decode import (
    DEFAULT_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    DecodeError,
    decode_image,
    image_from_array,
)

RED, BLUE, BLACK, WHITE = (255, 0, 0), (0, 0, 255), (0, 0, 0), (255, 255, 255)
CUSTOM_BG = (0, 128, 64)
ORIENTATION = 0x0112


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    """Save ``img`` in ``fmt`` to memory and return the file's bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def noise_rgb(size: int = 64) -> Image.Image:
    """A deterministic noisy RGB image (noise so compressed files are not tiny)."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def assert_close(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 3) -> None:
    assert all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True)), (
        actual,
        expected,
    )


def rgb_at(img: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    pixel = img.getpixel(xy)
    assert isinstance(pixel, tuple)
    return (int(pixel[0]), int(pixel[1]), int(pixel[2]))


def assert_rgb_loaded(img: Image.Image) -> None:
    """The output contract: RGB, uint8, in memory and not tied to a file."""
    assert img.mode == "RGB"
    assert np.asarray(img).dtype == np.uint8
    assert not isinstance(img, ImageFile.ImageFile)


# --- orientation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "red_xy", "blue_xy"),
    [(6, (10, 5), (10, 35)), (8, (10, 35), (10, 5))],  # 6: left edge -> top; 8: -> bottom
)
def test_exif_orientation_is_applied(
    orientation: int, red_xy: tuple[int, int], blue_xy: tuple[int, int]
) -> None:
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation

    out = decode_image(encode(img, "JPEG", exif=exif, quality=95))

    assert out.size == (20, 40)
    assert_close(rgb_at(out, red_xy), RED, tol=8)
    assert_close(rgb_at(out, blue_xy), BLUE, tol=8)
    assert_rgb_loaded(out)


def test_bad_exif_does_not_cost_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(image: Image.Image) -> Image.Image:
        raise SyntaxError("malformed EXIF")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    out = decode_image(encode(Image.new("RGB", (8, 4), RED), "PNG"))
    assert out.size == (8, 4)
    assert rgb_at(out, (0, 0)) == RED


# --- color modes -------------------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"

    out = decode_image(data)

    assert_close(rgb_at(out, (8, 8)), RED, tol=8)
    assert_rgb_loaded(out)


def test_grayscale_l() -> None:
    out = decode_image(encode(Image.new("L", (4, 4), 100), "PNG"))
    assert rgb_at(out, (1, 1)) == (100, 100, 100)
    assert_rgb_loaded(out)


def test_bilevel_1() -> None:
    img = Image.new("1", (4, 4), 0)
    img.putpixel((0, 0), 1)
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "1"

    out = decode_image(data)

    assert rgb_at(out, (0, 0)) == WHITE
    assert rgb_at(out, (1, 1)) == BLACK
    assert_rgb_loaded(out)


def test_palette_without_transparency() -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([*RED, *BLUE])
    img.putpixel((0, 0), 0)
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"

    out = decode_image(data)

    assert rgb_at(out, (0, 0)) == RED
    assert rgb_at(out, (2, 2)) == BLUE
    assert_rgb_loaded(out)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
@pytest.mark.parametrize("background", [DEFAULT_BACKGROUND, CUSTOM_BG])
def test_palette_transparency_is_composited_not_black(
    fmt: str, background: tuple[int, int, int]
) -> None:
    img = Image.new("P", (4, 4), 1)  # index 1 is black *and* transparent
    img.putpalette([*RED, *BLACK])
    img.putpixel((0, 0), 0)
    data = encode(img, fmt, transparency=1)

    out = decode_image(data, background=background)

    assert rgb_at(out, (0, 0)) == RED
    assert rgb_at(out, (2, 2)) == background
    assert_rgb_loaded(out)


@pytest.mark.parametrize("background", [DEFAULT_BACKGROUND, CUSTOM_BG])
def test_rgba_alpha_is_composited_on_background(background: tuple[int, int, int]) -> None:
    img = Image.new("RGBA", (3, 1), (10, 20, 30, 0))  # fully transparent, dark color beneath
    img.putpixel((1, 0), (*RED, 255))
    img.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black

    out = decode_image(encode(img, "PNG"), background=background)

    assert rgb_at(out, (0, 0)) == background
    assert rgb_at(out, (1, 0)) == RED
    assert_close(rgb_at(out, (2, 0)), tuple(c // 2 for c in background), tol=2)
    assert_rgb_loaded(out)


@pytest.mark.parametrize("background", [DEFAULT_BACKGROUND, CUSTOM_BG])
def test_la_alpha_is_composited_on_background(background: tuple[int, int, int]) -> None:
    img = Image.new("LA", (2, 1), (0, 0))
    img.putpixel((1, 0), (100, 255))
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"

    out = decode_image(data, background=background)

    assert rgb_at(out, (0, 0)) == background
    assert rgb_at(out, (1, 0)) == (100, 100, 100)
    assert_rgb_loaded(out)


def test_default_background_is_white() -> None:
    assert DEFAULT_BACKGROUND == WHITE
    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS


# --- high bit depth ----------------------------------------------------------------------


def test_16bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 32768, 65535, 1000]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")

    out = decode_image(data)

    gray = np.asarray(out)[0, :, 0].tolist()
    assert gray == [0, 128, 255, 4]  # a plain convert("RGB") gives [0, 255, 255, 255]
    assert_rgb_loaded(out)


def test_32bit_int_tiff_is_scaled_as_16bit() -> None:
    img = Image.new("I", (3, 1), 32768)
    img.putpixel((1, 0), 70000)  # beyond 16 bits: saturates
    img.putpixel((2, 0), -5)  # negative: black
    data = encode(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"

    out = decode_image(data)

    assert np.asarray(out)[0, :, 0].tolist() == [128, 255, 0]


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.0, 0.5, 1.0], [0, 128, 255]), ([0.0, 200.0, 300.0], [0, 200, 255])],
    ids=["unit-range-scaled", "byte-range-clipped"],
)
def test_float_tiff(values: list[float], expected: list[int]) -> None:
    data = encode(Image.fromarray(np.array([values], dtype=np.float32)), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"

    out = decode_image(data)

    assert np.asarray(out)[0, :, 0].tolist() == expected
    assert_rgb_loaded(out)


# --- animation ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_first_frame_is_taken(fmt: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    frames = [Image.new("RGB", (8, 8), color) for color in (RED, (0, 255, 0), BLUE)]
    params: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3

    out = decode_image(data)

    assert rgb_at(out, (4, 4)) == RED
    assert_rgb_loaded(out)


# --- bad input ---------------------------------------------------------------------------


def reason_of(data: bytes, **kwargs: Any) -> str:
    with pytest.raises(DecodeError) as info:
        decode_image(data, **kwargs)
    assert str(info.value).startswith(info.value.reason + ": ")
    assert "\n" not in str(info.value)
    return info.value.reason


def test_empty_file() -> None:
    assert reason_of(b"") == "empty"


@pytest.mark.parametrize(
    "data",
    [
        b"sample_id,label\nimg-1,cat\n",
        np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    ],
    ids=["text", "random-bytes"],
)
def test_not_an_image(data: bytes) -> None:
    assert reason_of(data) == "not-an-image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_caught_on_load(fmt: str) -> None:
    data = encode(noise_rgb(), fmt)
    half = data[: len(data) // 2]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    Image.open(io.BytesIO(half))  # Pillow's open() reads only the header and succeeds

    assert reason_of(half) == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_corrupt_pixel_data() -> None:
    # A well-formed 4x4 RGB PNG whose IDAT holds bytes that are not a zlib stream.
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"\xaa" * 64)
        + png_chunk(b"IEND", b"")
    )
    assert reason_of(data) == "corrupt"


def test_header_larger_than_max_pixels_is_a_bomb() -> None:
    data = encode(Image.new("L", (100, 100)), "PNG")
    assert reason_of(data, max_pixels=5000) == "decompression-bomb"
    assert decode_image(data, max_pixels=10_000).size == (100, 100)  # the limit is inclusive


@pytest.mark.parametrize("pillow_limit", [6000, 9000], ids=["pillow-error", "pillow-warning"])
def test_pillow_bomb_guard_becomes_decode_error(
    pillow_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 10_000 pixels: over 2x 6000 Pillow raises; between 1x and 2x of 9000 it only warns.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    data = encode(Image.new("L", (100, 100)), "PNG")
    filters_before = list(warnings.filters)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reason_of(data, max_pixels=10**9) == "decompression-bomb"

    assert caught == []
    assert warnings.filters == filters_before


def test_unsupported_mode() -> None:
    # No file format stores premultiplied "La", and Pillow cannot convert it to RGB.
    with pytest.raises(DecodeError) as info:
        decode._to_rgb(Image.new("La", (2, 2)), DEFAULT_BACKGROUND)
    assert info.value.reason == "unsupported-mode"


def test_invalid_background_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="background"):
        decode_image(encode(Image.new("RGB", (2, 2)), "PNG"), background=(0, 0, 256))


# --- output contract ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_output_is_loaded_rgb_uint8(fmt: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    out = decode_image(encode(noise_rgb(16), fmt))

    assert out.size == (16, 16)
    assert_rgb_loaded(out)
    assert np.asarray(out).shape == (16, 16, 3)


# --- arrays ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1)])
def test_image_from_grayscale_array(shape: tuple[int, ...]) -> None:
    pixels = np.arange(35, dtype=np.uint8).reshape(shape)

    out = image_from_array(pixels)

    assert out.mode == "RGB"
    assert out.size == (7, 5)
    rgb = np.asarray(out)
    for channel in range(3):
        assert np.array_equal(rgb[:, :, channel], pixels.reshape(5, 7))


def test_image_from_rgb_array_does_not_alias() -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (4, 6, 3), dtype=np.uint8)

    out = image_from_array(pixels)
    expected = pixels.copy()
    pixels[:] = 0

    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), expected)


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((4, 4), dtype=np.float32),
        np.zeros((4, 4, 4), dtype=np.uint8),
        np.zeros(4, np.uint8),
    ],
    ids=["float", "rgba-shape", "1d"],
)
def test_image_from_bad_array(pixels: np.ndarray) -> None:
    with pytest.raises(DecodeError) as info:
        image_from_array(pixels)
    assert info.value.reason == "unsupported-mode"
