"""The names every layer shares for an image row: its columns and its splits.

A manifest (``data``), a feature set's per-row arrays (``store``), the task tables
(``heads``) and the fine-tuning splits all speak of the same columns; they are spelled
here once. Like ``errors``, this module imports nothing from ``transfer_pipe``, so the
sibling layers ``data`` and ``store`` can both use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

SAMPLE_ID: Final = "sample_id"  # unique per image; labels join on it, never on row order
URI: Final = "uri"  # an fsspec URL, or ``<idx file>#<index>``
LABEL: Final = "label"
SPLIT: Final = "split"
CONTENT_HASH: Final = "content_hash"  # sha256 of the image's bytes: the reuse key

ROW_COLUMNS: Final = (SAMPLE_ID, URI, LABEL, SPLIT, CONTENT_HASH)
"""The manifest's columns, in order; a feature set stores each of them per row."""

FAILURE: Final = "failure"
"""A feature set's per-row failure reason ("" for a good row)."""

TRAIN: Final = "train"
VAL: Final = "val"
TEST: Final = "test"
SPLITS: Final = (TRAIN, VAL, TEST)
"""The splits of the evaluation protocol, in the order they are reported."""

SPLIT_ALIASES: Final[Mapping[str, tuple[str, ...]]] = {
    TRAIN: (TRAIN,),
    VAL: (VAL, "valid", "validation"),
    TEST: (TEST,),
}
"""The names a source may give each split (e.g. a ``validation/`` folder)."""
