"""IDX files (MNIST's format) written here, and where Fashion-MNIST's real ones are."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

FASHION_ROOT = Path(
    os.environ.get("TRANSFER_PIPE_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
)


def idx_bytes(array: np.ndarray, dtype_code: int = 0x08) -> bytes:
    """The bytes of an IDX file holding ``array`` (uncompressed)."""
    header = bytes([0, 0, dtype_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    """Write ``array`` as an IDX file at ``path``, gzipped when ``gz`` (whatever the name)."""
    raw = idx_bytes(np.asarray(array, dtype=np.uint8))
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_idx_dataset(
    root: Path, images: dict[str, np.ndarray], labels: dict[str, np.ndarray], *, gz: bool = True
) -> Path:
    """A standard MNIST-layout folder; keys are "train" and "test"."""
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, prefix in (("train", "train"), ("test", "t10k")):
        if split in images:
            write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images[split], gz=gz)
            write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels[split], gz=gz)
    return root
