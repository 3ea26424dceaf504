"""Feeding the forward pass: the next batch is prepared while one runs, on CPU as it was
before, and through pinned memory with non-blocking copies on CUDA only."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.support.images import GOOD_KINDS, truncated_jpeg, write_image
from transfer_pipe.backbones import get_backbone
from transfer_pipe.data.decode import decode_image
from transfer_pipe.features.batch import ahead, batches_ahead, decoder_threads, embed_images
from transfer_pipe.features.embedder import (
    copies_async,
    get_embedder,
    host_pixels,
    to_device,
)
from transfer_pipe.features.tasks import EmbedderConfig

LAYERS = ("stages.1", "penultimate")


def _config() -> EmbedderConfig:
    preprocessing = get_backbone("tiny_test").preprocessing
    return EmbedderConfig("tiny_test", None, LAYERS, preprocessing, device="cpu", threads=1)


@pytest.fixture
def files(tmp_path: Path) -> list[bytes]:
    """Real files of every good kind, twice over, with bad ones in between."""
    good = [
        write_image(tmp_path / f"{n}-{kind}.img", seed=n, kind=kind).read_bytes()
        for n, kind in enumerate(GOOD_KINDS * 2)
    ]
    return [*good[:5], b"", *good[5:11], truncated_jpeg(2), *good[11:], b"not an image"]


def test_the_pipelined_kernel_returns_what_the_sequential_one_did(files: list[bytes]) -> None:
    sequential = embed_images(files, decode_image, _config(), 4, decoders=1, prefetch=0)
    assert len(sequential.ok) == 2 * len(GOOD_KINDS) and len(sequential.failures) == 3
    for decoders, prefetch in [(1, 1), (3, 2), (2, 5)]:
        piped = embed_images(
            files, decode_image, _config(), 4, decoders=decoders, prefetch=prefetch
        )
        # Mutation seen failing: ``ahead`` yielding the newest pending batch
        # (pending.pop()) instead of the oldest puts batches out of order.
        assert (piped.ok, piped.failures) == (sequential.ok, sequential.failures)
        for layer in LAYERS:
            np.testing.assert_array_equal(piped.features[layer], sequential.features[layer])


def test_features_of_pixels_equal_features_of_their_normalised_floats(
    files: list[bytes],
) -> None:
    config = _config()
    result = embed_images(files, decode_image, config, 64)
    good = [decode_image(b) for i, b in enumerate(files) if i in result.ok]
    floats = torch.stack([config.preprocessing(image) for image in good])
    direct = get_embedder(config)(floats)
    for layer in LAYERS:
        np.testing.assert_array_equal(result.features[layer], direct[layer])


def test_the_next_batch_is_prepared_while_the_caller_works_on_this_one() -> None:
    started: list[threading.Event] = [threading.Event() for _ in range(3)]

    def prepare(i: int) -> int:
        started[i].set()
        return i

    batches = ahead(prepare, range(3), depth=1)
    assert next(batches) == 0
    # Mutation seen failing: depth ignored (a plain map) leaves batch 1 unstarted here.
    assert started[1].wait(timeout=10)
    assert list(batches) == [1, 2]
    assert list(ahead(prepare, range(3), depth=0)) == [0, 1, 2]


def test_an_error_preparing_a_batch_is_raised_at_its_turn() -> None:
    seen: list[int] = []

    def prepare(i: int) -> int:
        if i == 2:
            raise ValueError("batch 2")
        return i

    with pytest.raises(ValueError, match="batch 2"):
        for value in ahead(prepare, range(5), depth=2):
            seen.append(value)
    assert seen == [0, 1]


def test_pinned_memory_and_non_blocking_copies_are_for_cuda_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, Any]] = []

    def pin(self: torch.Tensor) -> torch.Tensor:
        calls.append(("pin", None))
        return self

    def to(self: torch.Tensor, device: torch.device, non_blocking: bool = False) -> torch.Tensor:
        calls.append(("to", (device.type, non_blocking)))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    monkeypatch.setattr(torch.Tensor, "to", to)
    pixels = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not copies_async(cpu) and copies_async(cuda) and copies_async(torch.device("cuda:1"))
    to_device(host_pixels(pixels, cpu), cpu)
    # Mutation seen failing: pinning for every device (pin_memory() on a CPU run).
    assert calls == [("to", ("cpu", False))]
    calls.clear()
    to_device(host_pixels(pixels, cuda), cuda)
    # Mutation seen failing: non_blocking=False for CUDA (the copy then waits).
    assert calls == [("pin", None), ("to", ("cuda", True))]


def test_the_kernel_pins_its_batches_when_the_device_is_cuda(
    files: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    devices: list[str] = []

    def spy(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
        devices.append(device.type)
        return pixels  # not pinned: this machine may have no CUDA

    monkeypatch.setattr("transfer_pipe.features.batch.host_pixels", spy)
    embed_images(files[:3], decode_image, _config(), 2)
    assert devices == ["cpu", "cpu"]
    devices.clear()
    # The kernel resolves the run's device as CUDA; the model itself stays on CPU here.
    monkeypatch.setattr(
        "transfer_pipe.features.batch.resolve_device", lambda _: torch.device("cuda")
    )
    embed_images(files[:3], decode_image, _config(), 2)
    # Mutation seen failing: the kernel not calling host_pixels (never pinned on CUDA).
    assert devices == ["cuda", "cuda"]


def test_decoders_are_one_on_cpu_and_the_tasks_share_of_the_cores_on_cuda() -> None:
    # Mutation seen failing: a feeder thread on CPU too (batches_ahead always 1).
    assert batches_ahead("cpu") == 0 and batches_ahead("cuda") == batches_ahead("cuda:1") == 1
    assert decoder_threads("cpu") == 1
    assert decoder_threads("cuda") == decoder_threads("cuda:0") >= 1
