"""The embed flow: orders the library's steps; Prefect shows runs, progress and a summary.

No logic lives here: each task is a plain function from ``transfer_pipe.steps``.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import flow, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from flows.parameters import run_parameters
from transfer_pipe import steps
from transfer_pipe.config import EmbedConfig, run_values
from transfer_pipe.features.shard import ShardResult
from transfer_pipe.steps.results import EmbedSummary
from transfer_pipe.steps.target import run_config

# The store, not Prefect's cache, decides what is already done: that check also works from
# the CLI and notebooks, and across scheduled runs (Prefect's default key includes the run id).
prepare = task(name="prepare", cache_policy=NO_CACHE)(steps.prepare_embedding)
finalize = task(name="finalize", cache_policy=NO_CACHE)(steps.finalize_embedding)


@task(name="compute-shards", cache_policy=NO_CACHE)
def compute(plan: steps.EmbedPlan) -> list[ShardResult]:
    """Run the pending shards on Dask, mirroring progress into a Prefect progress artifact:
    the share of the feature set's shards written, by this run or an interrupted one."""
    shards, before = max(1, plan.spec.n_shards), plan.shards_already_done
    artifact: UUID = create_progress_artifact(  # type: ignore[assignment]
        100.0 * before / shards, description=f"shards of feature set {plan.spec.key} written"
    )

    def report(done: int, pending: int) -> None:
        update_progress_artifact(artifact, 100.0 * (before + done) / shards)

    results = steps.compute_shards(plan, on_progress=[report])
    # 100 % only when every shard is written: the shards done before plus those returned.
    update_progress_artifact(artifact, 100.0 * (before + len(results)) / shards)
    return results


@flow(name="embed", log_prints=True)
@run_parameters(EmbedConfig)
def embed_flow(**values: Any) -> EmbedSummary:
    """Embed every image of a source once into the feature store."""
    config = run_config(EmbedConfig, values)  # a bad value fails here, as in the CLI
    plan = prepare(config)
    # quote(): Prefect would otherwise walk every shard task of the plan (70,000 uris
    # for Fashion-MNIST) to track dependencies, costing seconds per task.
    results = compute(quote(plan))  # type: ignore[call-overload]  # quote is unwrapped
    summary: EmbedSummary = finalize(quote(plan), quote(results))  # type: ignore[call-overload]
    create_table_artifact(
        [{"field": k, "value": str(v)} for k, v in summary.to_dict().items()],
        key="embed-summary",
        description=f"feature set {summary.feature_set}",
    )
    return summary


def run_embed(config: EmbedConfig) -> EmbedSummary:
    """Run the embed flow on a config (its flat parameters are the config's fields)."""
    return embed_flow(**run_values(config))
