"""The heads flow: cached features -> fitted heads, model cards and reports in the Prefect UI.

No logic lives here: each task is a plain function from ``transfer_pipe.steps.train``.
Given a source instead of a feature-set key, it runs the embed flow first (a no-op
that embeds nothing when the feature set is already in the store).
"""

from __future__ import annotations

from typing import Any, cast

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import State
from prefect.utilities.annotations import quote

from flows.embed import run_embed
from flows.parameters import run_parameters
from flows.runs import (
    RETRY,
    artifact_key,
    capture_library_logs,
    run_name,
    tagged,
)
from transfer_pipe.config import TrainConfig, run_values
from transfer_pipe.heads.card import HeadResult
from transfer_pipe.steps import train as steps
from transfer_pipe.steps.checks import check_inputs
from transfer_pipe.steps.results import TrainSummary
from transfer_pipe.steps.target import embed_first, run_config

capture_library_logs()


def _prepare_name(parameters: dict[str, Any]) -> str:
    return f"prepare-{parameters['config'].task}-{parameters['feature_set']}"


def _fit_name(parameters: dict[str, Any]) -> str:
    plan, run = parameters["plan"], parameters["run"]
    plan = plan.unquote() if isinstance(plan, quote) else plan
    seed = f"-seed{run.shot_seed}" if run.shot_seed is not None else ""
    return f"fit-{run.head}{seed}-{plan.task.name}-{plan.feature_set}"


check = task(name="check-inputs", cache_policy=NO_CACHE)(check_inputs)
# (Prefect's type for a name callable that takes the parameters is a Protocol with a
# classmethod, which no plain function satisfies: hence the ignores.)
prepare = task(
    name="prepare-task",
    cache_policy=NO_CACHE,
    task_run_name=_prepare_name,  # type: ignore[arg-type]
    **RETRY,
)(steps.prepare_training)
finalize = task(name="summarize", cache_policy=NO_CACHE)(steps.finalize_training)


@task(name="fit-head", cache_policy=NO_CACHE, task_run_name=_fit_name, **RETRY)  # type: ignore[arg-type]
def fit(plan: steps.TrainPlan, run: steps.HeadRun) -> HeadResult:
    """Fit, evaluate and save one head (or reuse the saved one). A fitted head's report,
    plots inline and where it is saved, becomes a markdown artifact; a reused head's report
    is the one published when it was fitted (the latest under the same key), so a rerun
    that changes nothing adds nothing to the history (and pays no API call per head)."""
    result = steps.train_head(plan, run)
    if result.reused:
        return result
    source = plan.feature_set_spec.source
    create_markdown_artifact(
        steps.head_report(plan.config.store, result, plan.config.storage_options),
        key=artifact_key("head", source, result.task, result.head),
        description=f"{result.head_id} on feature set {plan.feature_set} of {source}",
    )
    return result


@flow(name="train-heads", log_prints=True, flow_run_name=run_name("backbone", "task"))
@run_parameters(TrainConfig)
def train_flow(**values: Any) -> TrainSummary:
    """Fit and compare heads for one task on a cached feature set (embedding the source
    first when given one: a no-op when the store holds it)."""
    config = run_config(TrainConfig, values)  # a bad value fails here, as in the CLI
    with tagged():
        check(config, embed_inputs=False)  # heads, task, feature set: before any embedding
        feature_set, embedded = embed_first(config, run_embed)
        plan = prepare(config, feature_set)
        # quote(): the plan holds the feature arrays; Prefect need not walk them.
        results = [fit(quote(plan), run) for run in plan.runs]  # type: ignore[call-overload]
        summary: TrainSummary = finalize(quote(plan), results, embedded)  # type: ignore[call-overload]
        publish_metrics(
            summary,
            plan.feature_set_spec.source,
            f"{summary.heads_fitted} heads fitted by this run, {summary.heads_reused} reused "
            "(their reports: the head artifacts of the run that fitted them)",
        )
    return summary


def publish_metrics(summary: TrainSummary, source: str, note: str) -> None:
    """The heads x metrics table, one history per dataset and task (the heads flow's, and
    the pipeline's on a night it fits nothing)."""
    create_table_artifact(
        summary.table,
        key=artifact_key("heads-metrics", source, summary.task),
        description=(
            f"test metrics, task {summary.task}, feature set {summary.feature_set}: {note}"
        ),
    )


def run_train(config: TrainConfig) -> TrainSummary:
    """Run the heads flow on a config (its flat parameters: ``config.run_values``); the
    summary comes from the final state (see ``flows.embed.run_embed`` for why)."""
    state = cast(State[TrainSummary], train_flow(**run_values(config), return_state=True))
    summary: TrainSummary = state.result()
    return summary
