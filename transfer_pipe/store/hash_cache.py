"""Content hashes remembered by file stamp, so an unchanged file is not read again.

A source's files are listed anyway (to find them); the listing gives each file's size and
modification stamp (``data.stamps``: mtime on a disk, ``ETag``/``LastModified`` on S3)
without reading it.
Like git's index and rsync's quick check, a file whose (URL, size, stamp) is the one
recorded with a hash keeps that hash; any other file is read and hashed. A file rewritten
with the same size and the same stamp is not noticed: ``--rehash`` reads every file.

One Parquet table per source (``uri``, ``stamp``, ``content_hash``), kept wherever the
store says (``FeatureStore.hash_cache``: ``cache/hashes/<digest of the source>.parquet``), read
once per run and replaced whole (written aside and moved into place) when it changed. A
cache that cannot be read or does not parse is ignored (every file is hashed again) and
replaced: a bad cache costs time, never a run.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Mapping
from typing import Any

import fsspec
import pandas as pd

from transfer_pipe.files import write_url_atomic

log = logging.getLogger(__name__)

CACHE_FOLDER = "cache"  # under the store root; marked as not-Zarr data (store.layout)
HASHES_FOLDER = f"{CACHE_FOLDER}/hashes"
COLUMNS = ("uri", "stamp", "content_hash")


def cache_url(store_url: str, source: str) -> str:
    """Where the hash cache of ``source`` (its URL or description) lives in a store."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:32]
    return f"{store_url.rstrip('/')}/{HASHES_FOLDER}/{digest}.parquet"


class HashCache:
    """Content hashes by (URL, stamp) for one source, kept at ``url``.

    ``lookup`` answers from the stored table (nothing, with ``rehash``); ``record`` notes
    a hash computed or confirmed this run; ``save`` replaces the stored table with this
    run's entries when they differ from it. Counters ``hits`` and ``misses`` say how many
    files were recognised and how many were read.
    """

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        rehash: bool = False,
    ) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.rehash = rehash
        self._stored: dict[str, tuple[str, str]] | None = None  # read on first lookup
        self._seen: dict[str, tuple[str, str]] = {}
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"HashCache({self.url!r}, rehash={self.rehash})"

    def lookup(self, uri: str, stamp: str | None) -> str | None:
        """The remembered hash of ``uri`` at ``stamp``, or None: the file must be read."""
        if stamp is None or self.rehash:
            return None
        known = self._load().get(uri)
        if known is None or known[0] != stamp:
            return None
        return known[1]

    def record(self, uri: str, stamp: str | None, content_hash: str, *, hit: bool) -> None:
        """Note ``uri``'s hash this run (``hit``: it came from the cache)."""
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        if stamp is not None:
            self._seen[uri] = (stamp, content_hash)

    def save(self) -> bool:
        """Replace the stored table with this run's entries when they differ (a new or
        changed file, a file gone); returns whether it wrote. A store that cannot be
        written is a warning, never an error: the next run hashes again."""
        if self._seen == self._load():
            return False
        table = pd.DataFrame(
            [(uri, stamp, digest) for uri, (stamp, digest) in self._seen.items()],
            columns=list(COLUMNS),
        )
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False, compression="zstd")
        try:
            write_url_atomic(self.url, buffer.getvalue(), self.storage_options)
        except Exception as err:  # a cache write never fails a run
            log.warning(
                "could not save the hash cache %s (%s): the next run hashes again", self.url, err
            )
            return False
        self._stored = dict(self._seen)
        return True

    def _load(self) -> dict[str, tuple[str, str]]:
        if self._stored is None:
            self._stored = self._read()
        return self._stored

    def _read(self) -> dict[str, tuple[str, str]]:
        """The stored entries; empty when there are none, or (with a warning) when the
        table cannot be read or is not a hash cache."""
        started = time.perf_counter()
        try:
            fs, path = fsspec.core.url_to_fs(self.url, **self.storage_options)
            data = fs.cat_file(path)
        except FileNotFoundError:
            return {}
        except Exception as err:
            log.warning("hash cache %s cannot be read (%s): hashing every file", self.url, err)
            return {}
        try:
            table = pd.read_parquet(io.BytesIO(data))
            if list(table.columns) != list(COLUMNS):
                raise ValueError(f"columns {list(table.columns)}, expected {list(COLUMNS)}")
            table = table.astype(str)
            good = table["content_hash"].str.fullmatch("[0-9a-f]{64}")
            if not good.all():
                raise ValueError(f"{int((~good).sum())} malformed content hashes")
        except Exception as err:
            log.warning(
                "hash cache %s is damaged (%s): hashing every file, then replacing it",
                self.url,
                err,
            )
            return {}
        stamps = zip(table["stamp"].tolist(), table["content_hash"].tolist(), strict=True)
        entries = dict(zip(table["uri"].tolist(), stamps, strict=True))
        log.debug(
            "hash cache %s: %d entries in %.2fs",
            self.url,
            len(entries),
            time.perf_counter() - started,
        )
        return entries
