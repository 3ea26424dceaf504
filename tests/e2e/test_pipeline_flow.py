"""The pipeline flow a schedule runs: embed (only new images), the heads the store lacks,
and a final message that says what happened; nothing recomputed on unchanged data; the
pipeline run's own artifact shows the night at a glance (issue 21, part 9)."""

from __future__ import annotations

import time
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.pipeline import pipeline_flow
from tests.support.images import make_dataset
from transfer_pipe.config import EmbedConfig, PipelineConfig, run_values
from transfer_pipe.heads.card import list_cards

pytestmark = pytest.mark.usefixtures("prefect_api")


def _config(data: Path, store: Path) -> PipelineConfig:
    embed = EmbedConfig(
        source=str(data), store=str(store), backbone="tiny_test", shard_size=8, workers=1
    )
    return PipelineConfig(embed=embed, store=str(store), heads=("logreg", "ridge"))


def test_a_scheduled_rerun_does_nothing_and_new_images_only_are_embedded(
    tmp_path: Path,
) -> None:
    data, store = tmp_path / "images", tmp_path / "store"
    written = make_dataset(data, classes=2, per_class=8)  # 16 good images, bad files too
    config = _config(data, store)

    first = pipeline_flow(**run_values(config), return_state=True)
    summary = first.result()
    failed = summary.embed.failed
    assert failed == len(written) - 16 > 0
    assert (summary.embed.embedded, summary.train.heads_fitted) == (16, 2)
    assert f"{failed} images failed" in first.message

    # Mutation: fitting heads whatever the store holds (refit) makes heads_fitted 2 here;
    # the message then no longer says "heads up to date".
    again = pipeline_flow(**run_values(config), return_state=True)
    unchanged = again.result()
    assert again.is_completed()
    assert again.message.startswith("no new images: 0 embedded, ")
    assert "heads up to date" in again.message
    assert unchanged.embed.feature_set == summary.embed.feature_set
    assert (unchanged.embed.embedded, unchanged.train.heads_fitted) == (0, 0)
    assert unchanged.train.heads_reused == 2

    make_dataset(data, classes=2, per_class=2, bad=False, start=8)  # 4 new images
    grown = pipeline_flow(**run_values(config), return_state=True).result()
    assert grown.embed.feature_set != summary.embed.feature_set
    assert (grown.embed.embedded, grown.embed.reused, grown.embed.failed) == (4, 16, failed)
    assert grown.train.heads_fitted == 2
    assert {c.feature_set for c in list_cards(str(store))} == {
        summary.embed.feature_set,
        grown.embed.feature_set,
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"source": "/no/such/folder"}, "does not exist"),
        ({"source": "SRC", "backbone": "no-such-net"}, "no-such-net"),
        ({"source": "SRC", "heads": ("logreg", "forest")}, "forest"),
    ],
)
def test_bad_input_fails_in_seconds_with_the_cli_message_and_writes_nothing(
    tmp_path: Path, values: dict, message: str
) -> None:
    data, store = tmp_path / "images", tmp_path / "store"
    make_dataset(data, classes=2, per_class=2, bad=False)
    values = {**values, "source": values["source"].replace("SRC", str(data))}
    started = time.monotonic()
    state = pipeline_flow(store=str(store), workers=1, **values, return_state=True)
    assert state.is_failed()
    assert message in state.message
    assert time.monotonic() - started < 60  # seconds, not a run: nothing was embedded
    # Mutation: dropping the check-inputs task embeds the source before the unknown head
    # fails the heads run, leaving a feature set in the store.
    assert not store.exists() or not any(store.rglob("*.json"))


def _night_of(flow_run_id: UUID) -> str:
    """The markdown of the night artifact on the pipeline run itself (not a subflow)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    nights = [a for a in found if a.key and a.key.startswith("night-")]
    assert len(nights) == 1, [a.key for a in found]
    return str(nights[0].data)


def test_every_night_the_pipeline_run_itself_shows_the_night_at_a_glance(
    tmp_path: Path,
) -> None:
    # Mutation seen failing: _night called only when there was work to do (the unchanged
    # night's run then had "no artifacts", as a user saw it).
    data, store = tmp_path / "images", tmp_path / "store"
    make_dataset(data, classes=2, per_class=8)  # and its bad files
    config = _config(data, store)
    first = pipeline_flow(**run_values(config), return_state=True)
    night = _night_of(first.state_details.flow_run_id)
    key = first.result().embed.feature_set
    assert f"**version {key}** (the lineage's first version)" in night
    assert "class0/empty.png" in night and "empty:" in night  # the failed files, why
    assert "| logreg |" in night or "logreg" in night  # the heads' metrics
    assert "## History of lineage" in night and "## Retention" in night

    again = pipeline_flow(**run_values(config), return_state=True)
    night = _night_of(again.state_details.flow_run_id)
    assert "up to date" in night and key in night

    make_dataset(data, classes=2, per_class=2, bad=False, start=8)  # 4 new images
    grown = pipeline_flow(**run_values(config), return_state=True)
    night = _night_of(grown.state_details.flow_run_id)
    new = grown.result().embed.feature_set
    assert f"**version {new}** (parent {key})" in night and "4 added" in night
    runs = [first, again, grown]
    with get_client(sync_client=True) as client:
        names = [client.read_flow_run(r.state_details.flow_run_id).name for r in runs]
        tags = client.read_flow_run(first.state_details.flow_run_id).tags
    assert len(set(names)) == 3  # two runs of one dataset are told apart by name
    assert {"transfer-pipe", "pipeline", "dataset:images"} <= set(tags)
