"""The kernel's options for a GPU, checked on a CPU: a decode on the device (the batched
``torchvision.io.decode_jpeg`` on device "cpu" standing in for nvJPEG) through
``embed_images``, and ``--compile`` wired to the model a worker caches."""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.io

from tests.support.photos import crop, encode, source_photos
from transfer_pipe.backbones import get_backbone
from transfer_pipe.data.decode import decode_image
from transfer_pipe.data.device_decode import DECODE_DEVICES
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.features import embedder as embedder_module
from transfer_pipe.features.batch import embed_images
from transfer_pipe.features.embedder import Embedder
from transfer_pipe.features.tasks import EmbedderConfig


def _config(decode: str = "full", compile: bool = False) -> EmbedderConfig:
    preprocessing = get_backbone("tiny_test").preprocessing.replace(decode=decode)
    return EmbedderConfig(
        "tiny_test", None, ("penultimate",), preprocessing, "cpu", threads=1, compile=compile
    )


@pytest.fixture(scope="module")
def files() -> list[bytes]:
    """Real photos: JPEGs the device takes, a CMYK one and a WebP it leaves to Pillow, a
    truncated one, and one whose Huffman table every decoder refuses."""
    rng = np.random.default_rng(3)
    photos = [crop(rng, source_photos()[name], (320, 240)) for name in ("china", "rocket")]
    cmyk = io.BytesIO()
    photos[1].convert("CMYK").save(cmyk, "JPEG")
    good = encode(photos[0], "jpeg")
    bogus = bytearray(good)
    dht = bogus.index(b"\xff\xc4")
    bogus[dht + 5 : dht + 21] = b"\xff" * 16
    return [
        good,
        cmyk.getvalue(),
        good[: len(good) // 2],
        encode(photos[1], "progressive"),
        bytes(bogus),
        encode(photos[1], "webp"),
    ]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    real = torchvision.io.decode_jpeg

    def spy(input: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(input))
        return real(input, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", spy)
    return seen


def test_the_kernel_decodes_on_the_device_with_the_failures_of_the_cpu(
    files: list[bytes], calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu = embed_images(files, decode_image, _config("full"), 4)
    monkeypatch.setitem(DECODE_DEVICES, "nvjpeg", ("cuda", "cpu"))
    device = embed_images(files, decode_image, _config("nvjpeg"), 4, read=bytes)
    # Mutation seen failing here: the kernel ignoring the decode mode (no device call).
    # Batch 1: the good and the progressive JPEG; batch 2: the bogus one, then alone.
    assert calls == [2, 1, 1]
    assert (device.ok, device.failures) == (cpu.ok, cpu.failures)
    assert device.ok == (0, 1, 3, 5)
    assert sorted(r.split(":")[0] for r in device.failures.values()) == ["corrupt", "truncated"]
    a, b = cpu.features["penultimate"], device.features["penultimate"]
    assert float(np.abs(a - b).max() / np.abs(a).max()) < 0.02


def test_the_kernel_refuses_a_device_decode_before_it_decodes_anything(
    files: list[bytes], calls: list[int]
) -> None:
    with pytest.raises(TransferPipeError, match="this run's device is cpu"):
        embed_images(files, decode_image, _config("nvjpeg"), 4, read=bytes)
    # Mutation seen failing here: the check left to the embedder, which is built after
    # the first batch is decoded ([2]).
    assert calls == []


def test_compile_compiles_the_cached_model_on_cuda_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No forward pass runs: torch.compile only wraps the model until its first call (a
    compile on this CPU takes over a minute for EfficientNet-Lite0)."""
    with caplog.at_level(logging.WARNING, logger="transfer_pipe"):
        on_cpu = Embedder(_config(compile=True))
    assert on_cpu.tap.model._compiled_call_impl is None
    assert "--compile: the model runs eager on cpu" in caplog.text
    monkeypatch.setattr(embedder_module, "compiles", lambda device: True)  # as on CUDA
    # Mutation seen failing here: EmbedderConfig.compile not read by the embedder.
    assert Embedder(_config(compile=True)).tap.model._compiled_call_impl is not None
    assert Embedder(_config(compile=False)).tap.model._compiled_call_impl is None
    assert _config(compile=True) != _config(compile=False)  # two cached models


def test_pixels_decoded_on_the_device_are_padded_there_and_not_pinned() -> None:
    from transfer_pipe.features.batch import padded
    from transfer_pipe.features.embedder import host_pixels

    pixels = torch.ones((2, 4, 4, 3), dtype=torch.uint8, device="meta")
    full = padded(pixels, 5)
    # Mutation seen failing here: padding made on the host (cat of meta and cpu fails).
    assert full.shape == (5, 4, 4, 3) and full.device.type == "meta"
    assert host_pixels(full, torch.device("cuda")) is full  # pin_memory of a device tensor fails
