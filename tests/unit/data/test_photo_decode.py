"""Photographs decoded right: every format from files its own encoder wrote, colour
profiles converted to sRGB (checked against a conversion computed in numpy, not by the
library under test), DCT-domain downscale never below the target, and photos that cannot
be used, or used only with a caveat, recorded with a reason."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.icc import ADOBE_RGB, DISPLAY_P3, rgb_profile, to_srgb
from tests.support.photos import crop, encode, in_space, source_photos
from transfer_pipe.data.decode import DecodeError, decode_image, decode_note

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A 500 x 375 crop of a real photograph."""
    return crop(np.random.default_rng(1), source_photos()["coffee"], (500, 375))


def _mean_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


@pytest.mark.parametrize("kind", ["jpeg", "progressive", "exif", "heic", "webp", "avif"])
def test_each_format_from_its_own_encoder_decodes_to_the_photo(
    photo: Image.Image, kind: str
) -> None:
    decoded = decode_image(encode(photo, kind))
    assert decoded.mode == "RGB" and decoded.size == photo.size  # exif: turned back
    # Lossy codecs at quality 90: a few levels on average. Mutation seen to fail here:
    # the EXIF orientation not applied (a quarter turn off: size and pixels differ).
    assert _mean_diff(decoded, photo) < 4.0
    assert decode_note(decoded) == ""


@pytest.mark.parametrize("space", [DISPLAY_P3, ADOBE_RGB], ids=lambda s: s.name)
def test_embedded_profiles_are_converted_to_srgb(space: object) -> None:
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "png")  # lossless: exact pixels in that space
    tagged = io.BytesIO()
    Image.open(io.BytesIO(data)).save(tagged, "PNG", icc_profile=rgb_profile(space))  # type: ignore[arg-type]
    decoded = np.asarray(decode_image(tagged.getvalue()), dtype=np.int16)
    expected = to_srgb(pixels, space).astype(np.int16)  # type: ignore[arg-type]
    # Mutation seen to fail here: the profile ignored (about 12 levels off on average).
    assert np.abs(decoded - expected).max() <= 1
    assert np.abs(pixels.astype(np.int16) - expected).mean() > 8  # the check has teeth


def test_a_profile_on_a_transparent_png_is_applied_after_compositing() -> None:
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    opaque = np.dstack([pixels, np.full((16, 16), 255, np.uint8)])
    tagged = io.BytesIO()
    Image.fromarray(opaque, "RGBA").save(tagged, "PNG", icc_profile=rgb_profile(DISPLAY_P3))
    decoded = np.asarray(decode_image(tagged.getvalue()), dtype=np.int16)
    # Mutation seen to fail here: the profile used only for RGB, CMYK and grey pixels.
    assert np.abs(decoded - to_srgb(pixels, DISPLAY_P3).astype(np.int16)).max() <= 1


def test_a_p3_photo_decodes_to_the_colours_it_was_taken_with(photo: Image.Image) -> None:
    decoded = decode_image(encode(photo, "p3"))
    assert _mean_diff(decoded, photo) < 4.0
    assert _mean_diff(in_space(photo, DISPLAY_P3), photo) > 2 * _mean_diff(decoded, photo)


@pytest.mark.parametrize(
    ("profile", "why"),
    [
        (b"\x00\x01not a profile at all" * 8, "unreadable"),
        (rgb_profile(DISPLAY_P3)[:200], "cut short"),
    ],
    ids=["unreadable", "cut-short"],
)
def test_a_profile_that_cannot_be_read_is_noted_and_the_photo_taken_as_srgb(
    photo: Image.Image, profile: bytes, why: str
) -> None:
    plain, tagged = io.BytesIO(), io.BytesIO()
    photo.save(plain, "PNG")
    photo.save(tagged, "PNG", icc_profile=profile)
    decoded = decode_image(tagged.getvalue())
    assert np.array_equal(np.asarray(decoded), np.asarray(decode_image(plain.getvalue())))
    assert decode_note(decoded).startswith("icc-unusable:"), why


def test_a_profile_that_lies_about_the_pixels_is_noted() -> None:
    """A Lab profile on RGB pixels: no conversion can be built from it."""
    from PIL import ImageCms

    grey = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    tagged = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 100, 50)).save(tagged, "PNG", icc_profile=grey)
    decoded = decode_image(tagged.getvalue())
    assert decoded.getpixel((0, 0)) == (200, 100, 50)
    assert "profile on RGB pixels" in decode_note(decoded)


def test_draft_decodes_a_large_jpeg_smaller_but_never_below_the_target() -> None:
    big = crop(np.random.default_rng(3), source_photos()["china"], (2000, 1500))
    data = encode(big, "jpeg")
    full = decode_image(data)
    reduced = decode_image(data, draft_to=224)
    # 2000 x 1500 at 1/4 is 500 x 375 (1/8 would be 250 x 188: below 224).
    assert full.size == (2000, 1500) and reduced.size == (500, 375)
    assert min(decode_image(data, draft_to=1000).size) >= 1000
    small = full.resize((500, 375), Image.Resampling.BILINEAR)
    assert _mean_diff(reduced, small) < 4.0  # the same picture
    # Not a JPEG: decoded whole whatever the draft.
    assert decode_image(encode(big.resize((600, 450)), "png"), draft_to=224).size == (600, 450)


def test_a_heic_without_its_plugin_fails_with_a_reason_that_says_what_to_install(
    photo: Image.Image, tmp_path: Path
) -> None:
    path = tmp_path / "phone.heic"
    path.write_bytes(encode(photo, "heic"))
    code = (
        "import sys; sys.modules['pillow_heif'] = None\n"
        "from transfer_pipe.data.decode import DecodeError, decode_image\n"
        f"data = open({str(path)!r}, 'rb').read()\n"
        "try:\n    decode_image(data)\nexcept DecodeError as err:\n    print(err)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert done.stdout.startswith("heic-unsupported:") and "pillow-heif" in done.stdout


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header claims ``width`` x ``height``."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (9, 9, 9)), "jpeg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_a_20000_pixel_square_jpeg_is_a_decompression_bomb() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_image(_jpeg_claiming(20_000, 20_000))
    assert caught.value.reason == "decompression-bomb"


@pytest.mark.parametrize("kind", ["jpeg", "progressive", "heic", "webp", "avif"])
def test_a_truncated_photo_is_a_decode_error(photo: Image.Image, kind: str) -> None:
    data = encode(photo, kind)
    with pytest.raises(DecodeError) as caught:
        decode_image(data[: len(data) // 2])
    assert caught.value.reason in ("truncated", "corrupt", "not-an-image")
