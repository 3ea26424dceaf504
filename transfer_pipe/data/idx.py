"""IDX files (the MNIST / Fashion-MNIST layout): parse, find, name the classes.

An IDX file is a 4-byte magic (two zero bytes, a dtype code, the number of
dimensions), one big-endian uint32 per dimension, then the raw values. We read
the uint8 flavour only: images ``[N, H, W]`` and labels ``[N]``.
"""

from __future__ import annotations

import gzip
import posixpath
import re
import zlib
from functools import lru_cache
from os import PathLike, fspath

import fsspec
import numpy as np

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.schema import TEST, TRAIN

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# The standard file names; the dot variant ("train-images.idx3-ubyte") is how
# some mirrors ship the uncompressed files.
_IDX_NAME = re.compile(r"^(train|t10k)-(images|labels)[.-]idx([13])-ubyte(\.gz)?$")
# What ``split_idx_uri`` accepts, as one pattern (the file name above, then "#<index>"),
# to look at a whole manifest's URIs at once.
IDX_URI = r"(?:^|/)(?:train|t10k)-(?:images|labels)[.-]idx[13]-ubyte(?:\.gz)?#\d+$"
_SPLIT_OF_PREFIX = {"train": TRAIN, "t10k": TEST}
_GZIP_MAGIC = b"\x1f\x8b"
_UINT8_CODE = 0x08
# Images are [N, H, W], labels [N]; nothing else is an MNIST-layout file.
_ALLOWED_NDIMS = (1, 3)


def to_url(path_or_url: str | PathLike[str]) -> str:
    """The fsspec URL for a local path or URL (URLs pass through unchanged).

    Local paths become ``file:///abs/path`` without percent-encoding, because
    fsspec's local filesystem does not decode it.
    """
    text = fspath(path_or_url)
    fs, path = fsspec.core.url_to_fs(text)
    return str(fs.unstrip_protocol(path))


def read_idx(path_or_url: str | PathLike[str]) -> np.ndarray:
    """Read a uint8 IDX file, gzipped or not (decided by its first bytes).

    Returns a read-only ``uint8`` array: ``[N, H, W]`` for images, ``[N]`` for
    labels. Cached per process and URL, so a worker reading thousands of items
    from one file parses it once. Raises TransferPipeError for a malformed file.
    """
    return _read_idx_cached(to_url(path_or_url))


def clear_idx_cache() -> None:
    """Forget every parsed IDX file (for tests, or after a file changed on disk)."""
    _read_idx_cached.cache_clear()


# Four entries hold a full MNIST-style dataset (2 splits x images + labels).
@lru_cache(maxsize=4)
def _read_idx_cached(url: str) -> np.ndarray:
    with fsspec.open(url, "rb") as f:
        raw: bytes = f.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise TransferPipeError(
                f"{url} is a damaged gzip file ({exc}); download it again."
            ) from exc
    array = parse_idx(raw, url)
    # Cached arrays are shared by every caller; a stray write would corrupt them all.
    array.flags.writeable = False
    return array


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the (uncompressed) bytes of a uint8 IDX file into an array.

    ``name`` only appears in error messages. Returns a view on ``raw``.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise TransferPipeError(
            f"{name} is not an IDX file (bad magic bytes {raw[:4]!r}); "
            "pass the MNIST-layout files (train-images-idx3-ubyte[.gz], ...)."
        )
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != _UINT8_CODE:
        raise TransferPipeError(
            f"{name} holds IDX dtype code 0x{dtype_code:02x}; only uint8 (0x08) "
            "image and label files are supported."
        )
    if ndim not in _ALLOWED_NDIMS:
        raise TransferPipeError(
            f"{name} has {ndim} dimensions; expected 3 (images N x H x W) or 1 (labels N)."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise TransferPipeError(f"{name} is truncated inside its header; download it again.")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise TransferPipeError(
            f"{name} declares shape {shape} ({expected} bytes) but holds "
            f"{len(raw) - header} bytes of data; the file is damaged, download it again."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_dataset(root: str | PathLike[str]) -> dict[str, tuple[str, str]]:
    """Find the standard IDX files directly inside ``root`` (a path or fsspec URL).

    Returns ``{split: (images_url, labels_url)}`` with splits ``"train"`` and
    ``"test"`` (from the ``t10k`` files); empty when the folder holds no IDX
    files. Raises TransferPipeError when a split has images but no labels (or
    the reverse). Uncompressed files win over ``.gz`` when both are present.
    """
    fs, path = fsspec.core.url_to_fs(to_url(root))
    found: dict[tuple[str, str], str] = {}
    for entry in sorted(fs.ls(path, detail=False)):
        match = _IDX_NAME.match(posixpath.basename(entry))
        if match is None:
            continue
        prefix, kind, _dims, gz = match.groups()
        key = (_SPLIT_OF_PREFIX[prefix], kind)
        if key not in found or not gz:
            found[key] = str(fs.unstrip_protocol(entry))
    dataset: dict[str, tuple[str, str]] = {}
    for split in sorted({split for split, _ in found}):
        images, labels = found.get((split, "images")), found.get((split, "labels"))
        if images is None or labels is None:
            have = images or labels
            raise TransferPipeError(
                f"IDX folder {root} has {have} but not its "
                f"{'labels' if labels is None else 'images'} file; add the missing file."
            )
        dataset[split] = (images, labels)
    return dataset


def idx_class_names(root: str | PathLike[str]) -> tuple[str, ...] | None:
    """Fashion-MNIST's 10 class names when ``root`` looks like Fashion-MNIST, else None.

    The folder name decides; its parent's name counts too, for torchvision's
    ``FashionMNIST/raw`` layout. None means "name classes by their digit".
    """
    parts = to_url(root).rstrip("/").split("/")
    if any("fashion" in part.lower() for part in parts[-2:]):
        return FASHION_MNIST_CLASSES
    return None


def label_names(labels: np.ndarray, class_names: tuple[str, ...] | None) -> np.ndarray:
    """Map integer labels to class-name strings (digits when ``class_names`` is None)."""
    if class_names is None:
        return labels.astype(str)
    if labels.size and int(labels.max()) >= len(class_names):
        raise TransferPipeError(
            f"IDX labels reach {int(labels.max())} but only {len(class_names)} class "
            "names are known; the labels file does not belong to this dataset."
        )
    return np.asarray(class_names, dtype=object)[labels]


def idx_uri(file_url: str, index: int) -> str:
    """The URI of one image inside an IDX file: ``<file_url>#<index>``."""
    return f"{file_url}#{index}"


def split_idx_uri(uri: str) -> tuple[str, int] | None:
    """``(file_url, index)`` for an IDX image URI, or None for any other URI.

    Only a digit fragment on a standard IDX file name counts, so an ordinary
    file whose name contains ``#`` is never mistaken for one.
    """
    base, sep, fragment = uri.rpartition("#")
    if not sep or not fragment.isdigit():
        return None
    if _IDX_NAME.match(posixpath.basename(base)) is None:
        return None
    return base, int(fragment)
