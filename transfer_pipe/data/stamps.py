"""What identifies one version of a file in a listing, without reading it: its size and
its change-revealing fields (mtime on a disk, ETag/LastModified on S3, ...). A store's hash
cache (``store.hash_cache``) remembers content hashes by these stamps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

# Fields of an fsspec listing entry that change when a file is rewritten: local mtime,
# S3 (ETag, LastModified), GCS (generation, md5Hash, updated), Azure (etag, last_modified).
STAMP_FIELDS = (
    "mtime",
    "ETag",
    "LastModified",
    "etag",
    "last_modified",
    "generation",
    "md5Hash",
    "updated",
)
# Only where a listing has none of those (fsspec's memory filesystem): a local file's
# "created" is its ctime, which any chmod or copy changes, and os.utime cannot restore.
FALLBACK_STAMP_FIELDS = ("created",)
# A file modified this close (seconds) to its listing may change again within the same
# mtime tick: its hash is used but not remembered (git's "racily clean" entries).
RACY_SECONDS = 2.0


def file_stamp(info: Mapping[str, Any], listed_at: float | None = None) -> str | None:
    """What identifies this version of a file in a listing entry: its size and the
    change-revealing fields present; None when the entry has none of them, or when a
    numeric mtime is within RACY_SECONDS of ``listed_at`` (not safe to remember)."""
    fields = [f"{name}={info[name]}" for name in STAMP_FIELDS if info.get(name) is not None]
    if not fields:
        fields = [f"{n}={info[n]}" for n in FALLBACK_STAMP_FIELDS if info.get(n) is not None]
    size = info.get("size")
    if not fields or size is None:
        return None
    mtime = info.get("mtime")
    if (
        listed_at is not None
        and isinstance(mtime, int | float)
        and mtime > listed_at - RACY_SECONDS
    ):
        return None
    return f"size={size};" + ";".join(fields)


class Hashes(Protocol):
    """Content hashes remembered by stamp (``store.hash_cache.HashCache``): what a listing
    asks before it reads a file, and tells after."""

    def lookup(self, uri: str, stamp: str | None) -> str | None: ...

    def record(self, uri: str, stamp: str | None, content_hash: str, *, hit: bool) -> None: ...
