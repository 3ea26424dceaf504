"""The content-addressed feature store."""

import functools

from transfer_pipe.store.base import (
    FeatureSetInfo,
    FeatureSetSpec,
    FeatureStore,
    LoadedFeatures,
    ShardStats,
)
from transfer_pipe.store.keys import FORMAT_VERSION, embedding_key, feature_set_key
from transfer_pipe.store.zarr_store import ZarrFeatureStore


def open_store(url: str) -> ZarrFeatureStore:
    """The feature store at ``url``: a local folder or any fsspec URL (a new handle each
    call; see ``shared_store`` for the per-process one workers use)."""
    return ZarrFeatureStore(url)


@functools.lru_cache(maxsize=8)
def shared_store(url: str) -> ZarrFeatureStore:
    """One store handle per process and URL, so workers open each array once."""
    return ZarrFeatureStore(url)


__all__ = [
    "FORMAT_VERSION",
    "FeatureSetInfo",
    "FeatureSetSpec",
    "FeatureStore",
    "LoadedFeatures",
    "ShardStats",
    "ZarrFeatureStore",
    "embedding_key",
    "feature_set_key",
    "open_store",
    "shared_store",
]
