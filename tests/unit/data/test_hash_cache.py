"""The content-hash cache: an unchanged file is recognised by its listing, not read again.

Real files in tmp_path; a file's "version" is its size and mtime, set with os.utime. A
file rewritten with the same size and mtime keeps its old hash (that is the cache at
work, and why ``--rehash`` exists); any other change is read again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from transfer_pipe.data import sources
from transfer_pipe.data.sources import load_manifest, source_cache_id
from transfer_pipe.schema import CONTENT_HASH, SAMPLE_ID
from transfer_pipe.store.hash_cache import HashCache, cache_url

OLD = time.time() - 3600  # well before any listing: not "racily clean"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_png(path: Path, shade: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(path, format="PNG")
    os.utime(path, (OLD, OLD))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for i in range(4):
        write_png(tmp_path / "images" / f"class{i % 2}" / f"img{i}.png", 10 * i)
    return tmp_path / "images"


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs whose bytes are read for hashing, in the order read."""
    seen: list[str] = []
    real = sources._hash_one

    def counting(url: str) -> str | OSError:
        seen.append(url)
        return real(url)

    monkeypatch.setattr(sources, "_hash_one", counting)
    return seen


def cache_for(source: Path, store: Path, rehash: bool = False) -> HashCache:
    cache_id = source_cache_id(str(source))
    assert cache_id is not None
    return HashCache(cache_url(str(store), cache_id), rehash=rehash)


def hashes_of(source: Path, store: Path, rehash: bool = False) -> dict[str, str]:
    """One run: the manifest's hashes by sample id, the cache saved as a run saves it."""
    cache = cache_for(source, store, rehash)
    manifest = load_manifest(str(source), hashes=cache)
    cache.save()
    return dict(zip(manifest.table[SAMPLE_ID], manifest.table[CONTENT_HASH], strict=True))


def swap_content_keep_stamp(path: Path, flip: int) -> str:
    """Rewrite ``path`` with other bytes of the same size (a byte flipped) and its old
    mtime; returns the new content's hash. Only the listing is left to tell."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= flip
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    return sha256_of(path)


def test_a_second_run_reads_no_unchanged_file(
    folder: Path, tmp_path: Path, reads: list[str]
) -> None:
    first = hashes_of(folder, tmp_path / "store")
    assert len(reads) == 4
    reads.clear()
    # Mutation seen failing: HashCache.lookup always None (every file read again).
    assert hashes_of(folder, tmp_path / "store") == first
    assert reads == []


def test_an_unchanged_stamp_keeps_the_hash_and_rehash_reads_again(
    folder: Path, tmp_path: Path, reads: list[str]
) -> None:
    first = hashes_of(folder, tmp_path / "store")
    target = folder / "class0" / "img0.png"
    new_hash = swap_content_keep_stamp(target, 0xFF)
    # The cache did not read the file: it still answers the old bytes' hash.
    assert hashes_of(folder, tmp_path / "store")["class0/img0.png"] == first["class0/img0.png"]
    reads.clear()
    # Mutation seen failing: rehash ignored in HashCache.lookup (the old hash comes back).
    again = hashes_of(folder, tmp_path / "store", rehash=True)
    assert again["class0/img0.png"] == new_hash != first["class0/img0.png"]
    assert len(reads) == 4
    reads.clear()
    assert hashes_of(folder, tmp_path / "store")["class0/img0.png"] == new_hash  # remembered


@pytest.mark.parametrize("change", ["mtime", "size"])
def test_a_changed_file_is_hashed_again(
    folder: Path, tmp_path: Path, reads: list[str], change: str
) -> None:
    hashes_of(folder, tmp_path / "store")
    target = folder / "class1" / "img1.png"
    if change == "mtime":
        new_hash = swap_content_keep_stamp(target, 0x0F)
        os.utime(target, (OLD + 5, OLD + 5))
    else:
        target.write_bytes(target.read_bytes() + b"\0")
        os.utime(target, (OLD, OLD))
        new_hash = sha256_of(target)
    reads.clear()
    # Mutations seen failing: file_stamp without the size (size), or keeping the names of
    # its fields without their values (mtime).
    assert hashes_of(folder, tmp_path / "store")["class1/img1.png"] == new_hash
    assert [url.rsplit("/", 2)[-2:] for url in reads] == [["class1", "img1.png"]]


def test_new_and_removed_files(folder: Path, tmp_path: Path, reads: list[str]) -> None:
    hashes_of(folder, tmp_path / "store")
    (folder / "class0" / "img0.png").unlink()
    added = write_png(folder / "class1" / "img9.png", 77)
    reads.clear()
    hashes = hashes_of(folder, tmp_path / "store")
    assert hashes["class1/img9.png"] == sha256_of(added) and "class0/img0.png" not in hashes
    assert len(reads) == 1
    stored = pd.read_parquet(cache_for(folder, tmp_path / "store").url)
    assert len(stored) == 4 and not stored["uri"].str.endswith("img0.png").any()


def test_a_just_modified_file_is_not_remembered(
    folder: Path, tmp_path: Path, reads: list[str]
) -> None:
    """Racily clean (git's term): a file written within the mtime tick of its listing
    may change again unseen, so its hash is not kept."""
    fresh = folder / "class0" / "img0.png"
    fresh.write_bytes(fresh.read_bytes())  # mtime now
    hashes_of(folder, tmp_path / "store")
    reads.clear()
    hashes_of(folder, tmp_path / "store")
    # Mutation seen failing: file_stamp ignoring RACY_SECONDS (nothing read again).
    assert [url.rsplit("/", 1)[-1] for url in reads] == ["img0.png"]


@pytest.mark.parametrize("damage", [b"", b"PAR1 not a parquet file", "wrong columns"])
def test_a_damaged_cache_falls_back_to_hashing(
    folder: Path,
    tmp_path: Path,
    reads: list[str],
    damage: bytes | str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = hashes_of(folder, tmp_path / "store")
    path = Path(cache_for(folder, tmp_path / "store").url)
    if isinstance(damage, str):
        pd.DataFrame({"uri": ["x"], "hash": ["y"]}).to_parquet(path)
    else:
        path.write_bytes(damage)
    reads.clear()
    with caplog.at_level(logging.WARNING):
        # Mutation seen failing: HashCache._read without its try/except (the run raises).
        assert hashes_of(folder, tmp_path / "store") == first
    assert len(reads) == 4 and "damaged" in caplog.text
    reads.clear()
    assert hashes_of(folder, tmp_path / "store") == first and reads == []  # replaced


def test_a_cache_that_cannot_be_written_is_only_a_warning(
    folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store's folder would be")
    cache = cache_for(folder, blocker)
    load_manifest(str(folder), hashes=cache)
    with caplog.at_level(logging.WARNING):
        assert cache.save() is False
    assert "could not save the hash cache" in caplog.text


def test_a_csv_manifest_uses_the_cache(folder: Path, tmp_path: Path, reads: list[str]) -> None:
    table = folder / "images.csv"  # paths relative to the table's folder
    rows = [(f"class{i % 2}/img{i}.png", f"class{i % 2}") for i in range(4)]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(table, index=False)
    first = hashes_of(table, tmp_path / "store")
    assert len(reads) == 4
    reads.clear()
    # Mutation seen failing: _table_manifest passing no stamps (every file read again).
    assert hashes_of(table, tmp_path / "store") == first and reads == []
    assert source_cache_id("fashion-mnist") is None
