"""Training images: manifest URIs decoded by the same robust decoder as the embed flow,
augmented, preprocessed and batched by a torch DataLoader.

Batches are decoded by DataLoader worker processes where the calling process may have
children, and by a thread pool inside the calling process where it may not: a daemonic
process (a Dask worker's) cannot start DataLoader workers. Threads are GIL-bound (about
1,100 images/s on 16 cores), worker processes scale with the cores.
Every random choice comes from ``(seed, epoch, index)``, so an epoch's batches do not
depend on thread timing or on whether the run was resumed.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from queue import Queue
from threading import Thread
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from transfer_pipe.backbones import Preprocessing
from transfer_pipe.cluster import threads_per_task
from transfer_pipe.data.batch import MapItems, prepare_batch, prepare_image
from transfer_pipe.data.decode import DecodeError
from transfer_pipe.data.read import read_image

SMALL_IMAGE = 64  # greyscale images up to this side get the "affine" augmentation


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W] float32
    targets: torch.Tensor  # [B] int64
    rows: list[int]  # the dataset rows in this batch, in order
    failed: list[tuple[int, str]] = field(default_factory=list)  # (row, reason) skipped


def choose_augmentation(uris: Sequence[str], requested: str, probe: int = 16) -> str:
    """``auto``: "affine" for small greyscale images (digits, clothes, scans), else
    "crop-flip" (photos); decided on the first ``probe`` readable images."""
    if requested != "auto":
        return requested
    for uri in uris[:probe]:
        try:
            image = read_image(uri)
        except DecodeError:
            continue
        pixels = np.asarray(image)
        grey = bool((pixels == pixels[..., :1]).all())
        if not grey or max(image.size) > SMALL_IMAGE:
            return "crop-flip"
    return "affine"


def augment(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """One random variant of ``image`` (an 8-bit RGB image)."""
    if kind == "none":
        return image
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if kind == "affine":
        return _random_affine(image, rng)
    return _random_resized_crop(image, rng)


def _random_affine(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate up to 10 degrees, scale by 0.9-1.1, shift up to 10% of the side; uncovered
    pixels take the median border color (the background of small centred images)."""
    w, h = image.size
    angle = math.radians(rng.uniform(-10, 10))
    scale = rng.uniform(0.9, 1.1)
    tx, ty = rng.uniform(-0.1, 0.1) * w, rng.uniform(-0.1, 0.1) * h
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    cx, cy = w / 2, h / 2
    # PIL maps each output pixel back to an input pixel: the inverse transform.
    matrix = (
        cos, sin, cx - cos * (cx + tx) - sin * (cy + ty),
        -sin, cos, cy + sin * (cx + tx) - cos * (cy + ty),
    )  # fmt: skip
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    fill = tuple(int(v) for v in np.median(border, axis=0))
    return image.transform(
        image.size, Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR, fillcolor=fill
    )


def _random_resized_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A crop of 35-100% of the area with aspect ratio 3/4-4/3 (torchvision's recipe)."""
    w, h = image.size
    for _ in range(10):
        area = w * h * rng.uniform(0.35, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return image.crop((left, top, left + cw, top + ch))
    return image


class ImageRows(Dataset[Batch]):
    """Images by manifest URI with integer targets; ``__getitems__`` returns a whole
    decoded batch, images that fail to decode left out and reported in ``Batch.failed``."""

    def __init__(
        self,
        uris: Sequence[str],
        targets: np.ndarray,
        preprocessing: Preprocessing,
        augmentation: str = "none",
        seed: int = 0,
        threads: int = 1,
    ) -> None:
        self.uris = list(uris)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.preprocessing = preprocessing
        self.augmentation = augmentation
        self.seed = seed
        self.threads = threads
        self.epoch = 0
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.uris)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None}  # a pool does not travel between processes

    def set_epoch(self, epoch: int) -> None:
        """Augmentations are drawn per (seed, epoch, row)."""
        self.epoch = epoch

    def image(self, index: int) -> Image.Image:
        """Row ``index`` decoded and augmented; raises DecodeError for a bad image."""
        image = read_image(self.uris[index])
        if self.augmentation != "none":
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image = augment(image, self.augmentation, rng)
        return image

    def load(self, index: int) -> torch.Tensor | DecodeError:
        """The model input for row ``index``, or the DecodeError that kept it out."""
        return prepare_image(index, self.image, self.preprocessing)

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        in_worker = torch.utils.data.get_worker_info() is not None  # a process per batch
        map_items: MapItems[int, torch.Tensor | DecodeError] = map
        if self.threads > 1 and not in_worker:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
            map_items = self._pool.map
        inputs = prepare_batch(indices, self.image, self.preprocessing, map_items)
        good = [indices[i] for i in inputs.ok]
        failed = [(indices[i], reason) for i, reason in sorted(inputs.failures.items())]
        return Batch(inputs.images, torch.from_numpy(self.targets[good]), good, failed)


class EpochSampler(Sampler[int]):
    """A permutation of the rows drawn from ``(seed, epoch)`` (or their order, unshuffled)."""

    def __init__(self, dataset: ImageRows, shuffle: bool) -> None:
        self.dataset = dataset
        self.shuffle = shuffle

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if not self.shuffle:
            return iter(range(n))
        order = np.random.default_rng([self.dataset.seed, self.dataset.epoch]).permutation(n)
        return iter(order.tolist())


def _already_batched(batch: Any) -> Any:
    return batch  # __getitems__ made the batch already


MAX_LOADERS = 8  # decode processes or threads: more stop paying off against one GPU


def loader_workers(requested: int | None) -> int:
    """DataLoader worker processes: ``requested``, or one per core but one (at most
    MAX_LOADERS) on machines with more than 2 cores; always 0 inside a daemonic process."""
    if multiprocessing.current_process().daemon:
        return 0
    if requested is not None:
        return requested
    cores = os.cpu_count() or 1
    return min(MAX_LOADERS, cores - 1) if cores > 2 else 0


def loader_threads(requested: int | None) -> int:
    """Decode threads when there are no worker processes: ``requested``, or this task's
    share of the cores (at most MAX_LOADERS)."""
    return requested or min(MAX_LOADERS, threads_per_task())


def make_loader(
    dataset: ImageRows, batch_size: int, shuffle: bool, workers: int = 0
) -> DataLoader[Batch]:
    """A DataLoader over whole batches: ``workers`` processes decode them, or with 0,
    ``dataset.threads`` threads of this process."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(dataset, shuffle),
        collate_fn=_already_batched,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
    )


def prefetch(batches: Iterator[Batch], depth: int = 2) -> Iterator[Batch]:
    """Decode the next ``depth`` batches in a background thread while the model trains."""
    queue: Queue[Batch | BaseException | None] = Queue(maxsize=depth)

    def produce() -> None:
        try:
            for batch in batches:
                queue.put(batch)
        except BaseException as err:  # re-raised in the consumer
            queue.put(err)
        else:
            queue.put(None)

    Thread(target=produce, daemon=True, name="prefetch").start()
    while (item := queue.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item
