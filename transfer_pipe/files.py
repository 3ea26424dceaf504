"""Small file helpers every layer shares: all-or-nothing writes, and "is this URL local?".

This module sits at the bottom of the package (like ``errors``): it imports nothing from
``transfer_pipe``, so any layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs
from fsspec.utils import get_protocol

from transfer_pipe.errors import TransferPipeError

LOCAL_PROTOCOLS = frozenset({"file", "local"})
"""fsspec's names for the local filesystem (``file://``, ``local://``, or no scheme)."""


def is_local(url: str) -> bool:
    """Whether ``url`` names the machine's own filesystem: a plain path, ``file://...`` or
    ``local://...``; ``s3://``, ``memory://`` or a chained URL (``simplecache::...``) are
    not, so they get no local-only treatment (atomic renames, local checkpoints)."""
    return get_protocol(url) in LOCAL_PROTOCOLS


def parse_storage_options(value: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """fsspec storage options as a dict: from a JSON object (the ``--storage-options``
    text), a mapping, or None (no options: credentials come from the environment)."""
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise TransferPipeError(
            f"--storage-options must be a JSON object such as "
            f'\'{{"endpoint_url": "http://127.0.0.1:9000"}}\', not {value!r} ({err.msg})'
        ) from err
    if not isinstance(parsed, dict):
        raise TransferPipeError(
            f"--storage-options must be a JSON object (key: value pairs), not {value!r}"
        )
    return parsed


def local_path(url: str) -> Path | None:
    """The absolute filesystem path ``url`` names when it is local (see ``is_local``),
    else None: ``local:///data/x``, ``file:///data/x`` and ``/data/x`` all give ``/data/x``."""
    if not is_local(url):
        return None
    _, path = url_to_fs(url)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write there, and on a clean exit it is
    renamed onto ``path`` in one step, so readers (and a run resumed after a kill) find
    the old file or the new one, never half of one. On an error the temporary file is
    removed and ``path`` is left as it was. The parent folder is created if needed.

    Example: ``with atomic_path(out) as tmp: torch.save(state, tmp)``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the same folder: the rename stays on one filesystem (atomic), and
    # two writers of the same file never share a temporary. The writer creates the file,
    # so it gets the usual permissions (mkstemp's would be owner-only).
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after a successful rename


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace the file at ``path`` with ``text`` (UTF-8), all or nothing."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_url_atomic(
    url: str, data: bytes, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Replace the file at ``url`` (a path or any fsspec URL) with ``data``, all or
    nothing: a local file is written beside its name and renamed onto it; on an object
    store the write is one PUT, which shows the object whole or not at all."""
    local = local_path(url)
    if local is not None:
        with atomic_path(local) as tmp:
            tmp.write_bytes(data)
        return
    fs, path = url_to_fs(url, **dict(storage_options or {}))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # a no-op on object stores
    fs.pipe_file(path, data)


def check_writable_without_writing(url: str) -> None:
    """A local store must be, or be creatable in, a folder this user can write; a remote
    store is checked by the real run (probing it would write)."""
    path = local_path(url)
    if path is None:
        return
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        raise TransferPipeError(
            f"cannot write to the feature store {url} ({existing} is not a folder you can "
            "write to); pass --store with a folder or URL you can write to."
        )
