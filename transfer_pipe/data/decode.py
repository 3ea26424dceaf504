"""Defensive image decoding: bytes in, a fully loaded 8-bit sRGB image out, or a DecodeError.

Every source (folder, manifest, s3, IDX) ends here, so every odd file the world produces
(EXIF-rotated photos, CMYK JPEGs, 16-bit PNGs, transparent GIFs, truncated uploads,
decompression bombs, Display P3 and Adobe RGB photos, HEIC from phones) is handled in one
place. A bad file becomes a ``DecodeError`` whose ``reason`` is a short category for the
failures table; no Pillow exception escapes. A file that decodes with a caveat (a colour
profile that cannot be used) gives its image and a note (``decode_note``), recorded beside
the failures.

Colour: an embedded ICC profile is converted to sRGB (LittleCMS, relative colorimetric),
the space every ImageNet-trained model saw; a photo without one is taken as sRGB.

Speed: with ``draft_to``, a JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain
(libjpeg's own downscale, far cheaper than decoding every pixel and resizing them) when
both sides stay at least ``draft_to``: the final resize never upscales.
"""

from __future__ import annotations

import functools
import io
import threading
import warnings

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

DEFAULT_BACKGROUND: tuple[int, int, int] = (255, 255, 255)
"""Transparent pixels are composited on white, so "nothing" looks the same in every format."""

DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
"""Pillow's own decompression-bomb limit (about 89M pixels, roughly 256 MiB of RGB)."""

_UINT16_MAX = 65535
NOTE = "transfer_pipe.note"
"""Key of ``Image.info`` under which ``decode_image`` leaves its note on a photo it decoded
with a caveat (Pillow keeps what a decoder learned about a file in ``info``)."""
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")
_SRGB_NAMES = ("srgb", "s rgb")  # profiles that describe sRGB already: nothing to convert


class DecodeError(Exception):
    """An image that cannot be used; ``str(err)`` is a short reason for the failures table.

    ``reason`` is one of "empty", "not-an-image", "truncated", "decompression-bomb",
    "corrupt", "unsupported-mode", "heic-unsupported".
    """

    reason: str

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        # Pillow messages can be long (or embed object reprs); the failures table wants one line.
        super().__init__(f"{reason}: {detail[:200]}")


def decode_image(
    data: bytes,
    *,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_to: int | None = None,
) -> Image.Image:
    """Decode image bytes; return a fully loaded mode-"RGB" sRGB image with EXIF orientation
    applied (and, when something was off, a note in ``info``: see ``decode_note``).

    The first frame of an animation is taken; alpha is composited on ``background``;
    16-bit and float grayscale are scaled (not clipped) to 8 bits; an embedded colour
    profile is converted to sRGB. ``draft_to``: a JPEG may be decoded at a reduced scale
    whose sides stay at least ``draft_to``. Raises ``DecodeError`` for anything unusable.
    Pillow's global limit (``Image.MAX_IMAGE_PIXELS``) still applies, so a ``max_pixels``
    above it does not admit larger images.
    """
    if len(background) != 3 or not all(0 <= c <= 255 for c in background):
        raise ValueError(f"background must be three ints in 0..255, got {background!r}")
    if not data:
        raise DecodeError("empty", "zero-byte file")
    if is_heif(data):
        register_heif()
    try:
        # Pillow warns (rather than raises) between 1x and 2x its limit; make that an error,
        # scoped to this block so global warning filters are left as they were.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                # Check the header's claim before load() allocates the pixels.
                if width * height > max_pixels:
                    raise DecodeError(
                        "decompression-bomb",
                        f"{width}x{height} pixels exceeds max_pixels={max_pixels}",
                    )
                if draft_to and img.format == "JPEG":
                    img.draft(None, (draft_to, draft_to))  # sides stay >= draft_to
                # open() only reads the header; truncation surfaces here, in load().
                img.load()
                profile, oriented = img.info.get("icc_profile"), _apply_orientation(img)
                if oriented.mode in _PROFILE_SPACES:  # converted from its own space
                    image = _managed(oriented, profile)
                    return image if image.mode == "RGB" else _to_rgb(image, background)
                # Alpha, palettes, 16-bit: composited or scaled to RGB, then converted.
                return _managed(_to_rgb(oriented, background), profile)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not-an-image", "no image format recognized in these bytes") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DecodeError("decompression-bomb", str(err)) from err
    except Exception as err:
        # Pillow reports truncation as OSError("image file is truncated ..."); EOFError
        # comes from decoders that run out of bytes mid-stream.
        if isinstance(err, EOFError) or "truncated" in str(err).lower():
            raise DecodeError("truncated", str(err) or "unexpected end of file") from err
        raise DecodeError("corrupt", f"{type(err).__name__}: {err}") from err


def decode_note(image: Image.Image) -> str:
    """What ``decode_image`` noted about ``image`` ("" when nothing), e.g.
    ``icc-unusable: ... decoded as sRGB``."""
    return str(image.info.get(NOTE, ""))


