"""What a sweep would cost: the estimate of each of its embed runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transfer_pipe.steps.estimate.embed import estimate_embed
from transfer_pipe.steps.estimate.records import SweepEstimate

if TYPE_CHECKING:
    from transfer_pipe.steps.sweep import SweepPlan


def estimate_sweep(plan: SweepPlan) -> SweepEstimate:
    """The cost of the sweep's embed runs (pretrained, then the random baseline)."""
    return SweepEstimate(embeds=tuple(estimate_embed(embed) for embed in plan.embeds.values()))
