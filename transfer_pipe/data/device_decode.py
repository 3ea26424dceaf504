"""JPEGs decoded where the model runs: batched nvJPEG on a CUDA device (``--decode nvjpeg``).

The host then only reads files and looks at their headers; decode and resize run on the
GPU, and the uint8 batch never crosses the bus. Pillow (``data.decode``) stays the
reference: a file goes to the device only when the device gives the pixels Pillow would
(a complete YCbCr or greyscale JPEG, no colour profile to convert, within the
decompression-bomb limit), and anything else (other formats, CMYK, colour-managed or
truncated JPEGs, a file the device decoder refuses) is decoded by Pillow, image by image,
with Pillow's failure reasons and notes. So a bad file is recorded exactly as on the CPU.

``data.batch.prepare_pixels_on`` is the batch built this way. Device-agnostic: on
``device="cpu"`` torchvision decodes the same batched call with libjpeg-turbo, so every
branch is exercised without a GPU. A run asks for CUDA (``check_decode_device``): rows of
one feature set all come from one decoder.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from transfer_pipe.data.decode import DEFAULT_MAX_PIXELS, changes_colours
from transfer_pipe.errors import TransferPipeError

if TYPE_CHECKING:  # torch is imported where pixels are made: a plan checks modes without it
    import torch

    from transfer_pipe.data.batch import TensorPreprocess

DECODE_DEVICES: dict[str, tuple[str, ...]] = {"nvjpeg": ("cuda",)}
"""Decode modes that run on the model's device, and the device types that run them."""
DEVICE_BATCH_PIXELS = 256 * 2**20
"""Decoded pixels per batched call (768 MiB of RGB on the device): a batch of 12-megapixel
photos is decoded in a few calls, each resized before the next, so that full-size images
never pile up on the GPU."""
EXIF_ORIENTATION = 0x0112
_EOI = b"\xff\xd9"


@dataclass(frozen=True)
class DeviceJpeg:
    """A JPEG the device may decode: its bytes, its EXIF orientation (1-8) and size."""

    data: bytes
    orientation: int
    pixels: int  # width x height, for ``DEVICE_BATCH_PIXELS``


def decodes_on_device(decode: str) -> bool:
    """Whether decode mode ``decode`` decodes on the model's device."""
    return decode in DECODE_DEVICES


def check_decode_device(decode: str, device: torch.device) -> None:
    """Refuse a device decode on a device that does not run it: its pixels would come from
    another decoder than the feature set's other rows (libjpeg-turbo on a CPU)."""
    allowed = DECODE_DEVICES.get(decode)
    if allowed is not None and device.type not in allowed:
        raise TransferPipeError(
            f"--decode {decode} decodes JPEGs on a CUDA device; this run's device is "
            f"{device.type}: run it where CUDA is, or use --decode dct or full (a feature "
            "set of its own)"
        )


def device_jpeg(data: bytes) -> DeviceJpeg | None:
    """``data`` as a JPEG for the device decoder, or None when Pillow must decode it: not
    a plain JPEG, CMYK (nvJPEG has no Adobe CMYK), a profile ``decode_image`` would apply
    or note, over Pillow's pixel limit (Pillow gives the reason), or not ending at its EOI
    marker (truncated: libjpeg and nvJPEG differ on what they make of it; Pillow decides)."""
    if not data.rstrip(b"\x00").endswith(_EOI):
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:  # the header only: no pixels decoded
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return None
            if image.info.get("adobe_transform") == 0 and image.mode == "RGB":
                return None  # RGB stored as is, not YCbCr: rare, and Pillow reads it
            width, height = image.size
            if width * height > DEFAULT_MAX_PIXELS:
                return None
            if changes_colours(image.info.get("icc_profile"), image.mode):
                return None
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # whatever is wrong with it, Pillow's decode says what
        return None
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        orientation = 1  # as ImageOps.exif_transpose: an unknown value turns nothing
    return DeviceJpeg(data, orientation, width * height)


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """``image`` [C, H, W] turned as its EXIF ``orientation`` says (as
    ``ImageOps.exif_transpose`` turns a Pillow image)."""
    import torch

    if orientation in (5, 7):  # a transpose first: 5 is that alone, 7 also rotates 180
        image = image.transpose(1, 2)
    turns = {3: 2, 6: 3, 7: 2, 8: 1}.get(orientation, 0)  # quarter turns counter-clockwise
    if turns:
        image = torch.rot90(image, turns, dims=(1, 2))
    if orientation in (2, 4):
        image = image.flip(2 if orientation == 2 else 1)
    return image


def decode_jpegs(datas: Sequence[bytes], device: torch.device | str) -> list[torch.Tensor | None]:
    """Each JPEG decoded on ``device`` as uint8 [3, H, W], in one batched call; when that
    fails (one bad file fails it, and it returns nothing), each alone: None for one the
    decoder refuses."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    # bytearray: torch wants a writable buffer (the copy is small next to the decode).
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    decoded: list[torch.Tensor | None] = []
    for one in encoded:
        try:
            decoded.extend(decode_jpeg([one], mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            decoded.append(None)
    return decoded


def _groups(jpegs: Sequence[DeviceJpeg], budget: int) -> Iterator[range]:
    """Consecutive positions of ``jpegs`` with at most ``budget`` pixels together (one
    larger photo makes a group alone)."""
    start, total = 0, 0
    for i, jpeg in enumerate(jpegs):
        if i > start and total + jpeg.pixels > budget:
            yield range(start, i)
            start, total = i, 0
        total += jpeg.pixels
    if start < len(jpegs):
        yield range(start, len(jpegs))


def device_pixels(
    jpegs: Sequence[DeviceJpeg],
    preprocess: TensorPreprocess,
    device: torch.device | str,
    budget: int = DEVICE_BATCH_PIXELS,
) -> list[torch.Tensor | None]:
    """Each JPEG decoded, turned upright and resized on ``device``: uint8
    [image_size, image_size, 3], or None where the decoder refused it."""
    resized: list[torch.Tensor | None] = []
    for group in _groups(jpegs, budget):
        decoded = decode_jpegs([jpegs[i].data for i in group], device)
        for i, image in zip(group, decoded, strict=True):
            oriented = None if image is None else upright(image, jpegs[i].orientation)
            resized.append(None if oriented is None else preprocess.tensor_pixels(oriented))
    return resized
