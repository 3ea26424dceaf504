"""The end of an embed run: the feature set marked complete (by the run that holds its
claim) with its provenance, and the run summed up."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from transfer_pipe.cluster import resolve_device
from transfer_pipe.features.tasks import ShardResult
from transfer_pipe.steps.embed.claims import release_claim
from transfer_pipe.steps.embed.compute import steady_rate
from transfer_pipe.steps.embed.plan import EmbedPlan
from transfer_pipe.steps.failures import FailureReport, failure_report
from transfer_pipe.steps.results import EmbedSummary
from transfer_pipe.store import FeatureStore, open_store
from transfer_pipe.store.provenance import Completion, RowCounts

logger = logging.getLogger(__name__)
_LIBRARIES = ("transfer-pipe", "torch", "torchvision", "numpy", "zarr", "dask", "pillow")


def finalize_embedding(plan: EmbedPlan, results: Sequence[ShardResult]) -> EmbedSummary:
    """Mark the feature set complete (once every shard is written) and summarize the run."""
    store = open_store(plan.config.store, plan.config.storage_options)
    key = plan.spec.key
    if plan.status_before == "complete":
        failed = store.failed_count(key)
        if failed:
            logger.warning(
                "feature set %s: %d of its %d images failed when it was made; the run's "
                "failures table and `transfer-pipe show %s` list them",
                key,
                failed,
                plan.spec.rows,
                key,
            )
        return _summary(plan, results, failed, store.noted_count(key), "complete")
    failures = failure_report(store, key, limit=0)
    _warn_of_failures(plan, failures)
    claim = plan.context.claims.get((store.url, key))
    if claim is not None and not claim.held:
        # It stalled past its claim's expiry and another run took over: that run marks
        # the feature set complete (one writer of its attributes).
        logger.warning("feature set %s: another run took over its claim; it completes it", key)
    elif store.status(key) != "complete":
        store.mark_complete(key, _completion(plan, store, results, failures).to_dict())
    release_claim(plan)
    return _summary(plan, results, failures.total, failures.noted, store.status(key))


def _warn_of_failures(plan: EmbedPlan, failures: FailureReport) -> None:
    """Say, where a user looks, how many images failed or were used with a note."""
    key = plan.spec.key
    if failures.total:
        logger.warning(
            "feature set %s: %s, out of %d images; the run's failures table and "
            "`transfer-pipe show %s` list them",
            key,
            failures.message,
            plan.spec.rows,
            key,
        )
    if failures.noted:
        logger.warning(
            "feature set %s: %s; the failures table's notes and `transfer-pipe show %s` "
            "say which and why",
            key,
            failures.note_message,
            key,
        )


def _completion(
    plan: EmbedPlan,
    store: FeatureStore,
    results: Sequence[ShardResult],
    failures: FailureReport,
) -> Completion:
    """The provenance the run records as it completes the feature set."""
    stats = store.shard_stats(plan.spec.key)
    return Completion(
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
        libraries=library_versions(),
        # Where the forward passes ran: a dry run's time estimate matches on it.
        device=_device_name(plan.config.device, results),
        counts=RowCounts(
            rows=plan.spec.rows,
            failed=failures.total,
            noted=failures.noted,
            embedded=int(stats["embedded"].sum()),
            reused_from_other_sets=int(stats["reused"].sum()),
        ),
        seconds={**plan.seconds, "shards": float(stats["seconds"].sum())},
    )


def _device_name(requested: str, results: Sequence[ShardResult]) -> str:
    """``cpu`` or ``cuda``: where this run's forward passes ran, as its workers said; for
    a run that ran none (its shards written by an earlier attempt, or copied), what
    ``requested`` (``auto`` included) resolves to here."""
    ran = {r.device for r in results if r.device}
    if ran:
        return "cuda" if "cuda" in ran else ran.pop()
    if requested != "auto":
        return requested.split(":", 1)[0]
    return resolve_device(requested).type  # imports torch: rare (a resume with no work)


def _summary(
    plan: EmbedPlan, results: Sequence[ShardResult], failed: int, noted: int, status: str
) -> EmbedSummary:
    """What the run did, in numbers."""
    embedded = sum(r.embedded for r in results)
    return EmbedSummary(
        feature_set=plan.spec.key,
        store=plan.config.store,
        source=plan.spec.source,
        backbone=plan.spec.backbone,
        layers=list(plan.spec.layers),
        rows=plan.spec.rows,
        failed=failed,
        embedded=embedded,
        reused=plan.spec.rows - failed - embedded,
        shards=plan.spec.n_shards,
        shards_computed=len(results),
        shards_already_done=plan.shards_already_done,
        status_before=plan.status_before,
        steady_images_per_s=steady_rate(results),
        status=status,
        noted=noted,
    )


def embed_message(summary: EmbedSummary) -> str:
    """One line on what an embed run did, e.g. ``feature set 3f..: 18 images embedded, 0
    reused; 4 images failed (see the failures table)``."""
    message = (
        f"feature set {summary.feature_set}: {summary.embedded} images embedded, "
        f"{summary.reused} reused"
    )
    if summary.failed:
        images = "image" if summary.failed == 1 else "images"
        message += f"; {summary.failed} {images} failed (see the failures table)"
    return message


def library_versions(names: Sequence[str] = _LIBRARIES) -> dict[str, str]:
    """Installed version of each distribution in ``names`` (provenance, model cards)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
