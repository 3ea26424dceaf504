"""Running a plan's shard tasks on Dask (a local cluster, or the one at ``dask_address``):
each shard written by a worker, a small summary back; a lost scheduler or a failed shard
stops the run with a message that says how to resume."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from transfer_pipe.cluster import plan_cluster
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.features.tasks import ShardResult, run_shard
from transfer_pipe.steps.embed.plan import EmbedPlan
from transfer_pipe.steps.failures import StepFailed

logger = logging.getLogger(__name__)
ProgressCallback = Callable[[int, int], None]


def compute_shards(
    plan: EmbedPlan, on_progress: Sequence[ProgressCallback] = ()
) -> list[ShardResult]:
    """Run the pending shards on Dask; returns one small summary per shard written."""
    if not plan.tasks:
        return []
    from distributed import as_completed
    from tqdm import tqdm

    from transfer_pipe.cluster import cluster_resources, dask_client

    cluster = plan_cluster(plan.config.dask_address, plan.config.workers)
    results: list[ShardResult] = []
    total = len(plan.tasks)
    with (
        dask_client(cluster) as client,
        tqdm(total=total, unit="shard", desc=f"embed {plan.spec.key}") as bar,
    ):
        # Checked before submitting: a resource no worker offers would wait forever.
        resources = cluster_resources(client, cluster, plan.config.device)
        futures = client.map(
            run_shard,
            plan.tasks,
            key=[f"shard-{plan.spec.key}-{t.shard}" for t in plan.tasks],
            resources=resources or None,
        )
        shard_of = {f.key: t.shard for f, t in zip(futures, plan.tasks, strict=True)}
        try:
            for future in as_completed(futures):
                results.append(_shard_result(future, shard_of[future.key], plan))
                bar.update(1)
                for callback in on_progress:
                    callback(len(results), total)
        except (Exception, asyncio.CancelledError) as exc:
            # The scheduler's loss surfaces, by timing, as a cancelled future, a closed
            # comm or a cancelled wait: whichever it is, a client cut off from its
            # scheduler means the run cannot go on (a retry would only wait to connect).
            if isinstance(exc, TransferPipeError) or not _cut_off(client):
                raise
            written = {r.shard for r in results}
            pending = next(t.shard for t in plan.tasks if t.shard not in written)
            raise TransferPipeError(_lost_message(plan, pending)) from exc
    logger.info(
        "feature set %s: %d shards written, %d images embedded, %d copied, %d failed",
        plan.spec.key,
        len(results),
        sum(r.embedded for r in results),
        sum(r.reused for r in results),
        sum(r.failed for r in results),
    )
    return sorted(results, key=lambda r: r.shard)


def _cut_off(client: Any, wait_s: float = 5.0) -> bool:
    """Whether ``client`` lost its scheduler. The error that reports the loss can reach
    the driver before the client's own status changes (seen on a loaded machine, where a
    task retry then waited 30 s to connect and reported that instead), so a running
    status is given ``wait_s`` to change."""
    deadline = time.monotonic() + wait_s
    while client.status == "running":
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _lost_message(plan: EmbedPlan, shard: int) -> str:
    return (
        f"lost the Dask scheduler at {plan_cluster(plan.config.dask_address, 0).address} "
        f"while shard {shard} of feature set {plan.spec.key} was pending: the run "
        "stops. Shards already written are kept; restart the scheduler and its "
        "workers and run again to resume from them."
    )


def _shard_result(future: Any, shard: int, plan: EmbedPlan) -> ShardResult:
    """The shard's summary, or ``StepFailed`` naming the shard and the cause (a user's
    mistake, ``TransferPipeError``, passes as it is). The shards written before stay
    written: the next run resumes from them."""
    from transfer_pipe.cluster import lost_scheduler

    try:
        result: ShardResult = future.result()
    except TransferPipeError:
        raise
    except Exception as exc:
        if lost_scheduler(exc):  # not transient: no retry can reach the lost scheduler
            raise TransferPipeError(_lost_message(plan, shard)) from exc
        raise StepFailed(
            f"shard {shard} of {plan.spec.n_shards} (rows {plan.spec.shard_rows(shard).start}-"
            f"{plan.spec.shard_rows(shard).stop - 1}) of feature set {plan.spec.key} failed: "
            f"{type(exc).__name__}: {exc}. Shards already written are kept; run again to "
            "resume from them."
        ) from exc
    return result


def steady_rate(results: Sequence[ShardResult]) -> float | None:
    """Images/s once the workers are warm: rows finished after the first shard completed."""
    if len(results) < 2:
        return None
    ordered = sorted(results, key=lambda r: r.finished)
    span = ordered[-1].finished - ordered[0].finished
    rows = sum(r.rows for r in ordered[1:])
    return rows / span if span > 0 else None
