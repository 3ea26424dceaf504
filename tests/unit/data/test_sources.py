"""load_manifest on every kind of source, built from real files in tmp_path."""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.support.idx_files import FASHION_ROOT, write_idx_dataset
from transfer_pipe.data.decode import DecodeError
from transfer_pipe.data.idx import FASHION_MNIST_CLASSES, clear_idx_cache
from transfer_pipe.data.read import read_image
from transfer_pipe.data.sources import FASHION_MNIST_ENV, load_manifest
from transfer_pipe.errors import TransferPipeError


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_image(path: Path, color: tuple[int, int, int], fmt: str = "PNG", size: int = 8) -> Path:
    """A real image file (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, format=fmt)
    return path


def write_image_bytes(color: tuple[int, int, int]) -> bytes:
    """The bytes of a real 8x8 PNG."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def class_tree(tmp_path: Path) -> Path:
    """root/<class>/<file>, with the clutter real folders have."""
    root = tmp_path / "flowers"
    write_image(root / "tulip" / "b.png", (255, 0, 0))
    write_image(root / "tulip" / "a.jpg", (0, 255, 0), "JPEG")
    write_image(root / "rose" / "nested" / "c.png", (0, 0, 255))
    (root / "rose" / "notes.txt").write_text("not an image, but the decoder decides that")
    (root / "rose" / ".DS_Store").write_bytes(b"\0\1")
    write_image(root / ".cache" / "x" / "hidden.png", (1, 2, 3))
    (root / "LICENSE.txt").write_text("no class folder, so not a sample")
    return root


def test_folder_tree_without_splits(class_tree: Path) -> None:
    table = load_manifest(str(class_tree)).table
    assert list(table["sample_id"]) == [
        "rose/nested/c.png",
        "rose/notes.txt",
        "tulip/a.jpg",
        "tulip/b.png",
    ]
    assert list(table["label"]) == ["rose", "rose", "tulip", "tulip"]
    assert set(table["split"]) == {""}  # the source defines no split
    assert table["uri"][2] == f"file://{class_tree}/tulip/a.jpg"
    for row in table.itertuples():
        assert row.content_hash == sha256_of(class_tree / str(row.sample_id))


def test_folder_tree_with_split_folders(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_image(root / "train" / "cat" / "1.png", (10, 0, 0))
    write_image(root / "train" / "dog" / "2.png", (20, 0, 0))
    write_image(root / "val" / "cat" / "3.png", (30, 0, 0))
    write_image(root / "test" / "dog" / "4.jpeg", (40, 0, 0), "JPEG")
    table = load_manifest(str(root)).table
    assert list(table["sample_id"]) == [
        "test/dog/4.jpeg",
        "train/cat/1.png",
        "train/dog/2.png",
        "val/cat/3.png",
    ]
    assert list(table["split"]) == ["test", "train", "train", "val"]
    assert list(table["label"]) == ["dog", "cat", "dog", "cat"]
    train = load_manifest(str(root), split="train").table
    assert list(train["sample_id"]) == ["train/cat/1.png", "train/dog/2.png"]


def test_top_folders_that_are_not_all_split_names_are_classes(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "a.png", (1, 1, 1))
    write_image(tmp_path / "bicycle" / "b.png", (2, 2, 2))
    table = load_manifest(str(tmp_path)).table
    assert list(table["label"]) == ["bicycle", "train"]
    assert set(table["split"]) == {""}


def test_hashes_and_ids_are_stable_and_identical_images_share_a_hash(tmp_path: Path) -> None:
    first = write_image(tmp_path / "a" / "one.png", (5, 6, 7))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "copy.png").write_bytes(first.read_bytes())
    write_image(tmp_path / "b" / "other.png", (7, 6, 5))
    one, two = load_manifest(str(tmp_path)), load_manifest(tmp_path.as_uri())
    pd.testing.assert_frame_equal(one.table, two.table)
    assert one.digest() == two.digest()
    hashes = dict(zip(one.table["sample_id"], one.table["content_hash"], strict=True))
    assert hashes["a/one.png"] == hashes["b/copy.png"] != hashes["b/other.png"]
    assert list(one.table["sample_id"]) == sorted(one.table["sample_id"])


def test_any_fsspec_url_works_like_a_local_folder() -> None:
    root = f"memory://tp-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    png = write_image_bytes((9, 9, 9))
    fs.pipe({f"{root}/train/cat/1.png": png, f"{root}/test/cat/2.png": png})
    try:
        table = load_manifest(root).table
        assert list(table["sample_id"]) == ["test/cat/2.png", "train/cat/1.png"]
        assert table["uri"][1].startswith("memory://") and table["uri"][1].endswith(
            "/train/cat/1.png"
        )
        assert set(table["content_hash"]) == {hashlib.sha256(png).hexdigest()}
        assert read_image(table["uri"][0]).size == (8, 8)
    finally:
        fs.rm(root, recursive=True)


