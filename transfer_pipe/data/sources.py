"""Every image source becomes one Manifest: ``load_manifest`` is the one door.

Sources: the ``fashion-mnist`` alias, a folder of IDX files, a folder tree
(``root/<class>/<file>`` or ``root/<split>/<class>/<file>``), a CSV or Parquet
manifest, and any fsspec URL of those. Everything below the entry point works
on fsspec URLs, so a remote root behaves like a local one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import numpy as np
import pandas as pd
from fsspec import AbstractFileSystem

from transfer_pipe.data.idx import (
    FASHION_MNIST_CLASSES,
    find_idx_dataset,
    idx_class_names,
    idx_uri,
    label_names,
    read_idx,
    to_url,
)
from transfer_pipe.data.manifest import Manifest
from transfer_pipe.data.stamps import Hashes, file_stamp
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.schema import CONTENT_HASH, LABEL, SAMPLE_ID, SPLIT, SPLIT_ALIASES, URI

log = logging.getLogger(__name__)

FASHION_MNIST_ALIAS = "fashion-mnist"
FASHION_MNIST_ENV = "TRANSFER_PIPE_FASHION_MNIST"
FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
SPLIT_NAMES = frozenset(alias for aliases in SPLIT_ALIASES.values() for alias in aliases)
NO_SPLIT = ""  # the split value when the source defines none
TABLE_EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}

# Hashing is I/O bound (local disk or object store); hashlib releases the GIL.
_HASH_THREADS = 16
_HASH_BLOCK = 1 << 20
_SOURCE_HINT = "pass a folder of images, a CSV/Parquet manifest, an IDX folder, or `fashion-mnist`"


def load_manifest(
    source: str, *, split: str | None = None, hashes: Hashes | None = None
) -> Manifest:
    """Build the Manifest for ``source``; keep only rows of ``split`` when given.

    ``hashes``: the source's hash cache (``source_cache_id`` names it), so a file whose
    size and modification stamp are unchanged is not read again; it notes this run's
    hashes, and the caller saves it. Returns a Manifest sorted by sample_id. Raises
    TransferPipeError when the source is missing, empty, malformed, or lacks the
    requested split.
    """
    if source.strip().lower() == FASHION_MNIST_ALIAS:
        root = _fashion_mnist_root()
        return _idx_manifest(root, split, FASHION_MNIST_CLASSES, f"fashion-mnist:{root}")
    fs, path, url = check_source(source)
    if fs.isfile(path):
        kind = TABLE_EXTENSIONS.get(posixpath.splitext(path)[1].lower())
        if kind is None:
            raise TransferPipeError(
                f"dataset path {source} is a file but not a .csv/.parquet manifest; {_SOURCE_HINT}."
            )
        manifest = _table_manifest(fs, path, kind, f"{kind}:{url}", hashes)
        return _filter_split(manifest, split)
    if find_idx_dataset(url):
        return _idx_manifest(url, split, idx_class_names(url), f"idx:{url}")
    return _filter_split(_folder_manifest(fs, path, f"folder:{url}", hashes), split)


def source_cache_id(source: str) -> str | None:
    """What names ``source``'s hash cache (its URL), or None for a source whose hashes
    are not of files (IDX folders, ``fashion-mnist``: pixels are hashed from memory).
    Cheap: no listing."""
    if source.strip().lower() == FASHION_MNIST_ALIAS:
        return None
    url = to_url(os.path.expanduser(source))
    if posixpath.splitext(url)[1].lower() not in TABLE_EXTENSIONS and find_idx_dataset(url):
        return None
    return url


def source_from_description(description: str) -> str:
    """The source argument that rebuilds a manifest from its ``Manifest.source``
    description (``fashion-mnist:<root>``, ``folder:<url>``, ``csv:<url>`` ...)."""
    kind, _, url = description.partition(":")
    if kind == FASHION_MNIST_ALIAS:
        return FASHION_MNIST_ALIAS
    if kind in ("folder", "idx", *TABLE_EXTENSIONS.values()) and url:
        return url
    raise TransferPipeError(f"cannot tell which source {description!r} was built from")


def check_source(source: str) -> tuple[AbstractFileSystem, str, str]:
    """Cheaply check that ``source`` exists (no listing, no hashing); returns its
    filesystem, path and URL. Raises TransferPipeError naming what to pass instead."""
    if source.strip().lower() == FASHION_MNIST_ALIAS:
        root = _fashion_mnist_root()
        fs, path = fsspec.core.url_to_fs(root)
        return fs, path, root
    url = to_url(os.path.expanduser(source))
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise TransferPipeError(f"dataset path {source} does not exist; {_SOURCE_HINT}.")
    return fs, path, url


def _fashion_mnist_root() -> str:
    """The Fashion-MNIST folder: $TRANSFER_PIPE_FASHION_MNIST or the packaged one."""
    root = os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT
    fs, path = fsspec.core.url_to_fs(to_url(root))
    if not fs.isdir(path):
        raise TransferPipeError(
            f"Fashion-MNIST is not at {root}; run `apt-get install dataset-fashion-mnist`, "
            f"set ${FASHION_MNIST_ENV}, or pass the folder holding its IDX files."
        )
    return to_url(root)


# --- IDX ---------------------------------------------------------------------------------


def _idx_manifest(
    root: str, split: str | None, class_names: tuple[str, ...] | None, source: str
) -> Manifest:
    """One row per image of every IDX split (only ``split`` when given)."""
    files = find_idx_dataset(root)
    if not files:
        raise TransferPipeError(f"no IDX files in {root}; {_SOURCE_HINT}.")
    if split is not None:
        if split not in files:
            raise TransferPipeError(
                f"{source} has no split {split!r}; its splits are {sorted(files)}."
            )
        files = {split: files[split]}
    tables = [_idx_split_rows(name, *paths, class_names) for name, paths in files.items()]
    return Manifest.from_rows(pd.concat(tables, ignore_index=True), source)


def _idx_split_rows(
    split: str, images_url: str, labels_url: str, class_names: tuple[str, ...] | None
) -> pd.DataFrame:
    images, labels = read_idx(images_url), read_idx(labels_url)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise TransferPipeError(
            f"IDX split {split!r}: images {images_url} have shape {images.shape} but labels "
            f"{labels_url} have shape {labels.shape}; expected [N, H, W] images and N labels."
        )
    n = len(images)
    width = max(5, len(str(n - 1)))  # zero-padded so ids sort in file order
    return pd.DataFrame(
        {
            SAMPLE_ID: [f"{split}/{i:0{width}d}" for i in range(n)],
            URI: [idx_uri(images_url, i) for i in range(n)],
            LABEL: label_names(labels, class_names),
            SPLIT: split,
            CONTENT_HASH: pixel_hashes(images),
        }
    )


def pixel_hashes(images: np.ndarray) -> list[str]:
    """sha256 per image of its dtype, shape and raw pixel bytes.

    The shape is hashed too, so a 28x28 and a 14x56 image with the same bytes
    never collide.
    """
    prefix = f"{images.dtype.str}:{'x'.join(map(str, images.shape[1:]))}\n".encode()
    base = hashlib.sha256(prefix)
    rows = np.ascontiguousarray(images).reshape(len(images), -1)
    hashes = []
    for row in rows:
        h = base.copy()  # the prefix is hashed once, not 70,000 times
        h.update(row.data)
        hashes.append(h.hexdigest())
    return hashes


# --- folder tree -------------------------------------------------------------------------


def _folder_manifest(
    fs: AbstractFileSystem, root: str, source: str, hashes: Hashes | None = None
) -> Manifest:
    """``root/<class>/...`` or, when every top-level folder is a split name,
    ``root/<split>/<class>/...``. Every non-hidden regular file is a row, so
    corrupt or non-image files reach the decoder and are recorded as failures.
    """
    listed_at = time.time()
    listing = _list_files(fs, root)
    rel_paths = sorted(listing)
    top_dirs = {rel.split("/", 1)[0] for rel in rel_paths if "/" in rel}
    has_splits = bool(top_dirs) and all(d.lower() in SPLIT_NAMES for d in top_dirs)
    depth = 2 if has_splits else 1  # folders above the class folder, counting it
    rows, loose = [], []
    for rel in rel_paths:
        parts = rel.split("/")
        if len(parts) <= depth:
            loose.append(rel)  # e.g. LICENSE.txt at the root: it has no class
            continue
        rows.append(
            {
                SAMPLE_ID: rel,
                URI: fs.unstrip_protocol(posixpath.join(root, rel)),
                LABEL: parts[depth - 1],
                SPLIT: parts[0] if has_splits else NO_SPLIT,
            }
        )
    if loose:
        log.warning(
            "%s: skipped %d file(s) outside a class folder, e.g. %s", source, len(loose), loose[0]
        )
    if not rows:
        layout = "<split>/<class>/<file>" if has_splits else "<class>/<file>"
        raise TransferPipeError(
            f"no image files under {root}; put images in {layout}, or {_SOURCE_HINT}."
        )
    table = pd.DataFrame(rows)
    stamps = None
    if hashes is not None:
        stamps = [file_stamp(listing[str(row[SAMPLE_ID])], listed_at) for row in rows]
    table[CONTENT_HASH] = file_hashes([str(u) for u in table[URI]], stamps, hashes)
    return Manifest.from_rows(table, source)


def _list_files(fs: AbstractFileSystem, root: str) -> dict[str, dict[str, Any]]:
    """The listing entry (size, mtime ...) of every non-hidden regular file, by its posix
    path relative to ``root``."""
    root = root.rstrip("/")
    found = fs.find(root, withdirs=False, detail=True)
    files = {}
    for name, info in found.items():
        rel = name[len(root) + 1 :]  # fsspec lists paths that start with root + "/"
        if info.get("type") != "file" or any(p.startswith(".") for p in rel.split("/")):
            continue
        files[rel] = info
    return files


# --- CSV / Parquet -----------------------------------------------------------------------


def _table_manifest(
    fs: AbstractFileSystem, path: str, kind: str, source: str, hashes: Hashes | None = None
) -> Manifest:
    """Rows from a CSV/Parquet file with ``path`` or ``uri``, ``label`` and optional
    ``split`` / ``sample_id`` columns; relative paths resolve against its folder.
    """
    with fs.open(path, "rb") as f:
        if kind == "csv":
            # Everything as written: no NaN for "NA", no ints for "007".
            table = pd.read_csv(f, dtype=str, keep_default_na=False)
        else:
            table = pd.read_parquet(f)
    location = URI if URI in table.columns else "path"
    missing = [c for c in (location, LABEL) if c not in table.columns]
    if missing:
        raise TransferPipeError(
            f"manifest {source} lacks column(s) {missing}: it has {list(table.columns)}, "
            "and needs `path` (or `uri`) and `label`, optionally `split` and `sample_id`."
        )
    if len(table) == 0:
        raise TransferPipeError(f"manifest {source} has no rows; list at least one image.")
    written = _required_strings(table, location, source)
    folder = posixpath.dirname(path)
    out = pd.DataFrame(
        {
            SAMPLE_ID: (
                _required_strings(table, SAMPLE_ID, source)
                if SAMPLE_ID in table.columns
                else written
            ),
            URI: [_resolve(fs, folder, w) for w in written],
            LABEL: _required_strings(table, LABEL, source),
            SPLIT: table[SPLIT].fillna(NO_SPLIT).astype(str) if SPLIT in table else NO_SPLIT,
        }
    )
    uris = [str(u) for u in out[URI]]
    stamps = _listed_stamps(uris) if hashes is not None else None
    out[CONTENT_HASH] = file_hashes(uris, stamps, hashes)
    return Manifest.from_rows(out, source)


def _listed_stamps(uris: Sequence[str]) -> list[str | None]:
    """Each file's stamp (``stamps.file_stamp``) from a listing of its folder: one
    listing request per folder, not one per file; None where a file is not listed (it is
    then read, and a missing one reported as unreadable)."""
    listed_at = time.time()
    located = [fsspec.core.url_to_fs(uri) for uri in uris]
    folders: dict[tuple[int, str], AbstractFileSystem] = {}
    for fs, path in located:
        folders.setdefault((id(fs), posixpath.dirname(path)), fs)

    def entries(item: tuple[tuple[int, str], AbstractFileSystem]) -> dict[str, Any]:
        (_, folder), fs = item
        try:
            return {str(e["name"]).rstrip("/"): e for e in fs.ls(folder, detail=True)}
        except OSError:
            return {}

    with ThreadPoolExecutor(max_workers=_HASH_THREADS) as pool:
        listings = dict(zip(folders, pool.map(entries, folders.items()), strict=True))
    stamps: list[str | None] = []
    for fs, path in located:
        info = listings[(id(fs), posixpath.dirname(path))].get(path)
        stamps.append(None if info is None else file_stamp(info, listed_at))
    return stamps


def _required_strings(table: pd.DataFrame, column: str, source: str) -> list[str]:
    """The column as strings; raises naming the first row where it is empty."""
    values = table[column]
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise TransferPipeError(
            f"manifest {source} has an empty `{column}` in row {row}; fill it or drop the row."
        )
    return [str(v) for v in values]


def _resolve(fs: AbstractFileSystem, folder: str, written: str) -> str:
    """The URL of a path as written in a manifest: URLs stay, relative paths join ``folder``."""
    if "://" in written:
        return written
    path = written if posixpath.isabs(written) else posixpath.join(folder, written)
    return str(fs.unstrip_protocol(posixpath.normpath(path)))


# --- shared ------------------------------------------------------------------------------


def file_hashes(
    urls: list[str],
    stamps: Sequence[str | None] | None = None,
    cache: Hashes | None = None,
) -> list[str]:
    """sha256 hex digest of each file's bytes, in order, read with a thread pool.

    With a ``cache`` and each file's listing ``stamps``, a file the cache knows at its
    stamp is not read; every hash is noted in the cache. Raises TransferPipeError listing
    the files that cannot be read.
    """
    if cache is None or stamps is None:
        stamps = [None] * len(urls)
    known: Mapping[int, str] = {}
    if cache is not None:
        found = (cache.lookup(url, stamp) for url, stamp in zip(urls, stamps, strict=True))
        known = {i: digest for i, digest in enumerate(found) if digest is not None}
    unknown = [i for i in range(len(urls)) if i not in known]
    with ThreadPoolExecutor(max_workers=_HASH_THREADS) as pool:
        read = dict(zip(unknown, pool.map(_hash_one, [urls[i] for i in unknown]), strict=True))
    results: list[str | OSError] = [known[i] if i in known else read[i] for i in range(len(urls))]
    failed = [(url, r) for url, r in zip(urls, results, strict=True) if isinstance(r, OSError)]
    if failed:
        shown = "; ".join(f"{url} ({err})" for url, err in failed[:3])
        raise TransferPipeError(
            f"{len(failed)} image file(s) cannot be read, e.g. {shown}; "
            "fix their permissions or paths, or remove them from the dataset."
        )
    if cache is not None:
        for i, (url, stamp) in enumerate(zip(urls, stamps, strict=True)):
            cache.record(url, stamp, str(results[i]), hit=i in known)
    return [str(r) for r in results]


def _hash_one(url: str) -> str | OSError:
    """The file's sha256, streamed in blocks; the OSError instead when unreadable."""
    h = hashlib.sha256()
    try:
        with fsspec.open(url, "rb") as f:
            for block in iter(lambda: f.read(_HASH_BLOCK), b""):
                h.update(block)
    except OSError as exc:
        return exc
    return h.hexdigest()


def _filter_split(manifest: Manifest, split: str | None) -> Manifest:
    """Only the rows of ``split``; raises naming the splits present when none match."""
    if split is None:
        return manifest
    keep = manifest.table[SPLIT] == split
    if not keep.any():
        present = sorted(set(manifest.table[SPLIT]) - {NO_SPLIT})
        raise TransferPipeError(
            f"{manifest.source} has no split {split!r}; "
            + (f"its splits are {present}." if present else "it defines no splits; omit split.")
        )
    return Manifest(manifest.table.loc[keep].reset_index(drop=True), manifest.source)
