"""The feature set a train or fine-tune run reads: a key it was given, or the one it
embeds first from a source. The one place that rule lives: the flows pass the embed
subflow, the plain steps pass ``steps.embed``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from transfer_pipe.config import EmbedConfig
from transfer_pipe.steps.results import EmbedSummary


class Targeted(Protocol):
    """A config that names a feature-set key or an embed run (``TrainConfig``,
    ``FinetuneConfig``; their validation makes sure one of the two is given)."""

    @property
    def feature_set(self) -> str | None: ...

    @property
    def embed(self) -> EmbedConfig | None: ...


def embed_first(config: Targeted, embed: Callable[[EmbedConfig], EmbedSummary]) -> tuple[str, int]:
    """(feature-set key, images embedded by this call): given a source, ``embed`` runs
    first (a no-op that embeds nothing for a feature set already in the store)."""
    if config.embed is not None:
        summary = embed(config.embed)
        return summary.feature_set, summary.embedded
    if config.feature_set is None:
        raise ValueError("the config names neither a feature set nor a source to embed")
    return config.feature_set, 0