# --- CSV / Parquet ------------------------------------------------------------------------


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    write_image(tmp_path / "imgs" / "x.png", (1, 0, 0))
    write_image(tmp_path / "imgs" / "y.jpg", (0, 1, 0), "JPEG")
    return tmp_path


def test_csv_with_relative_paths(image_dir: Path) -> None:
    csv = image_dir / "meta" / "labels.csv"
    csv.parent.mkdir()
    # "NA" and "007" must survive as written.
    csv.write_text("path,label\n../imgs/y.jpg,NA\n../imgs/x.png,007\n")
    table = load_manifest(str(csv)).table
    assert list(table["sample_id"]) == ["../imgs/x.png", "../imgs/y.jpg"]
    assert list(table["label"]) == ["007", "NA"]
    assert list(table["uri"]) == [
        f"file://{image_dir}/imgs/x.png",
        f"file://{image_dir}/imgs/y.jpg",
    ]
    assert list(table["content_hash"]) == [
        sha256_of(image_dir / "imgs" / "x.png"),
        sha256_of(image_dir / "imgs" / "y.jpg"),
    ]
    assert set(table["split"]) == {""}


def test_parquet_with_uri_split_and_sample_id(image_dir: Path) -> None:
    pq = image_dir / "manifest.parquet"
    pd.DataFrame(
        {
            "uri": [(image_dir / "imgs" / "x.png").as_uri(), "imgs/y.jpg"],
            "label": [1, 2],  # ints become strings
            "split": ["train", "test"],
            "sample_id": ["b-second", "a-first"],
        }
    ).to_parquet(pq)
    table = load_manifest(str(pq)).table
    assert list(table["sample_id"]) == ["a-first", "b-second"]
    assert list(table["label"]) == ["2", "1"]
    assert list(table["split"]) == ["test", "train"]
    assert table["uri"][0] == f"file://{image_dir}/imgs/y.jpg"
    assert table["content_hash"][1] == sha256_of(image_dir / "imgs" / "x.png")
    assert list(load_manifest(str(pq), split="test").table["sample_id"]) == ["a-first"]


def test_pq_extension_and_absolute_paths(image_dir: Path) -> None:
    pq = image_dir / "m.pq"
    pd.DataFrame({"path": [str(image_dir / "imgs" / "x.png")], "label": ["x"]}).to_parquet(pq)
    table = load_manifest(str(pq)).table
    assert table["uri"][0] == f"file://{image_dir}/imgs/x.png"
    assert table["sample_id"][0] == str(image_dir / "imgs" / "x.png")


def test_manifest_missing_columns_names_found_and_required(image_dir: Path) -> None:
    csv = image_dir / "bad.csv"
    csv.write_text("file,class\nimgs/x.png,a\n")
    with pytest.raises(TransferPipeError, match=r"\['path', 'label'\].*\['file', 'class'\]"):
        load_manifest(str(csv))


def test_manifest_with_an_empty_label_or_no_rows_is_rejected(image_dir: Path) -> None:
    csv = image_dir / "bad.csv"
    csv.write_text("path,label\nimgs/x.png,\n")
    with pytest.raises(TransferPipeError, match="empty `label` in row 0"):
        load_manifest(str(csv))
    csv.write_text("path,label\n")
    with pytest.raises(TransferPipeError, match="no rows"):
        load_manifest(str(csv))


def test_manifest_naming_a_missing_file_says_which(image_dir: Path) -> None:
    csv = image_dir / "m.csv"
    csv.write_text("path,label\nimgs/x.png,a\nimgs/gone.png,b\n")
    with pytest.raises(TransferPipeError, match=r"1 image file\(s\) cannot be read.*gone\.png"):
        load_manifest(str(csv))


# --- IDX ------------------------------------------------------------------------------------


@pytest.fixture
def _fresh_idx_cache() -> Iterator[None]:
    clear_idx_cache()
    yield
    clear_idx_cache()


