"""The pipeline flow a schedule runs over a source that grows: the embed flow (only the
images the store lacks), the heads flow on the feature set it made (only the heads the store
lacks), and optionally the fine-tuning flow, as subflows. Its final state's message says
what it did, e.g. "no new images: 0 embedded, 10000 reused, heads up to date".

No logic lives here: ``transfer_pipe.steps.pipeline`` says what a run did.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from flows.embed import run_embed
from flows.parameters import run_parameters
from flows.runs import artifact_key, capture_library_logs, run_name, tagged
from flows.train import publish_metrics, run_train
from transfer_pipe.config import PipelineConfig, run_values
from transfer_pipe.steps.checks import check_inputs
from transfer_pipe.steps.night import night_markdown
from transfer_pipe.steps.pipeline import retain, up_to_date
from transfer_pipe.steps.results import PipelineSummary
from transfer_pipe.steps.target import run_config
from transfer_pipe.store import open_store

capture_library_logs()

# Seconds, before any embedding: a bad value from the run form fails the run at once.
check = task(name="check-inputs", cache_policy=NO_CACHE)(check_inputs)
# A night with nothing new: said from the store in one task, without the subflows' runs.
current = task(name="up-to-date", cache_policy=NO_CACHE)(up_to_date)
# The night's clean-up: old versions of the source's lineage and the rows only they hold.
retention = task(name="retention", cache_policy=NO_CACHE)(retain)


@flow(name="pipeline", log_prints=True, flow_run_name=run_name("backbone", "image_size", "task"))
@run_parameters(PipelineConfig)
def pipeline_flow(**values: Any) -> State[PipelineSummary]:
    """Embed a source, fit the heads for its task, optionally fine-tune: each step a no-op
    where the store is already current."""
    config = run_config(PipelineConfig, values)  # a bad value fails here, as in the CLI
    assert config.embed is not None  # PipelineConfig's validation requires a source
    with tagged():
        check(config, embed_inputs=False)  # heads, task, feature set: before any embedding
        unchanged = current(config)
        if unchanged is not None:
            publish_metrics(
                unchanged.train, unchanged.embed.source, f"nothing changed ({unchanged.message})"
            )
            _night(config, unchanged)
            print(unchanged.message)
            return Completed(message=unchanged.message, data=unchanged)
        embedded = run_embed(config.embed)
        trained = run_train(config.train_config(embedded.feature_set))
        tuned = None
        if config.finetune:
            # Imported here: seconds of imports a scheduled run without fine-tuning never pays.
            from flows.finetune import run_finetune

            tuned = run_finetune(config.finetune_config(embedded.feature_set))
        retained = retention(config, embedded.feature_set)
    summary = PipelineSummary.of(embedded, trained, tuned, retained)
    _night(config, summary)
    print(summary.message)
    return Completed(message=summary.message, data=summary)


def _night(config: PipelineConfig, summary: PipelineSummary) -> None:
    """The pipeline run's own artifact: the night at a glance (``steps.night``)."""
    store = open_store(config.store, config.storage_options)
    create_markdown_artifact(
        markdown=night_markdown(store, summary),
        key=artifact_key("night", summary.embed.source),
        description=f"the night of {summary.embed.source}: {summary.message}",
    )


def run_pipeline(config: PipelineConfig) -> PipelineSummary:
    """Run the pipeline flow on a config (its flat parameters: ``config.run_values``)."""
    return pipeline_flow(**run_values(config))  # type: ignore[return-value]  # the state's data
