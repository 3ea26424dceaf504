"""The claim an embed run holds on its lineage while it writes a version (``store.claims``):
taken when the run plans, given back when it completes or stops. Claims are kept in the
run's context (``run_context``), which the plan refers to but does not carry when pickled:
a plan crosses Prefect tasks, and a claim's heartbeat thread cannot travel with it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from transfer_pipe.run_context import RunContext
from transfer_pipe.store import FeatureStore
from transfer_pipe.store.claims import Holder, every

if TYPE_CHECKING:
    from transfer_pipe.steps.embed.plan import EmbedPlan

logger = logging.getLogger(__name__)


def take_claim(context: RunContext, store: FeatureStore, key: str, lineage: str) -> bool:
    """Take the claim of ``lineage`` to write its version ``key``, waiting while another
    run holds it; False when that run completed ``key`` meanwhile: nothing to write.
    (Another version of the lineage it completed becomes the parent.) The claim is kept in
    ``context``."""
    held = context.claims.get((store.url, key))
    if held is not None and held.held:
        return True  # a retried prepare task of this same run

    def waiting(holder: Holder) -> None:
        status = store.status(key)
        written = int(store.shards_done(key).sum()) if status == "incomplete" else 0
        logger.warning(  # the run stands still: say why, where a user looks
            "lineage %s of feature set %s is being written by another run (%s; %d shards "
            "written so far): waiting for it, to reuse what it writes",
            lineage,
            key,
            holder.describe(),
            written,
        )

    claim = store.claim(
        lineage, done=lambda: store.status(key) == "complete", waiting=every(30, waiting)
    )
    if claim is None:
        return False
    context.claims[store.url, key] = claim
    return True


def release_claim(plan: EmbedPlan) -> None:
    """Give back the claim ``prepare_embedding`` took for ``plan`` (if this process still
    holds it): a run that stops for any reason lets the next one go on at once."""
    claim = plan.context.claims.pop((plan.config.store, plan.spec.key), None)
    if claim is not None:
        claim.release()
