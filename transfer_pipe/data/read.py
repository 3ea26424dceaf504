"""The worker-side loader: a manifest URI in, a decoded RGB image out (or a DecodeError)."""

from __future__ import annotations

import fsspec
import numpy as np
from PIL import Image

from transfer_pipe.data.decode import DecodeError, decode_image, image_from_array
from transfer_pipe.data.idx import read_idx, split_idx_uri
from transfer_pipe.errors import TransferPipeError

UNREADABLE = "unreadable"
"""DecodeError reason for an image whose bytes cannot be fetched (missing, no permission)."""


def read_image(uri: str, draft_to: int | None = None) -> Image.Image:
    """Load the image at a manifest ``uri``; return a fully loaded mode-"RGB" image.

    IDX URIs (``<file>#<index>``) read from the per-process parsed-file cache;
    any other URI is fetched through fsspec and decoded (``decode_image``: a JPEG may be
    decoded at a reduced scale, sides at least ``draft_to``). Every per-image problem, a
    missing file included, raises DecodeError so that a run records it as a failure
    instead of crashing.
    """
    idx = split_idx_uri(uri)
    if idx is not None:
        return image_from_array(_idx_pixels(*idx))
    return decode_image(read_bytes(uri), draft_to=draft_to)


def read_bytes(uri: str) -> bytes:
    """The bytes of the file at ``uri`` (a path or any fsspec URL); a file that cannot be
    fetched (missing, no permission, a folder) raises ``DecodeError("unreadable")``."""
    try:
        with fsspec.open(uri, "rb") as f:
            data: bytes = f.read()
    except OSError as err:
        raise DecodeError(UNREADABLE, f"{type(err).__name__}: {err}") from err
    return data


def _idx_pixels(file_url: str, index: int) -> np.ndarray:
    """The uint8 pixels of image ``index`` in an IDX file, parsed once per process."""
    try:
        images = read_idx(file_url)
    except (OSError, TransferPipeError) as err:
        raise DecodeError(UNREADABLE, f"{type(err).__name__}: {err}") from err
    if images.ndim != 3 or not 0 <= index < len(images):
        raise DecodeError(
            UNREADABLE, f"{file_url} has shape {images.shape}; no image at index {index}"
        )
    return images[index]
