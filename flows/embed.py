"""The embed flow: orders the library's steps; Prefect shows runs, progress, a summary and
the images that failed.

No logic lives here: each task is a plain function from ``transfer_pipe.steps``.
"""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from prefect import flow, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State
from prefect.utilities.annotations import quote

from flows.parameters import run_parameters
from flows.runs import (
    RETRY,
    artifact_key,
    capture_library_logs,
    dataset_name,
    run_name,
    tagged,
)
from transfer_pipe import steps
from transfer_pipe.config import EmbedConfig, run_values
from transfer_pipe.features.tasks import ShardResult
from transfer_pipe.progress import WholePercent
from transfer_pipe.run_context import open_context
from transfer_pipe.steps.embed import embed_message
from transfer_pipe.steps.failures import FAILURE_ROWS, failure_report
from transfer_pipe.steps.results import EmbedSummary
from transfer_pipe.steps.target import run_config
from transfer_pipe.store import open_store

capture_library_logs()


def _prepare_name(parameters: dict[str, Any]) -> str:
    config = parameters["config"]
    return f"prepare-{dataset_name(config.source)}-{config.backbone}"


def _plan_name(verb: str) -> Any:
    def name(parameters: dict[str, Any]) -> str:
        plan = parameters["plan"]
        plan = plan.unquote() if isinstance(plan, quote) else plan
        return f"{verb}-{plan.spec.key}"

    return name


# The store, not Prefect's cache, decides what is already done: that check also works from
# the CLI and notebooks, and across scheduled runs (Prefect's default key includes the run id).
prepare = task(name="prepare", cache_policy=NO_CACHE, task_run_name=_prepare_name, **RETRY)(  # type: ignore[arg-type]
    steps.prepare_embedding
)
finalize = task(
    name="finalize", cache_policy=NO_CACHE, task_run_name=_plan_name("finalize"), **RETRY
)(steps.finalize_embedding)


@task(
    name="compute-shards",
    cache_policy=NO_CACHE,
    task_run_name=_plan_name("shards"),
    **RETRY,
)
def compute(plan: steps.EmbedPlan) -> list[ShardResult]:
    """Run the pending shards on Dask, mirroring progress into a Prefect progress artifact:
    the share of the feature set's shards written, by this run or an interrupted one."""
    shards, before = max(1, plan.spec.n_shards), plan.shards_already_done
    artifact: UUID = create_progress_artifact(  # type: ignore[assignment]
        100.0 * before / shards, description=f"shards of feature set {plan.spec.key} written"
    )
    progress = WholePercent(
        shards, before, lambda percent: update_progress_artifact(artifact, percent)
    )
    results = steps.compute_shards(plan, on_progress=[progress])
    # 100 % only when every shard is written: the shards done before plus those returned.
    progress.finish(len(results))
    return results


def _nothing_to_compute(plan: steps.EmbedPlan) -> list[ShardResult]:
    """Every shard is written already: the progress artifact says so (one API call, where
    the compute task would cost a task run and two)."""
    shards = max(1, plan.spec.n_shards)
    create_progress_artifact(
        100.0 * plan.shards_already_done / shards,
        description=f"shards of feature set {plan.spec.key} written",
    )
    return []


def _report(summary: EmbedSummary, config: EmbedConfig) -> None:
    """The summary table and, when images failed, the failures table (first rows, total)."""
    create_table_artifact(
        [{"field": k, "value": str(v)} for k, v in summary.to_dict().items()],
        key=artifact_key("embed-summary", summary.source),
        description=f"feature set {summary.feature_set} of {summary.source}",
    )
    if not summary.failed and not summary.noted:
        return  # a night without either reads no failure column
    store = open_store(config.store, config.storage_options)
    failures = failure_report(store, summary.feature_set, FAILURE_ROWS)
    shown = "" if failures.total <= FAILURE_ROWS else f" (the first {FAILURE_ROWS} shown)"
    # The failures table, and its notes: the images used with a caveat, in a column.
    rows = [{**row, "note": ""} for row in failures.rows]
    rows += [{**row, "reason": ""} for row in failures.notes]
    said = "; ".join(m for m in (failures.message, failures.note_message) if m)
    create_table_artifact(
        rows,
        key=artifact_key("embed-failures", summary.source),
        description=(
            f"{said} in feature set {summary.feature_set}{shown}; "
            f"`transfer-pipe show {summary.feature_set}` lists them all"
        ),
    )


@flow(name="embed", log_prints=True, flow_run_name=run_name("backbone", "image_size"))
@run_parameters(EmbedConfig)
def embed_flow(**values: Any) -> EmbedSummary:
    """Embed every image of a source once into the feature store; the final state's message
    says what was embedded, reused, and how many images failed."""
    config = run_config(EmbedConfig, values)  # a bad value fails here, as in the CLI
    # The run's context: a retried prepare task finds the claim the first try took, and
    # the manifest a caller's check kept (the CLI's) is taken (``run_context``).
    with tagged(), open_context():
        plan = prepare(config)  # takes the feature set's claim when there is work
        try:
            # quote(): Prefect would otherwise walk every shard task of the plan (70,000
            # uris for Fashion-MNIST) to track dependencies, costing seconds per task.
            results = compute(quote(plan)) if plan.tasks else _nothing_to_compute(plan)  # type: ignore[call-overload]
            summary: EmbedSummary = finalize(quote(plan), quote(results))  # type: ignore[call-overload]
        finally:
            steps.release_claim(plan)  # at once, whatever happened: another run may wait
        _report(summary, config)
    # A caller gets the state's data, the summary; the UI shows the message.
    return Completed(message=embed_message(summary), data=summary)  # type: ignore[return-value]


def run_embed(config: EmbedConfig) -> EmbedSummary:
    """Run the embed flow on a config (its flat parameters are the config's fields).

    The summary comes from the run's final state, not the call's return value: Prefect
    links a subflow's returned object (and its fields) to that flow run, and a task given
    one would then list a flow run as its input, which the default UI's Task Runs tab
    cannot show ("Invalid TaskInputResponse"). Pass plain values taken from the state."""
    state = cast(State[EmbedSummary], embed_flow(**run_values(config), return_state=True))
    summary: EmbedSummary = state.result()  # raises the run's error when it failed
    return summary
