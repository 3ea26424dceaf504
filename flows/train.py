"""The heads flow: cached features -> fitted heads, model cards and reports in the Prefect UI.

No logic lives here: each task is a plain function from ``transfer_pipe.steps.train``.
Given a source instead of a feature-set key, it runs the embed flow first (a no-op
that embeds nothing when the feature set is already in the store).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from flows.embed import run_embed
from flows.parameters import run_parameters
from transfer_pipe.config import TrainConfig, run_values
from transfer_pipe.heads.card import HeadResult
from transfer_pipe.report import markdown_report
from transfer_pipe.steps import train as steps
from transfer_pipe.steps.checks import check_inputs
from transfer_pipe.steps.results import TrainSummary
from transfer_pipe.steps.target import embed_first, run_config

check = task(name="check-inputs", cache_policy=NO_CACHE)(check_inputs)
prepare = task(name="prepare-task", cache_policy=NO_CACHE)(steps.prepare_training)
finalize = task(name="summarize", cache_policy=NO_CACHE)(steps.finalize_training)


@task(name="fit-head", cache_policy=NO_CACHE, task_run_name="fit-{run.head}")
def fit(plan: steps.TrainPlan, run: steps.HeadRun) -> HeadResult:
    """Fit, evaluate and save one head; its report becomes a markdown artifact."""
    result = steps.train_head(plan, run)
    create_markdown_artifact(
        markdown_report(result),
        key=f"head-{result.head}",
        description=f"{result.head_id} on feature set {plan.feature_set}",
    )
    return result


@flow(name="train-heads", log_prints=True)
@run_parameters(TrainConfig)
def train_flow(**values: Any) -> TrainSummary:
    """Fit and compare heads for one task on a cached feature set (embedding the source
    first when given one: a no-op when the store holds it)."""
    config = run_config(TrainConfig, values)  # a bad value fails here, as in the CLI
    check(config, embed_inputs=False)  # heads, task, feature set: before anything is embedded
    feature_set, embedded = embed_first(config, run_embed)
    plan = prepare(config, feature_set)
    # quote(): the plan holds the feature arrays; Prefect need not walk them.
    results = [fit(quote(plan), run) for run in plan.runs]  # type: ignore[call-overload]
    summary: TrainSummary = finalize(quote(plan), results, embedded)  # type: ignore[call-overload]
    create_table_artifact(
        summary.table,
        key="heads-metrics",
        description=f"test metrics, task {summary.task}, feature set {summary.feature_set}",
    )
    return summary


def run_train(config: TrainConfig) -> TrainSummary:
    """Run the heads flow on a config (its flat parameters: ``config.run_values``)."""
    return train_flow(**run_values(config))
