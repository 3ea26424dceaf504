"""What a user sees of a run in the Prefect UI, read back through the API: the failures
table, a warning and a final message for bad images, names and tags that say what a run
works on, artifact keys per dataset, the library's own log lines, head reports with their
plots, and task inputs the Task Runs tab can show."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import Artifact, FlowRun, Log, TaskRun
from prefect.logging.handlers import APILogHandler

from flows.embed import embed_flow
from flows.train import train_flow
from tests.support.icc import DISPLAY_P3, rgb_profile
from tests.support.images import make_dataset
from transfer_pipe.config import EmbedConfig, TrainConfig, run_values

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(autouse=True)
def _library_info_logs() -> Iterator[None]:
    """The session runs with PREFECT_LOGGING_LEVEL=WARNING; a user's default is INFO."""
    logger = logging.getLogger("transfer_pipe")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)


def embed_config(data: Path, store: Path) -> EmbedConfig:
    return EmbedConfig(
        source=str(data), store=str(store), backbone="tiny_test", shard_size=8, workers=1
    )


def artifacts_of(flow_run_id: UUID) -> list[Artifact]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def logs_of(flow_run_id: UUID) -> list[Log]:
    APILogHandler().flush()  # the handler sends in batches
    with get_client(sync_client=True) as client:
        return client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )


def flow_run(flow_run_id: UUID) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def table(artifact: Artifact) -> list[dict[str, Any]]:
    data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert isinstance(data, list)
    return data


def test_a_photo_used_with_a_caveat_is_in_the_failures_tables_notes(tmp_path: Path) -> None:
    data = tmp_path / "phone-photos"
    make_dataset(data, classes=2, per_class=2, bad=False)
    tagged = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 100, 50)).save(
        tagged,
        "JPEG",
        icc_profile=rgb_profile(DISPLAY_P3)[:200],  # a profile cut short
    )
    (data / "class0" / "profile-cut-short.jpg").write_bytes(tagged.getvalue())
    state = embed_flow(**run_values(embed_config(data, tmp_path / "store")), return_state=True)
    run_id = state.state_details.flow_run_id
    assert run_id is not None and state.is_completed()
    # No image failed, yet the table is there: its notes column names the photo and why.
    # Mutation seen to fail here: the table made only when some image failed (as before).
    [failures] = [a for a in artifacts_of(run_id) if (a.key or "").startswith("embed-failures-")]
    [row] = table(failures)
    assert row["sample_id"] == "class0/profile-cut-short.jpg" and row["reason"] == ""
    assert row["note"].startswith("icc-unusable:")
    assert "1 image used with a note (1 icc-unusable)" in (failures.description or "")


def test_bad_images_are_a_table_a_warning_and_the_final_message(tmp_path: Path) -> None:
    data = tmp_path / "holiday-photos"
    make_dataset(data, classes=2, per_class=3)  # 6 good images and 4 bad files
    state = embed_flow(**run_values(embed_config(data, tmp_path / "store")), return_state=True)
    run_id = state.state_details.flow_run_id
    assert run_id is not None

    # The failures table: one row per bad file, with its reason.
    # Mutation: dropping the failures table from flows/embed.py's _report makes this fail.
    [failures] = [a for a in artifacts_of(run_id) if (a.key or "").startswith("embed-failures-")]
    rows = {row["sample_id"]: row for row in table(failures)}
    assert set(rows) == {
        "class0/empty.png",
        "class0/notes.png",
        "class1/truncated.jpg",
        "class1/bomb.png",
    }
    assert rows["class0/notes.png"]["reason"].startswith("not-an-image")
    assert rows["class1/truncated.jpg"]["reason"].startswith("truncated")
    assert rows["class0/empty.png"]["uri"].endswith("empty.png")
    assert "4 images failed" in (failures.description or "")

    # A warning in the run's logs, naming the count and the reasons.
    # Mutation: logger.info instead of logger.warning in finalize_embedding makes this fail.
    warnings = [log for log in logs_of(run_id) if log.level == logging.WARNING]
    assert any("4 images failed" in w.message and "not-an-image" in w.message for w in warnings)

    # The final state says how many failed; the run still completes.
    # Mutation: returning the summary instead of Completed(message=...) makes this fail.
    assert state.is_completed()
    assert "4 images failed" in (flow_run(run_id).state.message or "")  # type: ignore[union-attr]

    # The name and tags say which dataset and backbone.
    # Mutation: dropping flow_run_name from @flow (a random name) makes this fail.
    run = flow_run(run_id)
    assert "holiday-photos" in run.name and "tiny_test" in run.name
    assert {"dataset:holiday-photos", "backbone:tiny_test"} <= set(run.tags)


def train_run(data: Path, store: Path) -> UUID:
    config = TrainConfig(embed=embed_config(data, store), store=str(store), heads=("logreg",))
    state = train_flow(**run_values(config), return_state=True)
    assert state.is_completed()
    assert state.state_details.flow_run_id is not None
    return state.state_details.flow_run_id


def task_runs_of(flow_run_ids: list[UUID]) -> list[TaskRun]:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids))
        )


def subflows_of(flow_run_id: UUID) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )


def test_heads_runs_per_dataset_with_library_logs_plots_and_plain_task_inputs(
    tmp_path: Path,
) -> None:
    make_dataset(tmp_path / "shoes", classes=2, per_class=8, bad=False)
    make_dataset(tmp_path / "shirts", classes=2, per_class=8, bad=False)
    store = tmp_path / "store"
    shoes, shirts = train_run(tmp_path / "shoes", store), train_run(tmp_path / "shirts", store)

    # One artifact history per dataset: the two runs' keys differ, and name the dataset.
    # Mutation: a fixed key="heads-metrics" in flows/train.py makes this fail.
    def metrics_key(run_id: UUID) -> str:
        [artifact] = [a for a in artifacts_of(run_id) if a.type == "table"]
        assert artifact.key is not None
        return artifact.key

    assert metrics_key(shoes).startswith("heads-metrics-shoes-")
    assert metrics_key(shirts).startswith("heads-metrics-shirts-")

    # The library's own decisions appear in the run's logs (the C the probe chose).
    # Mutation: capture_library_logs() removed from the flow modules (and no
    # PREFECT_LOGGING_EXTRA_LOGGERS) makes this fail.
    messages = [log.message for log in logs_of(shoes)]
    assert any(m.startswith("logreg: chose C=") for m in messages), messages

    # The head report shows its plots inline and says where the head is saved.
    # Mutation: flows/train.py passing markdown_report(result) (no images) makes this fail.
    [report] = [a for a in artifacts_of(shoes) if a.type == "markdown"]
    text = str(report.data)
    assert text.count("](data:image/png;base64,") == 2
    assert str(store / "heads") in text and "card.json" in text and "model." in text
    assert "shoes" in str(report.key)

    # Every task input is one the default UI's Task Runs tab can show: no flow run
    # (a subflow's result) passed to a task.
    # Mutation: embed_flow returning the bare summary and run_embed returning the call's
    # value (which Prefect links to the embed subflow) gives prepare-task flow_run inputs
    # and makes this fail; either of the two alone keeps the link broken.
    runs = [shoes, *(sub.id for sub in subflows_of(shoes))]
    task_runs = task_runs_of(runs)
    assert any(t.name.startswith("fit-logreg-") for t in task_runs)
    inputs = {
        (t.name, key, i.input_type)
        for t in task_runs
        for key, values in t.task_inputs.items()
        for i in values
    }
    assert not [entry for entry in inputs if entry[2] == "flow_run"], inputs
