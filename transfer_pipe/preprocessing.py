"""Image -> normalised tensor, as one small frozen value that is part of the cache key.

It sits below the backbones and the store because both hold it: a backbone's default
preprocessing, and the preprocessing a feature set, its lineage and a model card were made
with (written as ``Preprocessing.to_dict``, the form every embedding key hashes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.records import Record

if TYPE_CHECKING:
    import torch

RESIZE_MODES = ("squash", "center-crop")
DECODE_MODES = ("full", "dct", "nvjpeg")
"""How a photo is decoded before the resize: ``full``, every pixel; ``dct``, a JPEG much
larger than the input is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain, never
below the input size (``data.decode``); ``nvjpeg``, a JPEG is decoded in full by nvJPEG
on the CUDA device and resized there (``data.device_decode``; one the device cannot
decode as Pillow would, by Pillow). Other formats decode in full with Pillow either way."""
COLOUR_MODES = ("stored", "srgb")
"""``srgb``: an embedded colour profile is converted to sRGB (``data.decode``), as for
every image file since decoding became colour-managed; ``stored``: pixels as stored (IDX
arrays, which carry no profile, and the keys of sets embedded before)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resampling_matrix(
    size: int, out: int, start: float, end: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """float32 [out, size]: the weights by which Pillow's bilinear filter makes ``out``
    samples of the span ``start``..``end`` of ``size`` input samples (a triangle as wide
    as the scale when shrinking, so it antialiases; each row sums to 1), after Pillow's
    ``precompute_coeffs``."""
    import torch

    scale = (end - start) / out
    support = max(scale, 1.0)  # the triangle's half-width, in input samples
    centres = start + (torch.arange(out, dtype=torch.float64) + 0.5) * scale
    lows = torch.clamp((centres - support + 0.5).floor(), min=0)  # Pillow: int(c - s + 0.5)
    highs = torch.clamp((centres + support + 0.5).floor(), max=size)
    inputs = torch.arange(size, dtype=torch.float64)
    weights = torch.clamp(1 - ((inputs[None] - centres[:, None] + 0.5) / support).abs(), min=0)
    inside = (inputs[None] >= lows[:, None]) & (inputs[None] < highs[:, None])
    weights = weights * inside
    return (weights / weights.sum(dim=1, keepdim=True)).float().to(device)


def _to_uint8(values: torch.Tensor) -> torch.Tensor:
    """Rounded and clipped to 8 bits, as Pillow stores each pass of a resize."""
    import torch

    return values.round_().clamp_(0, 255).to(torch.uint8)


def _triple(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    """Validate a per-channel (R, G, B) triple and return it as a tuple of floats."""
    if len(values) != 3:
        raise TransferPipeError(f"preprocessing {name} needs 3 values (R, G, B), got {values!r}")
    r, g, b = (float(v) for v in values)
    return (r, g, b)


@dataclass(frozen=True)
class Preprocessing(Record):
    """How one decoded image becomes a model input.

    ``resize="squash"`` resizes straight to ``image_size x image_size`` (aspect ratio is
    not kept, nothing is cut off); ``"center-crop"`` resizes the shorter side to
    ``image_size`` and keeps the central square. Both use Pillow's bilinear filter,
    which antialiases when shrinking. Pixels are scaled to [0, 1], then normalised
    per channel as ``(x - mean) / std``. ``decode`` (``DECODE_MODES``) says how a JPEG is
    decoded before the resize: it changes pixels, so it is part of the key.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "squash"
    decode: str = "full"
    colour: str = "stored"

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store tuples so specs stay hashable and equal.
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std))
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise TransferPipeError(
                f"preprocessing image_size must be a positive integer, got {self.image_size!r}"
            )
        if self.resize not in RESIZE_MODES:
            raise TransferPipeError(
                f"unknown resize mode {self.resize!r}; use one of {', '.join(RESIZE_MODES)}"
            )
        if self.decode not in DECODE_MODES:
            raise TransferPipeError(
                f"unknown decode mode {self.decode!r}; use one of {', '.join(DECODE_MODES)}"
            )
        if self.colour not in COLOUR_MODES:
            raise TransferPipeError(
                f"unknown colour mode {self.colour!r}; use one of {', '.join(COLOUR_MODES)}"
            )
        if any(s <= 0 for s in self.std):
            raise TransferPipeError(f"preprocessing std must be positive, got {self.std}")

    @property
    def draft_to(self) -> int | None:
        """The smallest side a JPEG may be decoded at (``decode_image(draft_to=...)``)."""
        return self.image_size if self.decode == "dct" else None

    @cached_property
    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel [3] (scale, offset): uint8 pixel * scale + offset is normalised."""
        std = np.asarray(self.std, dtype=np.float32)
        mean = np.asarray(self.mean, dtype=np.float32)
        return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The resized image as uint8 [image_size, image_size, C]: C = 1 for greyscale
        (3x cheaper to resize; ``normalize`` broadcasts it to RGB), else 3."""
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        size = (self.image_size, self.image_size)
        if self.resize == "center-crop":
            # Resizing only the central square (``box``) equals resize-shorter-side then
            # crop, without materialising the larger intermediate image.
            w, h = image.size
            side = min(w, h)
            left, top = (w - side) / 2, (h - side) / 2
            box = (left, top, left + side, top + side)
            image = image.resize(size, Image.Resampling.BILINEAR, box=box)
        elif image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
        return pixels[:, :, None] if pixels.ndim == 2 else pixels

    def tensor_pixels(self, image: torch.Tensor) -> torch.Tensor:
        """``pixels`` for an image already decoded into a tensor, on its device: uint8
        [C, H, W] (C = 1 or 3) -> uint8 [image_size, image_size, 3]. Pillow's bilinear
        filter, box and rounding (``resampling_matrix``; horizontal pass, rounded to 8
        bits, then vertical), as two matrix products: the same pixels as ``pixels`` within
        a level, for the same decoded image."""
        import torch

        height, width = image.shape[1:]
        box = (0.0, 0.0, float(width), float(height))
        if self.resize == "center-crop":
            side = min(width, height)
            left, top = (width - side) / 2, (height - side) / 2
            box = (left, top, left + side, top + side)
        size = self.image_size
        columns = resampling_matrix(width, size, box[0], box[2], image.device)
        rows = resampling_matrix(height, size, box[1], box[3], image.device)
        # Contiguous: a decoder's [C, H, W] is often a view of [H, W, C], whose strided
        # rows make the product many times slower.
        planes = image.to(torch.float32, memory_format=torch.contiguous_format)
        wide = _to_uint8(planes @ columns.T).float()  # [C, H, size]
        resized = _to_uint8(rows @ wide)  # [C, size, size]
        return resized.expand(3, size, size).permute(1, 2, 0)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, C] (C = 1 or 3, any device) -> float32 [B, 3, H, W] normalised,
        in channels_last memory (a view of the [B, H, W, 3] result: no copy, and the
        layout the frozen forward pass runs in).

        One float32 multiply, then one add (two roundings, never a fused multiply-add),
        so a batch normalised here, on CPU or CUDA, equals the images normalised one by one
        bit for bit.
        """
        import torch  # here, not at import: a cache key needs the fields, not torch

        scale, offset = (torch.from_numpy(a).to(pixels.device) for a in self._affine)
        # uint8 * float32 is computed in float32; a greyscale C=1 broadcasts to 3 channels.
        nhwc = torch.mul(pixels, scale)
        nhwc.add_(offset)
        return nhwc.permute(0, 3, 1, 2)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Return the image as a contiguous float32 tensor of shape [3, image_size, image_size]."""
        import torch

        batch = torch.from_numpy(np.array(self.pixels(image)[None]))  # writable: a copy
        return self.normalize(batch)[0].contiguous()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description; equal dicts mean identical tensors (used in cache keys).
        A full decode and stored colours are left out, as before either existed: those keys
        stay valid."""
        described = {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "interpolation": "bilinear",
        }
        if self.decode != "full":
            described["decode"] = self.decode
        if self.colour != "stored":
            described["colour"] = self.colour
        return described

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`."""
        return cls(
            image_size=int(data["image_size"]),
            mean=_triple("mean", data["mean"]),
            std=_triple("std", data["std"]),
            resize=str(data.get("resize", "squash")),
            decode=str(data.get("decode", "full")),
            colour=str(data.get("colour", "stored")),
        )

    def replace(
        self,
        *,
        image_size: int | None = None,
        resize: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        decode: str | None = None,
        colour: str | None = None,
    ) -> Preprocessing:
        """Return a copy with the given fields changed (e.g. a smaller ``image_size``)."""
        given = {
            "image_size": image_size,
            "resize": resize,
            "mean": mean,
            "std": std,
            "decode": decode,
            "colour": colour,
        }
        changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        return dataclasses.replace(self, **changes)
