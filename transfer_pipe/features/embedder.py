"""The frozen forward pass: one loaded model per worker process, batched, no autograd."""

from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass

import numpy as np
import torch

from transfer_pipe.backbones import Preprocessing, get_backbone
from transfer_pipe.backbones.taps import LayerTap
from transfer_pipe.cluster import resolve_device, threads_per_task


@dataclass(frozen=True)
class EmbedderConfig:
    """What a worker needs to rebuild the same embedder; hashable, so it keys the cache."""

    backbone: str
    weights_file: str | None
    layers: tuple[str, ...]
    preprocessing: Preprocessing
    device: str = "auto"
    autocast: str = "none"  # "bf16" | "fp16" on CUDA; CPU always runs float32
    threads: int | None = None  # torch intra-op threads; None: cores / threads of this worker


class Embedder:
    """Pooled features of several layers for a batch of preprocessed images."""

    def __init__(self, config: EmbedderConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        spec = get_backbone(config.backbone, config.weights_file)
        model = spec.build().to(self.device).to(memory_format=torch.channels_last)
        self.tap = LayerTap(model, config.layers).eval()

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.device.type != "cuda" or self.config.autocast == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.autocast == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def __call__(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """``batch`` is [B, 3, H, W] float32; returns {layer: float32 [B, dim]}."""
        batch = batch.to(self.device, memory_format=torch.channels_last, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            outputs = self.tap(batch)
        return {name: out.float().cpu().numpy() for name, out in outputs.items()}


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
