"""Defensive image decoding: bytes in, a fully loaded 8-bit RGB image out, or a DecodeError.

Every source (folder, manifest, s3, IDX) ends here, so every odd file the world produces
(EXIF-rotated photos, CMYK JPEGs, 16-bit PNGs, transparent GIFs, truncated uploads,
decompression bombs) is handled in one place. A bad file becomes a ``DecodeError`` whose
``reason`` is a short category for the failures table; no Pillow exception escapes.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_BACKGROUND: tuple[int, int, int] = (255, 255, 255)
"""Transparent pixels are composited on white, so "nothing" looks the same in every format."""

DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
"""Pillow's own decompression-bomb limit (about 89M pixels, roughly 256 MiB of RGB)."""

_UINT16_MAX = 65535


class DecodeError(Exception):
    """An image that cannot be used; ``str(err)`` is a short reason for the failures table.

    ``reason`` is one of "empty", "not-an-image", "truncated", "decompression-bomb",
    "corrupt", "unsupported-mode".
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
) -> Image.Image:
    """Decode image bytes; return a fully loaded mode-"RGB" image with EXIF orientation applied.

    The first frame of an animation is taken; alpha is composited on ``background``;
    16-bit and float grayscale are scaled (not clipped) to 8 bits. Raises ``DecodeError``
    for anything unusable. Pillow's global limit (``Image.MAX_IMAGE_PIXELS``) still applies,
    so a ``max_pixels`` above it does not admit larger images.
    """
    if len(background) != 3 or not all(0 <= c <= 255 for c in background):
        raise ValueError(f"background must be three ints in 0..255, got {background!r}")
    if not data:
        raise DecodeError("empty", "zero-byte file")
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
                # open() only reads the header; truncation surfaces here, in load().
                img.load()
                return _to_rgb(_apply_orientation(img), background)
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
