"""What the app prints that no step returns: results gathered from several steps."""

from __future__ import annotations

import typing
from dataclasses import dataclass

from transfer_pipe.records import Record

if typing.TYPE_CHECKING:  # importing transfer_pipe.steps loads torch: not at import
    from transfer_pipe.steps.estimate import EmbedEstimate


@dataclass(frozen=True)
class SweepEstimate(Record):
    """What ``transfer-pipe sweep`` would embed and what it would cost (``--dry-run``):
    the pretrained backbone's run, then its random baseline's; nothing of it is done."""

    embeds: tuple[EmbedEstimate, ...]
