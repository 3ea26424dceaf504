"""IDX parsing, discovery and the IDX side of read_image, on real files written here."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.idx_files import FASHION_ROOT, idx_bytes, write_idx, write_idx_dataset
from transfer_pipe.data.decode import DecodeError
from transfer_pipe.data.idx import (
    FASHION_MNIST_CLASSES,
    clear_idx_cache,
    find_idx_dataset,
    idx_class_names,
    idx_uri,
    read_idx,
    split_idx_uri,
    to_url,
)
from transfer_pipe.data.read import read_image
from transfer_pipe.errors import TransferPipeError


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    # tmp_path names repeat across sessions; never let one test see another's parse.
    clear_idx_cache()
    yield
    clear_idx_cache()


def _images(n: int = 5, h: int = 28, w: int = 28) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, h, w), dtype=np.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trips_images_and_labels(tmp_path: Path, gz: bool) -> None:
    images, labels = _images(), np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    got_images = read_idx(write_idx(tmp_path / "images", images, gz=gz))
    got_labels = read_idx(write_idx(tmp_path / "labels", labels, gz=gz))
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_gzip_is_detected_by_magic_bytes_not_extension(tmp_path: Path) -> None:
    images = _images(2)
    # A gzipped file without .gz and a plain file named .gz both read correctly.
    np.testing.assert_array_equal(
        read_idx(write_idx(tmp_path / "a-idx3-ubyte", images, gz=True)), images
    )
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "b.gz", images, gz=False)), images)


def test_read_idx_accepts_paths_and_file_urls_and_caches_a_read_only_array(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "images", _images(3), gz=True)
    first = read_idx(path)
    assert read_idx(str(path)) is first
    assert read_idx(path.as_uri()) is first  # one parse per file, whatever the spelling
    with pytest.raises(ValueError):
        first[0, 0, 0] = 1  # shared across callers, so never writable


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x89PNG\r\n\x1a\n", "not an IDX file"),
        (b"", "not an IDX file"),
        (idx_bytes(np.zeros((2, 2, 2), np.uint8), dtype_code=0x0D), "dtype code 0x0d"),
        (idx_bytes(np.zeros((2, 2), np.uint8)), "2 dimensions"),
        (idx_bytes(np.zeros((2, 4, 4), np.uint8))[:-1], "damaged"),
        (idx_bytes(np.zeros((2, 4, 4), np.uint8)) + b"\0", "damaged"),
        (bytes([0, 0, 8, 3, 0, 0]), "truncated inside its header"),
        (gzip.compress(idx_bytes(np.zeros((2, 4, 4), np.uint8)), mtime=0)[:-8], "damaged gzip"),
    ],
)
def test_malformed_idx_files_raise_a_clear_error(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(raw)
    with pytest.raises(TransferPipeError, match=message):
        read_idx(path)


def test_find_idx_dataset_maps_standard_names_to_splits(tmp_path: Path) -> None:
    imgs, labs = (
        {"train": _images(4), "test": _images(2)},
        {"train": np.zeros(4), "test": np.zeros(2)},
    )
    root = write_idx_dataset(tmp_path / "mnist", imgs, labs)
    (root / "README.md").write_text("not an IDX file")
    found = find_idx_dataset(root)
    assert found == {
        "train": (
            to_url(root / "train-images-idx3-ubyte.gz"),
            to_url(root / "train-labels-idx1-ubyte.gz"),
        ),
        "test": (
            to_url(root / "t10k-images-idx3-ubyte.gz"),
            to_url(root / "t10k-labels-idx1-ubyte.gz"),
        ),
    }
    assert found["train"][0].startswith("file:///")


def test_find_idx_dataset_prefers_uncompressed_and_knows_the_dot_spelling(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", _images(1), gz=True)
    write_idx(tmp_path / "train-images-idx3-ubyte", _images(1), gz=False)
    write_idx(tmp_path / "train-labels.idx1-ubyte", np.zeros(1), gz=False)
    images, labels = find_idx_dataset(tmp_path)["train"]
    assert images.endswith("/train-images-idx3-ubyte")
    assert labels.endswith("/train-labels.idx1-ubyte")


def test_find_idx_dataset_is_empty_for_other_folders_and_strict_on_half_pairs(
    tmp_path: Path,
) -> None:
    (tmp_path / "cat").mkdir()
    assert find_idx_dataset(tmp_path) == {}
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", _images(1), gz=True)
    with pytest.raises(TransferPipeError, match="labels file"):
        find_idx_dataset(tmp_path)


@pytest.mark.parametrize(
    ("folder", "fashion"),
    [("fashion-mnist", True), ("FashionMNIST/raw", True), ("mnist", False), ("digits/raw", False)],
)
def test_class_names_follow_the_folder_name(tmp_path: Path, folder: str, fashion: bool) -> None:
    expected = FASHION_MNIST_CLASSES if fashion else None
    assert idx_class_names(tmp_path / folder) == expected


def test_fashion_mnist_class_names_are_the_official_ten() -> None:
    assert FASHION_MNIST_CLASSES == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip


def test_idx_uris_round_trip_and_ordinary_hash_names_are_not_idx() -> None:
    url = "file:///data/train-images-idx3-ubyte.gz"
    assert split_idx_uri(idx_uri(url, 42)) == (url, 42)
    assert split_idx_uri("file:///data/photo#1.png") is None
    assert split_idx_uri("file:///data/train-images-idx3-ubyte.gz#x") is None
    assert split_idx_uri("file:///data/cat/1#2") is None


def test_read_image_on_an_idx_uri_returns_the_raw_pixels_as_rgb(tmp_path: Path) -> None:
    images = _images(3)
    path = write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, gz=True)
    img = read_image(idx_uri(to_url(path), 2))
    assert img.mode == "RGB" and img.size == (28, 28)
    pixels = np.asarray(img)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[:, :, channel], images[2])


def test_read_image_turns_missing_idx_files_and_bad_indices_into_decode_errors(
    tmp_path: Path,
) -> None:
    path = write_idx(tmp_path / "train-images-idx3-ubyte", _images(2), gz=False)
    with pytest.raises(DecodeError) as err:
        read_image(idx_uri(to_url(path), 2))
    assert err.value.reason == "unreadable"
    with pytest.raises(DecodeError) as err:
        read_image(idx_uri(to_url(tmp_path / "t10k-images-idx3-ubyte"), 0))
    assert err.value.reason == "unreadable"


@pytest.mark.skipif(
    not FASHION_ROOT.is_dir(), reason=f"Fashion-MNIST is not installed at {FASHION_ROOT}"
)
def test_read_image_on_real_fashion_mnist_equals_the_file_bytes() -> None:
    path = FASHION_ROOT / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    # Parsed independently: 16-byte header, then 28x28 bytes per image.
    expected = np.frombuffer(raw, np.uint8, count=28 * 28, offset=16 + 7 * 28 * 28).reshape(28, 28)
    img = read_image(idx_uri(to_url(path), 7))
    assert img.mode == "RGB" and img.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(img)[:, :, 0], expected)
    assert read_idx(path).shape == (10_000, 28, 28)
