"""Images to model inputs: the decode -> preprocess half of the one batch kernel.

Embed shards and predict compose the frozen forward pass on it
(``transfer_pipe.features.batch``); the fine-tuning loader uses it alone, since it runs
its own forward pass while training. So every path turns a bad image into the same thing:
a failure reason for that image, never an exception for the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
from PIL import Image

from transfer_pipe.data.decode import DecodeError

T = TypeVar("T")
R = TypeVar("R")


class Preprocess(Protocol):
    """A decoded RGB image -> a float32 [3, H, W] model input (``backbones.Preprocessing``
    is one; stated as a protocol because ``data`` does not import ``backbones``)."""

    @property
    def image_size(self) -> int: ...

    def __call__(self, image: Image.Image) -> torch.Tensor: ...


MapItems = Callable[[Callable[[T], R], Iterable[T]], Iterator[R]]
"""``map`` itself, or a thread pool's ``map``: how a batch's images are spread out."""


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


def prepare_batch(
    items: Sequence[T],
    load: Callable[[T], Image.Image],
    preprocess: Preprocess,
    map_items: MapItems[T, torch.Tensor | DecodeError] = map,
) -> Inputs:
    """Decode every item with ``load`` (e.g. ``read_image`` for URIs, ``decode_image`` for
    bytes; it raises DecodeError for a bad image) and preprocess it; see ``Inputs``."""

    def one(item: T) -> torch.Tensor | DecodeError:
        return prepare_image(item, load, preprocess)

    prepared = list(map_items(one, items))
    ok = tuple(i for i, x in enumerate(prepared) if isinstance(x, torch.Tensor))
    failures = {i: failure_reason(x) for i, x in enumerate(prepared) if isinstance(x, DecodeError)}
    tensors = [x for x in prepared if isinstance(x, torch.Tensor)]
    size = preprocess.image_size
    images = torch.stack(tensors) if tensors else torch.empty(0, 3, size, size)
    return Inputs(images, ok, failures)