@pytest.mark.usefixtures("_fresh_idx_cache")
def test_idx_folder_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = {"train": rng.integers(0, 256, (3, 4, 4)), "test": rng.integers(0, 256, (2, 4, 4))}
    labels = {"train": np.array([0, 9, 3]), "test": np.array([1, 1])}
    root = write_idx_dataset(tmp_path / "mnist", images, labels, gz=False)
    table = load_manifest(str(root)).table
    assert list(table["sample_id"]) == [
        "test/00000", "test/00001", "train/00000", "train/00001", "train/00002",
    ]  # fmt: skip
    assert list(table["label"]) == ["1", "1", "0", "9", "3"]  # digits: not a fashion folder
    assert table["uri"][4] == f"file://{root}/train-images-idx3-ubyte#2"
    expected = hashlib.sha256(b"|u1:4x4\n" + images["train"][2].astype(np.uint8).tobytes())
    assert table["content_hash"][4] == expected.hexdigest()
    np.testing.assert_array_equal(
        np.asarray(read_image(table["uri"][4]))[:, :, 1], images["train"][2]
    )
    assert list(load_manifest(str(root), split="test").table["split"]) == ["test", "test"]


@pytest.mark.usefixtures("_fresh_idx_cache")
def test_idx_hash_includes_the_shape(tmp_path: Path) -> None:
    pixels = np.arange(16, dtype=np.uint8)
    a = write_idx_dataset(
        tmp_path / "a", {"train": pixels.reshape(1, 4, 4)}, {"train": np.zeros(1)}
    )
    b = write_idx_dataset(
        tmp_path / "b", {"train": pixels.reshape(1, 2, 8)}, {"train": np.zeros(1)}
    )
    hash_a = load_manifest(str(a)).table["content_hash"][0]
    assert hash_a != load_manifest(str(b)).table["content_hash"][0]
    assert hash_a == load_manifest(str(a)).table["content_hash"][0]


@pytest.mark.usefixtures("_fresh_idx_cache")
def test_fashion_alias_follows_the_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_idx_dataset(
        tmp_path / "elsewhere", {"test": np.zeros((2, 3, 3))}, {"test": np.array([0, 9])}
    )
    monkeypatch.setenv(FASHION_MNIST_ENV, str(root))
    manifest = load_manifest("fashion-mnist")
    assert list(manifest.table["label"]) == ["T-shirt/top", "Ankle boot"]  # the alias names them
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "absent"))
    with pytest.raises(TransferPipeError, match="apt-get install dataset-fashion-mnist"):
        load_manifest("fashion-mnist")


@pytest.mark.skipif(
    not FASHION_ROOT.is_dir(), reason=f"Fashion-MNIST is not installed at {FASHION_ROOT}"
)
@pytest.mark.usefixtures("_fresh_idx_cache")
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FASHION_MNIST_ENV, str(FASHION_ROOT))
    manifest = load_manifest("fashion-mnist")
    table = manifest.table
    assert len(table) == 70_000
    assert table["split"].value_counts().to_dict() == {"train": 60_000, "test": 10_000}
    assert set(table["label"]) == set(FASHION_MNIST_CLASSES)
    assert set(table["label"].value_counts()) == {7_000}
    assert table["sample_id"].is_unique and list(table["sample_id"]) == sorted(table["sample_id"])
    img = read_image(table["uri"][0])
    assert img.mode == "RGB" and img.size == (28, 28)
    assert len(load_manifest("fashion-mnist", split="test")) == 10_000


# --- errors ---------------------------------------------------------------------------------


def test_missing_path_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(TransferPipeError, match="does not exist; pass a folder of images"):
        load_manifest(str(tmp_path / "nope"))


def test_empty_folder_and_hidden_only_folder_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(TransferPipeError, match="no image files"):
        load_manifest(str(tmp_path))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "a.png").write_bytes(b"x")
    (tmp_path / "README").write_text("loose file, no class")
    with pytest.raises(TransferPipeError, match="no image files"):
        load_manifest(str(tmp_path))


def test_other_files_and_unknown_splits_are_rejected(tmp_path: Path, class_tree: Path) -> None:
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(TransferPipeError, match=r"not a \.csv/\.parquet manifest"):
        load_manifest(str(tmp_path / "x.txt"))
    with pytest.raises(TransferPipeError, match="defines no splits"):
        load_manifest(str(class_tree), split="train")


def test_read_image_records_missing_and_corrupt_files(class_tree: Path) -> None:
    with pytest.raises(DecodeError) as err:
        read_image((class_tree / "tulip" / "gone.png").as_uri())
    assert err.value.reason == "unreadable"
    with pytest.raises(DecodeError) as err:
        read_image((class_tree / "rose" / "notes.txt").as_uri())
    assert err.value.reason == "not-an-image"
    img = read_image((class_tree / "tulip" / "b.png").as_uri())
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 0, 0)
