"""The one batch kernel: images in, pooled features per layer and a failure per image out.

``embed_images`` composes the frozen forward pass on ``data.batch.prepare_pixels`` (decode
and resize), so embed shards and predict share every step and every failure reason with
the fine-tuning loader, which uses the decode half alone (``prepare_batch``).

On CUDA the kernel is pipelined: while the forward pass runs on one batch, a feeder thread
decodes and resizes the next (with ``decoders`` threads; Pillow releases the GIL while it
decodes and resizes) and pins it. On CPU it runs one batch after the other (see
``batches_ahead``). The batches, their order and their values are
those of a sequential loop: only the time they are prepared changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from transfer_pipe.cluster import resolve_device, threads_per_task
from transfer_pipe.data.batch import MapItems, Pixels, prepare_pixels, prepare_pixels_on
from transfer_pipe.data.device_decode import check_decode_device, decodes_on_device
from transfer_pipe.features.embedder import EmbedderConfig, get_embedder, host_pixels

T = TypeVar("T")
A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True)
class Embedded:
    """Features of the images that decoded, and why the others did not."""

    features: dict[str, np.ndarray]  # layer -> float32 [len(ok), dim]; {} when none decoded
    ok: tuple[int, ...]  # positions (in the items given) of the feature rows, in order
    failures: dict[int, str]  # position -> reason, for every other item
    notes: dict[int, str] = field(default_factory=dict)  # position -> what decoding noted

    def placed(self, rows: Sequence[int]) -> Embedded:
        """The same result with item ``i`` renamed ``rows[i]`` (e.g. its row in a shard)."""
        return Embedded(
            self.features,
            tuple(rows[i] for i in self.ok),
            {rows[i]: reason for i, reason in self.failures.items()},
            {rows[i]: note for i, note in self.notes.items()},
        )


def batches_ahead(device: str) -> int:
    """Batches prepared while one runs: one on CUDA (the GPU never waits for the host);
    none on CPU, where a feeder thread only takes turns on the cores the forward pass
    already fills, and holds the GIL that the forward pass needs between its ops
    (measured: a lower steady rate with it, 0.65-0.79 of raw against 0.78-0.85)."""
    return 1 if resolve_device(device).type == "cuda" else 0


def decoder_threads(device: str) -> int:
    """Threads that decode one kernel's batches: on CUDA this task's share of the cores
    (the GPU waits for them, not the other way round); on CPU one, since the forward pass
    already keeps this task's cores busy and more decoders would only take turns on them."""
    return threads_per_task() if resolve_device(device).type == "cuda" else 1


def ahead(fn: Callable[[A], R], args: Iterable[A], depth: int = 1) -> Generator[R, None, None]:
    """``map(fn, args)``, with up to ``depth`` calls run ahead in a background thread
    while the caller works on the current result. ``depth=0`` is the plain sequential map.
    An exception from ``fn`` is raised where its result would have been yielded."""
    if depth < 1:
        yield from map(fn, args)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="feeder") as feeder:
        pending: deque[Future[R]] = deque()
        try:
            for arg in args:
                pending.append(feeder.submit(fn, arg))
                if len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # the caller stopped early: start nothing more
                future.cancel()


def embed_images(
    items: Sequence[T],
    load: Callable[[T], Image.Image],
    embedder: EmbedderConfig,
    batch_size: int,
    *,
    read: Callable[[T], bytes] | None = None,
    decoders: int | None = None,
    prefetch: int | None = None,
) -> Embedded:
    """Decode (``load`` raises DecodeError for a bad image), preprocess with
    ``embedder.preprocessing`` and run the frozen forward pass, ``batch_size`` images at a
    time, the next ``prefetch`` batches prepared while one runs (0: one after the other;
    default ``batches_ahead``), each by ``decoders`` threads (default ``decoder_threads``).
    The model is loaded once per process, and only if some image decodes.

    A decode on the device (``--decode nvjpeg``) needs ``read``, an item's bytes (raising
    DecodeError when they cannot be had): JPEGs are decoded on the embedder's device,
    what it cannot decode by ``data.decode.decode_image`` (``load`` is not called)."""
    device = resolve_device(embedder.device)
    on_device = decodes_on_device(embedder.preprocessing.decode)
    if on_device:
        check_decode_device(embedder.preprocessing.decode, device)
        if read is None:
            raise ValueError("a decode on the device needs read(item) -> bytes")
    threads = decoders or decoder_threads(embedder.device)
    depth = batches_ahead(embedder.device) if prefetch is None else prefetch
    ok: list[int] = []
    failures: dict[int, str] = {}
    notes: dict[int, str] = {}
    parts: dict[str, list[np.ndarray]] = {}
    with ExitStack() as stack:
        map_items: MapItems[T, Any] = map
        if threads > 1:
            pool = stack.enter_context(ThreadPoolExecutor(threads, thread_name_prefix="decode"))
            map_items = pool.map

        def prepare(start: int) -> Pixels:
            batch = items[start : start + batch_size]
            if on_device:
                assert read is not None
                pixels = prepare_pixels_on(batch, read, embedder.preprocessing, device, map_items)
            else:
                pixels = prepare_pixels(batch, load, embedder.preprocessing, map_items)
            if not pixels.ok:
                return pixels
            full = padded(pixels.pixels, batch_size)
            return Pixels(host_pixels(full, device), pixels.ok, pixels.failures, pixels.notes)

        starts = range(0, len(items), batch_size)
        # Closed on the way out, so an error in the forward pass stops the feeder too.
        batches = stack.enter_context(closing(ahead(prepare, starts, depth)))
        for start, inputs in zip(starts, batches, strict=True):
            failures.update({start + i: reason for i, reason in inputs.failures.items()})
            notes.update({start + i: note for i, note in inputs.notes.items()})
            if not inputs.ok:
                continue
            embedded = get_embedder(embedder).embed_pixels(inputs.pixels)
            for layer, values in embedded.items():
                parts.setdefault(layer, []).append(values[: len(inputs.ok)])
            ok.extend(start + i for i in inputs.ok)
    features = {layer: np.concatenate(values) for layer, values in parts.items()}
    return Embedded(features, tuple(ok), failures, notes)


def padded(pixels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``pixels`` [k, ...] with zero images after them up to ``batch_size``: every forward
    pass runs at one batch size, so an image's features do not depend on how many images
    shared its batch (a CPU's kernels pick other blockings for other batch sizes and
    thread counts: the last few bits differ). An increment's rows then equal, bit for
    bit, the rows a clean embed of the same folder writes."""
    missing = batch_size - pixels.shape[0]
    if missing <= 0:
        return pixels
    zeros = torch.zeros((missing, *pixels.shape[1:]), dtype=pixels.dtype, device=pixels.device)
    return torch.cat([pixels, zeros])
