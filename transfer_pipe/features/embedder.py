"""The frozen forward pass: one loaded model per worker process, batched, no autograd."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading

import numpy as np
import torch

from transfer_pipe.backbones import get_backbone
from transfer_pipe.backbones.taps import LayerTap
from transfer_pipe.cluster import resolve_device, threads_per_task
from transfer_pipe.data.device_decode import check_decode_device
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.features.tasks import EmbedderConfig

logger = logging.getLogger(__name__)


class Embedder:
    """Pooled features of several layers for a batch of preprocessed images."""

    def __init__(self, config: EmbedderConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        check_autocast(config.autocast, self.device)
        check_decode_device(config.preprocessing.decode, self.device)
        spec = get_backbone(config.backbone, config.weights_file, config.stores)
        model = spec.build().to(self.device).to(memory_format=torch.channels_last)
        self.tap = LayerTap(model, config.layers).eval()
        if config.compile and compiles(self.device):
            # The model, not the tap: the tap's hooks keep their captures per thread, which
            # a compiled graph cannot hold; the graph breaks at each tapped layer instead.
            # Every batch has one shape (``features.batch.padded``): compiled once.
            model.compile(dynamic=False)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.config.autocast == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.autocast == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def __call__(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """``batch`` is [B, 3, H, W] float32; returns {layer: float32 [B, dim]}."""
        batch = to_device(batch, self.device).contiguous(memory_format=torch.channels_last)
        return self._forward(batch)

    def embed_pixels(self, pixels: torch.Tensor) -> dict[str, np.ndarray]:
        """``pixels`` is uint8 [B, H, W, 3] (``data.batch.Pixels``; pinned when the device
        is CUDA, see ``host_pixels``): copied to the device as uint8, a quarter of the
        bytes of float inputs, and normalised there, already in channels_last; returns
        {layer: float32 [B, dim]}, equal bit for bit to ``self(normalised batch)``."""
        batch = self.config.preprocessing.normalize(to_device(pixels, self.device))
        return self._forward(batch)

    def _forward(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        with torch.inference_mode(), self._autocast():
            outputs = self.tap(batch)
        return {name: out.float().cpu().numpy() for name, out in outputs.items()}


def check_autocast(autocast: str, device: torch.device) -> None:
    """A reduced-precision forward pass the device runs: bfloat16 on CUDA or a CPU (fast
    where the CPU has AVX-512 BF16 or AMX), float16 on CUDA only (a CPU would run it in
    slow reference kernels)."""
    if autocast == "fp16" and device.type != "cuda":
        raise TransferPipeError(
            f"--autocast fp16 needs a CUDA device; this run's device is {device.type}: "
            "use --autocast bf16 on a CPU, or none"
        )


def compiles(device: torch.device) -> bool:
    """Whether ``--compile`` compiles the model on ``device``: on CUDA. Elsewhere the model
    runs eager, with a warning: a CPU compile takes minutes of a worker's first batch for
    little, and the features are the same either way (a local run refuses it earlier,
    ``steps.embed``; a cluster's CPU worker cannot refuse without failing its shard)."""
    if device.type == "cuda":
        return True
    logger.warning("--compile: the model runs eager on %s (torch.compile on CUDA only)", device)
    return False


def copies_async(device: torch.device) -> bool:
    """Whether host batches bound for ``device`` go through pinned memory with
    non-blocking copies: on CUDA only (elsewhere pinning costs a copy and buys nothing,
    and without a CUDA driver it fails)."""
    return device.type == "cuda"


def host_pixels(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``pixels`` ready to be copied to ``device``: in page-locked memory for CUDA (the
    copy can then run asynchronously, by DMA), else as they are. Called by the thread
    that assembles the next batch, so that pinning overlaps the running forward pass."""
    on_host = pixels.device.type == "cpu"  # pixels decoded on the device stay there
    return pixels.pin_memory() if on_host and copies_async(device) else pixels


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``batch`` on ``device``; a non-blocking copy for CUDA (ordered before the kernels
    queued after it on the same stream; the host tensor stays referenced until the
    results are read back, which synchronises)."""
    return batch.to(device, non_blocking=copies_async(device))


def use_threads(config: EmbedderConfig) -> None:
    """Set torch's intra-op threads for the calling thread (OpenMP counts them per thread).

    Without a configured count, the cores are split between the threads of this Dask
    worker, so that worker threads and torch threads do not oversubscribe the machine.
    """
    torch.set_num_threads(config.threads or threads_per_task())


_LOADING = threading.Lock()


@functools.lru_cache(maxsize=2)
def _cached_embedder(config: EmbedderConfig) -> Embedder:
    return Embedder(config)


def get_embedder(config: EmbedderConfig) -> Embedder:
    """The embedder for ``config``, loaded once per process and shared by its threads."""
    with _LOADING:  # two threads asking at once must not load the model twice
        return _cached_embedder(config)
