"""The Manifest: one row per image, the common currency of every source."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import pandas as pd

from transfer_pipe.data.idx import IDX_URI
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.schema import ROW_COLUMNS, SAMPLE_ID, SPLIT, URI

JPEG_URI = r"\.(?:jpe?g|jpe|jfif)(?:\?|$)"  # a JPEG file's suffix, before any query


@dataclass(frozen=True)
class Manifest:
    """Rows sorted by ``sample_id``; every column is a string.

    ``uri`` is an fsspec URL (``file:///...``, ``s3://...``), or for IDX sources
    ``file:///path/train-images-idx3-ubyte.gz#<index>``. ``content_hash`` is the
    sha256 hex digest of the image's bytes, so identical images share a hash
    wherever they live.
    """

    table: pd.DataFrame
    source: str  # a human description, e.g. "folder:/data/flowers"

    def __post_init__(self) -> None:
        missing = [c for c in ROW_COLUMNS if c not in self.table.columns]
        if missing:
            raise TransferPipeError(f"manifest from {self.source} lacks columns {missing}")
        if self.table[SAMPLE_ID].duplicated().any():
            dup = self.table.loc[self.table[SAMPLE_ID].duplicated(), SAMPLE_ID].iloc[0]
            raise TransferPipeError(
                f"manifest from {self.source} has duplicate sample_id {dup!r}; "
                "give every image a unique sample_id."
            )

    @classmethod
    def from_rows(cls, table: pd.DataFrame, source: str) -> Manifest:
        """Normalize a table to the manifest's columns, string dtype, sorted by sample_id."""
        table = table.loc[:, list(ROW_COLUMNS)].astype(str)
        table = table.sort_values(SAMPLE_ID, kind="stable").reset_index(drop=True)
        return cls(table=table, source=source)

    def __len__(self) -> int:
        return len(self.table)

    def limit(self, n: int | None) -> Manifest:
        """At most ``n`` rows (all when None), every split keeping its share of them (to
        within one row), and a smaller limit's rows always a subset of a larger one's.

        Rows are taken in sample_id order within each split, the splits interleaved by
        how far through themselves each row lies, and the first ``n`` of that one order
        kept: the same ``n`` always picks the same images, and raising ``n`` only adds.
        """
        if n is None or n >= len(self):
            return self
        split = self.table[SPLIT]
        position = split.groupby(split, sort=False).cumcount()
        through = (position + 0.5) / split.map(split.value_counts())
        order = pd.DataFrame({"through": through, SPLIT: split}).sort_values(
            ["through", SPLIT], kind="stable"
        )
        return Manifest.from_rows(self.table.loc[order.index[:n]], self.source)

    @functools.cached_property  # asked by the run's check and its plan: rows never change
    def has_image_files(self) -> bool:
        """Whether some row is an image file (not a row of an IDX array): a file may carry
        a colour profile, which decoding applies (``decode_image``)."""
        return bool((~self.table[URI].str.contains(IDX_URI)).any())

    @functools.cached_property
    def has_jpeg(self) -> bool:
        """Whether some row names a JPEG file (by its suffix, before any query): the only
        format whose decode mode changes its pixels (``Preprocessing.decode``)."""
        return bool(self.table[URI].str.contains(JPEG_URI, case=False).any())

    def digest(self) -> str:
        """sha256 over every row: changes when any image, label, split or id changes."""
        return self._digest

    @functools.cached_property
    def _digest(self) -> str:  # a run asks twice (its check, its plan); rows never change
        h = hashlib.sha256()
        for row in self.table.itertuples(index=False):
            h.update("\x1f".join(row).encode())
            h.update(b"\x1e")
        return h.hexdigest()
