"""The feature set a train or fine-tune run reads: a key it was given, or the one it
embeds first from a source. The one place that rule lives: ``run_config`` reads it from a
run's flat values (the CLI's arguments, a flow's parameters); ``embed_first`` acts on it,
the flows passing the embed subflow and the plain steps ``steps.embed``."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from transfer_pipe.config import (
    DEFAULT_STORE,
    SHARED_OPTIONS,
    EmbedConfig,
    TaskOptions,
    options,
    split_run_values,
)
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.steps.results import EmbedSummary
from transfer_pipe.store import open_store

C = TypeVar("C")


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


def run_config(config_class: type[C], values: Mapping[str, Any]) -> C:
    """The config of one run from its flat ``values`` (``config.run_options``), as the CLI
    and the flows' parameter forms give them. For heads and fine-tuning runs, ``source``
    is a feature-set key when the store holds one by that name (options that choose what
    to embed are then refused: the feature set fixes them; the store's, the device and the
    Dask cluster are the run's own), else a source to embed first."""
    if not issubclass(config_class, TaskOptions):
        return config_class(**values)
    own, embed_values = split_run_values(config_class, values)
    source = values.get("source")
    if not source:
        raise TransferPipeError("give a source to embed, or the key of a feature set")
    store_url = own.get("store", DEFAULT_STORE)
    if open_store(store_url, own.get("storage_options")).status(source) != "missing":
        given = [
            o.flag
            for o in options(EmbedConfig)
            if o.name in embed_values
            and o.name not in (*SHARED_OPTIONS, "layers")
            and embed_values[o.name] != o.default
        ]
        if given:
            raise TransferPipeError(
                f"{', '.join(given)} choose what to embed; feature set {source} already "
                "fixes them. Pass the source instead of the feature set key."
            )
        return config_class(feature_set=source, **own)
    if re.fullmatch(r"[0-9a-f]{16}", source) and not os.path.exists(source):
        raise TransferPipeError(
            f"feature set {source} is not in {store_url}; "
            f"`transfer-pipe ls --store {store_url}` lists the feature sets it holds."
        )
    embed = EmbedConfig(**{**embed_values, "source": source, "store": store_url})
    return config_class(embed=embed, **own)