def is_heif(data: bytes) -> bool:
    """HEIC/HEIF (phones): an ISO base media file whose ``ftyp`` box names a HEIF brand."""
    return data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS


_HEIF_LOCK = threading.Lock()


@functools.cache
def register_heif() -> None:
    """Teach Pillow HEIC through pillow-heif, once per process (on the first HEIC seen:
    its import costs time no other source should pay). Without the plugin a HEIC file
    fails with a reason that says what to install."""
    with _HEIF_LOCK:
        try:
            import pillow_heif
        except ImportError:
            raise DecodeError(
                "heic-unsupported", "a HEIC/HEIF photo: install pillow-heif to decode it"
            ) from None
        pillow_heif.register_heif_opener()


# Pillow modes whose pixels a profile of this colour space describes, as LittleCMS reads them.
_PROFILE_SPACES = {"RGB": "RGB", "CMYK": "CMYK", "L": "GRAY"}


def _managed(image: Image.Image, profile: bytes | None) -> Image.Image:
    """``image`` converted to sRGB through its embedded ``profile`` (RGB, CMYK and
    greyscale pixels; others, and photos without a profile, are returned as they are).
    A profile that cannot be used (unreadable, or of another colour space than the pixels:
    one that lies about them) leaves the pixels as they are, taken as sRGB, with a note."""
    if not profile or image.mode not in _PROFILE_SPACES:
        return image
    try:
        transform = _srgb_transform(profile, image.mode)
    except (OSError, ValueError, ImageCms.PyCMSError) as err:
        image.info[NOTE] = f"icc-unusable: {str(err)[:120]}; decoded as sRGB"
        return image
    if transform is None:
        return image
    converted = ImageCms.applyTransform(image, transform)
    assert converted is not None  # not in place: a new image
    return converted


def changes_colours(profile: bytes | None, mode: str) -> bool:
    """Whether ``decode_image`` does anything with the embedded ``profile`` of pixels in
    Pillow ``mode``: converts them to sRGB, or notes that it cannot. False for no profile,
    an sRGB one, and modes it leaves as they are; a decoder that ignores profiles gives
    ``decode_image``'s pixels only when this is False."""
    if not profile or mode not in _PROFILE_SPACES:
        return False
    try:
        return _srgb_transform(profile, mode) is not None
    except (OSError, ValueError, ImageCms.PyCMSError):
        return True  # unusable: decode_image notes it


@functools.lru_cache(maxsize=32)
def _srgb_transform(profile: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The ``mode`` -> sRGB transform of ``profile``, built once per process and profile
    (a camera writes the same one into every photo); None for sRGB itself."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    space = source.profile.xcolor_space.strip()
    if space != _PROFILE_SPACES[mode]:
        raise ValueError(f"a {space} profile on {mode} pixels")
    description = (source.profile.profile_description or "").strip().lower()
    if mode == "RGB" and description.startswith(_SRGB_NAMES):
        return None
    return ImageCms.buildTransform(source, _srgb(), mode, "RGB")


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def image_from_array(pixels: np.ndarray) -> Image.Image:
    """Return a new RGB image from a uint8 array shaped HxW (grayscale), HxWx1 or HxWx3.

    Used by array sources (IDX / MNIST); raises ``DecodeError("unsupported-mode")`` for
    other dtypes or shapes. The image owns its memory (it never aliases ``pixels``).
    """
    if pixels.dtype != np.uint8:
        raise DecodeError("unsupported-mode", f"array dtype {pixels.dtype}, expected uint8")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise DecodeError("unsupported-mode", f"array shape {pixels.shape}, expected HxW or HxWx3")
    # convert() always allocates, so the result never shares the caller's buffer.
    return Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")


def _apply_orientation(img: Image.Image) -> Image.Image:
    """Return a new image with the EXIF orientation applied (a plain copy if there is none)."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        # Malformed EXIF metadata should not cost us an otherwise good image.
        return img.copy()


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Return ``img`` as a new 8-bit RGB image; raise DecodeError for modes Pillow can't convert."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        # 16-bit data (PNG, TIFF); Pillow's convert() would clip everything above 255 to white.
        values = np.clip(np.asarray(img, dtype=np.int64), 0, _UINT16_MAX)
        gray = (values * 255 + _UINT16_MAX // 2) // _UINT16_MAX
        return Image.fromarray(gray.astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        # Float images are either normalised (0..1) or already on the 0..255 scale.
        floats = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        if floats.size and floats.max() <= 1.0:
            floats = floats * 255.0
        gray = np.clip(np.rint(floats), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    try:
        if img.has_transparency_data:
            # Covers RGBA/LA/PA and palette or tRNS transparency; convert("RGB") would
            # drop alpha and show whatever color hides under it (often black).
            rgba = img.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (*background, 255))
            canvas.alpha_composite(rgba)
            return canvas.convert("RGB")
        return img.convert("RGB")
    except ValueError as err:
        raise DecodeError("unsupported-mode", f"mode {img.mode}: {err}") from err
