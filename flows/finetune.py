"""The fine-tuning flow: continue backprop into the backbone (or, with ``init=random``,
train its architecture from scratch) for a task and compare it with the linear probe in
the Prefect UI; optionally publish the new weights as a new feature set (refused for a
model below the probe on validation unless ``force``).

No logic lives here: each task is a plain function from ``transfer_pipe.steps.finetune``.
Given a source instead of a feature-set key, it runs the embed flow first (a no-op when the
feature set is cached); the probe comes from the heads flow's store (fitted if missing).
"""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
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
from transfer_pipe.config import FinetuneConfig, run_values
from transfer_pipe.finetune.card import FinetuneResult
from transfer_pipe.heads.card import HeadCard
from transfer_pipe.report import finetune_report
from transfer_pipe.steps import finetune as steps
from transfer_pipe.steps.checks import check_inputs
from transfer_pipe.steps.results import FinetuneSummary
from transfer_pipe.steps.target import embed_first, run_config

capture_library_logs()


def _plan_name(verb: str) -> Any:
    def name(parameters: dict[str, Any]) -> str:
        plan = parameters["plan"]
        plan = plan.unquote() if isinstance(plan, quote) else plan
        return f"{verb}-{plan.run_id}"

    return name


check = task(name="check-inputs", cache_policy=NO_CACHE)(check_inputs)
prepare = task(name="prepare-finetune", cache_policy=NO_CACHE, **RETRY)(steps.prepare_finetune)
probe = task(
    name="linear-probe", cache_policy=NO_CACHE, task_run_name=_plan_name("probe"), **RETRY
)(steps.ensure_probe)
finalize = task(name="summarize", cache_policy=NO_CACHE)(steps.finalize_finetune)
# Exports the weights and registers the backbone id: library work, so a task of its own.
register = task(name="publish-backbone", cache_policy=NO_CACHE)(steps.publish_config)


@task(
    name="fine-tune",
    cache_policy=NO_CACHE,
    task_run_name=_plan_name("fine-tune"),
    **RETRY,
)
def train(plan: steps.FinetunePlan, probe_card: HeadCard) -> FinetuneResult:
    """Train (resuming from the last checkpoint), evaluate and save; progress per epoch."""
    artifact: UUID = create_progress_artifact(  # type: ignore[assignment]
        0.0, description=f"epochs of fine-tuning run {plan.run_id}"
    )

    def report(row: dict[str, Any]) -> None:
        update_progress_artifact(artifact, 100.0 * row["epoch"] / plan.config.epochs)
        print(
            f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
            f"val accuracy {row['val_accuracy']:.4f} ({row['train_images_per_s']:.0f} images/s)"
        )

    result = steps.run_finetune(plan, probe_card, on_epoch=report)
    update_progress_artifact(artifact, 100.0)
    create_markdown_artifact(
        finetune_report(result),
        key=artifact_key("finetune-report", plan.feature_set_spec.source, plan.config.task),
        description=f"{plan.run_id} on feature set {plan.feature_set}",
    )
    return result


@flow(name="finetune", log_prints=True, flow_run_name=run_name("backbone", "task", "policy"))
@run_parameters(FinetuneConfig)
def finetune_flow(**values: Any) -> FinetuneSummary:
    """Fine-tune the backbone for one task and compare it with the linear probe (embedding
    the source first when given one: a no-op when the store holds it)."""
    config = run_config(FinetuneConfig, values)  # a bad value fails here, as in the CLI
    with tagged():
        check(config, embed_inputs=False)  # heads, task, feature set: before any embedding
        feature_set, embedded = embed_first(config, run_embed)
        plan = prepare(config, feature_set)
        # quote(): the plan holds the probe's feature arrays; Prefect need not walk them.
        probe_card = probe(quote(plan))  # type: ignore[call-overload]
        result = train(quote(plan), probe_card)  # type: ignore[call-overload]
        summary: FinetuneSummary = finalize(quote(plan), result, embedded)  # type: ignore[call-overload]
        print(summary.message)  # says plainly when the probe is the better model
        create_table_artifact(
            summary.table,
            key=artifact_key("finetune-vs-probe", plan.feature_set_spec.source, summary.task),
            description=f"test metrics, task {summary.task}, feature set {summary.feature_set}",
        )
        if config.publish:  # refused below the probe without --force, before any write
            published = run_embed(register(quote(plan)))  # type: ignore[call-overload]
            summary = summary.published(published.feature_set)
    return summary


def run_finetune(config: FinetuneConfig) -> FinetuneSummary:
    """Run the fine-tuning flow on a config (its flat parameters: ``config.run_values``);
    the summary comes from the final state (see ``flows.embed.run_embed`` for why)."""
    state = cast(State[FinetuneSummary], finetune_flow(**run_values(config), return_state=True))
    summary: FinetuneSummary = state.result()
    return summary
