"""The content-addressed feature store, behind one door: ``open_store``."""

import functools
from collections.abc import Mapping
from typing import Any

from transfer_pipe.store.base import (
    FeatureSetInfo,
    FeatureSetSpec,
    FeatureStore,
    LineageSpec,
    LoadedFeatures,
    ShardStats,
)
from transfer_pipe.store.keys import FORMAT_VERSION, embedding_key, feature_set_key, lineage_id
from transfer_pipe.store.options import check_protocol, options_token, store_options
from transfer_pipe.store.zarr_store import ZarrFeatureStore

StorageOptions = str | Mapping[str, Any] | None
"""fsspec storage options: a JSON object's text (as configs and the CLI carry them), a
mapping, or None (credentials and endpoint from the standard environment variables)."""


def open_store(url: str, storage_options: StorageOptions = None) -> FeatureStore:
    """The feature store at ``url``, its implementation picked by the URL's scheme:

    - a folder, ``file://`` or ``local://``: Zarr on the local disk (atomic renames);
    - ``memory://name``: Zarr in this process's memory (fsspec's memory filesystem), shared
      by every handle of the same name in the process and gone when it exits;
    - ``s3://``, ``gs://`` and any other fsspec URL: Zarr on that object storage, opened
      with ``storage_options`` over the protocol's defaults (see ``store.options``).

    A new handle each call; ``shared_store`` is the per-process one workers use.
    """
    check_protocol(url)
    # One implementation serves every scheme: ZarrFeatureStore picks zarr's LocalStore
    # for a local URL and its FsspecStore for any other (memory:// included).
    return ZarrFeatureStore(url, storage_options=store_options(url, storage_options))


def shared_store(url: str, storage_options: StorageOptions = None, run: str = "") -> FeatureStore:
    """One store handle per process, URL, options and ``run``, so a run's tasks on one
    worker open each array once, and a long-lived worker trusts nothing it cached of the
    store in an earlier run (versions removed and made again, lineages grown)."""
    return _shared(url, options_token(storage_options), run)


@functools.lru_cache(maxsize=8)
def _shared(url: str, token: str, run: str) -> FeatureStore:
    return open_store(url, token)


__all__ = [
    "FORMAT_VERSION",
    "FeatureSetInfo",
    "FeatureSetSpec",
    "FeatureStore",
    "LineageSpec",
    "LoadedFeatures",
    "ShardStats",
    "StorageOptions",
    "ZarrFeatureStore",
    "embedding_key",
    "feature_set_key",
    "lineage_id",
    "open_store",
    "shared_store",
]
