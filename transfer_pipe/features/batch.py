"""The one batch kernel: images in, pooled features per layer and a failure per image out.

``embed_images`` composes the frozen forward pass on ``data.batch.prepare_batch`` (decode
and preprocess), so embed shards and predict share every step and every failure reason
with the fine-tuning loader, which uses the decode half alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

from transfer_pipe.data.batch import prepare_batch
from transfer_pipe.features.embedder import EmbedderConfig, get_embedder

T = TypeVar("T")


@dataclass(frozen=True)
class Embedded:
    """Features of the images that decoded, and why the others did not."""

    features: dict[str, np.ndarray]  # layer -> float32 [len(ok), dim]; {} when none decoded
    ok: tuple[int, ...]  # positions (in the items given) of the feature rows, in order
    failures: dict[int, str]  # position -> reason, for every other item

    def placed(self, rows: Sequence[int]) -> Embedded:
        """The same result with item ``i`` renamed ``rows[i]`` (e.g. its row in a shard)."""
        return Embedded(
            self.features,
            tuple(rows[i] for i in self.ok),
            {rows[i]: reason for i, reason in self.failures.items()},
        )


def embed_images(
    items: Sequence[T],
    load: Callable[[T], Image.Image],
    embedder: EmbedderConfig,
    batch_size: int,
) -> Embedded:
    """Decode (``load`` raises DecodeError for a bad image), preprocess with
    ``embedder.preprocessing`` and run the frozen forward pass, ``batch_size`` images at a
    time. The model is loaded once per process, and only if some image decodes."""
    ok: list[int] = []
    failures: dict[int, str] = {}
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(items), batch_size):
        inputs = prepare_batch(items[start : start + batch_size], load, embedder.preprocessing)
        failures.update({start + i: reason for i, reason in inputs.failures.items()})
        if not inputs.ok:
            continue
        for layer, values in get_embedder(embedder)(inputs.images).items():
            parts.setdefault(layer, []).append(values)
        ok.extend(start + i for i in inputs.ok)
    features = {layer: np.concatenate(values) for layer, values in parts.items()}
    return Embedded(features, tuple(ok), failures)
