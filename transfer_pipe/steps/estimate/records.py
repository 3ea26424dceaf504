"""What a dry run answers: the cost of an embed or fine-tuning run, as records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from transfer_pipe.config import Dtype
from transfer_pipe.records import Record
from transfer_pipe.steps.results import SplitsShownFlat
from transfer_pipe.store.cards import SplitSizes

DTYPES: tuple[str, ...] = get_args(Dtype)


@dataclass(frozen=True)
class LayerEstimate(Record):
    """One layer of a feature set: its width and what a row of it costs in the store."""

    layer: str
    width: int
    bytes_per_row: dict[str, float]  # dtype -> compressed bytes per good row


@dataclass(frozen=True)
class EmbedEstimate(Record):
    """What ``transfer-pipe embed`` would do and cost; nothing of it is done."""

    feature_set: str
    store: str
    source: str
    backbone: str
    image_size: int
    device: str
    dtype: str
    status: str  # of the feature set in the store now: "missing" | "incomplete" | "complete"
    rows: int
    to_embed: int  # forward passes the run would make
    to_copy: int  # rows copied by content hash from other feature sets (same weights)
    already_written: int  # rows of shards an interrupted run wrote, or the whole set
    layers: list[LayerEstimate]
    bytes: int  # the feature set once complete, in ``dtype``
    bytes_by_dtype: dict[str, int]
    bytes_from: str
    images_per_s: float | None  # None when there is nothing to embed
    seconds: float | None  # expected embedding time on this machine; 0 with nothing to embed
    seconds_from: str


@dataclass(frozen=True)
class FinetuneEstimate(SplitsShownFlat):
    """What ``transfer-pipe finetune`` would do and cost; nothing of it is done."""

    feature_set: str
    store: str
    backbone: str
    task: str
    policy: str
    epochs: int
    image_size: int
    device: str
    splits: SplitSizes  # rows per split (for a source still to embed: if every image decodes)
    embed: EmbedEstimate | None  # the embed run that comes first, given a source
    seconds_per_epoch: float | None
    seconds: float | None  # embedding first plus ``epochs`` epochs (early stopping may cut it)
    seconds_from: str


@dataclass(frozen=True)
class SweepEstimate(Record):
    """What ``transfer-pipe sweep`` would embed and what it would cost (``--dry-run``):
    the pretrained backbone's run, then its random baseline's; nothing of it is done."""

    embeds: tuple[EmbedEstimate, ...]
