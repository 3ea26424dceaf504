"""The shared file helpers: which URLs are local, and writes that are all or nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from transfer_pipe.files import atomic_path, is_local, local_path, write_text_atomic


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/data/store", Path("/data/store")),
        ("file:///data/store", Path("/data/store")),
        # Mutation: checking only for "file" (as the fine-tuning checkpoints once did)
        # sends a local:// store's checkpoints to the cache folder: this case fails.
        ("local:///data/store", Path("/data/store")),
        ("s3://bucket/store", None),
        ("memory://store", None),
        ("simplecache::s3://bucket/store", None),
    ],
)
def test_local_urls_give_their_path_and_remote_ones_none(url: str, expected: Path | None) -> None:
    assert local_path(url) == expected
    assert is_local(url) == (expected is not None)


def test_a_relative_path_is_local_and_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert local_path("store/x") == tmp_path / "store" / "x"


def test_atomic_path_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "weights.pth"  # the parent folder does not exist yet
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    # Mutation: dropping the os.replace leaves no weights.pth (the temporary is cleaned up).
    assert os.listdir(target.parent) == ["weights.pth"]


def test_a_write_that_fails_midway_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "registry.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    # Mutation: yielding ``target`` itself (writing in place) leaves "half of the new".
    assert target.read_text() == "old"
    # Mutation: dropping the cleanup in ``finally`` leaves the temporary file behind.
    assert os.listdir(tmp_path) == ["registry.json"]


def test_write_text_atomic_replaces_the_text(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text(encoding="utf-8") == "two"
