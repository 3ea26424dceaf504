"""Images to model inputs: the decode -> preprocess half of the one batch kernel.

Embed shards and predict compose the frozen forward pass on it
(``transfer_pipe.features.batch``); the fine-tuning loader uses it alone, since it runs
its own forward pass while training. So every path turns a bad image into the same thing:
a failure reason for that image, never an exception for the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from PIL import Image

from transfer_pipe.data.decode import DecodeError, decode_image, decode_note
from transfer_pipe.data.device_decode import DeviceJpeg, device_jpeg, device_pixels

T = TypeVar("T")
R = TypeVar("R")


class Preprocess(Protocol):
    """A decoded RGB image -> a float32 [3, H, W] model input, in two halves: ``pixels``
    (resize, uint8 [H, W, C]) per image and ``normalize`` (uint8 [B, H, W, C] -> float32
    [B, 3, H, W]) per batch. ``backbones.Preprocessing`` is one; stated as a protocol
    because ``data`` does not import ``backbones``."""

    @property
    def image_size(self) -> int: ...

    def pixels(self, image: Image.Image) -> np.ndarray: ...

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, image: Image.Image) -> torch.Tensor: ...


class TensorPreprocess(Preprocess, Protocol):
    """A ``Preprocess`` that also resizes an image decoded into a tensor, on its device:
    uint8 [C, H, W] -> uint8 [H', W', 3] (``backbones.Preprocessing.tensor_pixels``)."""

    def tensor_pixels(self, image: torch.Tensor) -> torch.Tensor: ...


MapItems = Callable[[Callable[[T], R], Iterable[T]], Iterator[R]]
"""``map`` itself, or a thread pool's ``map``: how a batch's images are spread out
(the pool's threads decode and resize; Pillow releases the GIL while it does)."""


@dataclass(frozen=True)
class Pixels:
    """One batch, decoded and resized but not yet normalised (a quarter of the bytes of
    float inputs: what is copied to a GPU), and why the images left out were left out."""

    pixels: torch.Tensor  # uint8 [len(ok), H, W, 3], in the order of ``ok``
    ok: tuple[int, ...]  # positions (in the items given) of the images in ``pixels``
    failures: dict[int, str]  # position -> reason, for every other item
    notes: dict[int, str] = field(default_factory=dict)  # position -> decode note, of ``ok``


@dataclass(frozen=True)
class Inputs:
    """One batch, decoded and preprocessed, and why the images left out were left out."""

    images: torch.Tensor  # float32 [len(ok), 3, H, W], in the order of ``ok``
    ok: tuple[int, ...]  # positions (in the items given) of the images in ``images``
    failures: dict[int, str]  # position -> reason, for every other item


def failure_reason(err: DecodeError) -> str:
    """The text recorded for an image that could not be used, e.g. ``truncated: ...``."""
    return str(err) or type(err).__name__


def prepare_image(
    item: T, load: Callable[[T], Image.Image], preprocess: Preprocess
) -> torch.Tensor | DecodeError:
    """``preprocess(load(item))``, or the DecodeError that kept the image out."""
    try:
        return preprocess(load(item))
    except DecodeError as err:
        return err


def resize_image(
    item: T, load: Callable[[T], Image.Image], preprocess: Preprocess
) -> tuple[np.ndarray, str] | DecodeError:
    """``preprocess.pixels(load(item))`` and what decoding noted about it, or the
    DecodeError that kept the image out."""
    try:
        image = load(item)
        return preprocess.pixels(image), decode_note(image)
    except DecodeError as err:
        return err


def prepare_pixels(
    items: Sequence[T],
    load: Callable[[T], Image.Image],
    preprocess: Preprocess,
    map_items: MapItems[T, Any] = map,
) -> Pixels:
    """Decode every item with ``load`` (e.g. ``read_image`` for URIs, ``decode_image`` for
    bytes; it raises DecodeError for a bad image) and resize it; see ``Pixels``."""

    def one(item: T) -> tuple[np.ndarray, str] | DecodeError:
        return resize_image(item, load, preprocess)

    prepared: list[tuple[np.ndarray, str] | DecodeError] = list(map_items(one, items))
    resized = [x for x in prepared if not isinstance(x, DecodeError)]
    ok = tuple(i for i, x in enumerate(prepared) if not isinstance(x, DecodeError))
    failures = {i: failure_reason(x) for i, x in enumerate(prepared) if isinstance(x, DecodeError)}
    notes = {i: x[1] for i, x in enumerate(prepared) if not isinstance(x, DecodeError) and x[1]}
    size = preprocess.image_size
    # One uint8 buffer, filled in place: greyscale [H, W, 1] broadcasts to its 3 channels.
    batch = np.empty((len(resized), size, size, 3), dtype=np.uint8)
    for row, (pixels, _) in enumerate(resized):
        batch[row] = pixels
    return Pixels(torch.from_numpy(batch), ok, failures, notes)


def prepare_batch(
    items: Sequence[T],
    load: Callable[[T], Image.Image],
    preprocess: Preprocess,
    map_items: MapItems[T, Any] = map,
) -> Inputs:
    """Decode every item with ``load`` (it raises DecodeError for a bad image), resize and
    normalise it; see ``Inputs``. ``images`` is in channels_last memory."""
    pixels = prepare_pixels(items, load, preprocess, map_items)
    return Inputs(preprocess.normalize(pixels.pixels), pixels.ok, pixels.failures)


Routed = DeviceJpeg | tuple[np.ndarray, str] | DecodeError  # one item, once read


def prepare_pixels_on(
    items: Sequence[T],
    read: Callable[[T], bytes],
    preprocess: TensorPreprocess,
    device: torch.device | str,
    map_items: MapItems[Any, Any] = map,
    decode: Callable[[bytes], Image.Image] = decode_image,
) -> Pixels:
    """``prepare_pixels`` with the JPEGs decoded on ``device`` (``data.device_decode``):
    ``read`` gives an item's bytes (or raises DecodeError), ``map_items``' threads read
    them and decode, with ``decode``, what the device cannot (and, after it, what it
    refused); the pixels are on ``device``. The same ``ok``, failures and notes as
    ``prepare_pixels``."""

    def route(item: T) -> Routed:
        try:
            data = read(item)
        except DecodeError as err:
            return err
        jpeg = device_jpeg(data)
        return jpeg if jpeg is not None else resize_image(data, decode, preprocess)

    routed: list[Routed | torch.Tensor] = list(map_items(route, items))
    jpegs = {i: r for i, r in enumerate(routed) if isinstance(r, DeviceJpeg)}
    on_device = device_pixels(list(jpegs.values()), preprocess, device)
    refused = [i for i, pixels in zip(jpegs, on_device, strict=True) if pixels is None]
    for i, pixels in zip(jpegs, on_device, strict=True):
        routed[i] = pixels if pixels is not None else routed[i]

    def on_host(i: int) -> tuple[np.ndarray, str] | DecodeError:
        return resize_image(jpegs[i].data, decode, preprocess)

    for i, result in zip(refused, list(map_items(on_host, refused)), strict=True):
        routed[i] = result
    return _assembled(routed, preprocess.image_size, device)


def _assembled(
    results: Sequence[Routed | torch.Tensor], size: int, device: torch.device | str
) -> Pixels:
    """One uint8 batch on ``device`` from device rows (tensors) and host rows (arrays)."""
    ok = tuple(i for i, r in enumerate(results) if not isinstance(r, DecodeError))
    failures = {i: failure_reason(r) for i, r in enumerate(results) if isinstance(r, DecodeError)}
    notes = {i: r[1] for i, r in enumerate(results) if isinstance(r, tuple) and r[1]}
    batch = torch.empty((len(ok), size, size, 3), dtype=torch.uint8, device=device)
    for row, i in enumerate(ok):
        result = results[i]
        if isinstance(result, tuple):  # Pillow's: greyscale [H, W, 1] broadcasts to 3
            batch[row] = torch.tensor(result[0], device=device)  # a copy: read-only arrays
        else:
            assert not isinstance(result, (DeviceJpeg, DecodeError))
            batch[row] = result
    return Pixels(batch, ok, failures, notes)
