"""Retries and clear failures: a transient store error in a shard is retried and the run
completes; a permanent one ends the run Failed with a message naming the shard, and the
next run resumes from the shards written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

import flows.embed
from flows.embed import embed_flow, run_embed
from tests.support.images import make_dataset
from transfer_pipe.config import EmbedConfig, run_values
from transfer_pipe.store.zarr_store import ZarrFeatureStore

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(autouse=True)
def _no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """The delay between tries is the product's (seconds); the tests need none."""
    monkeypatch.setattr(flows.embed.compute, "retry_delay_seconds", [0, 0])


def config_for(data: Path, store: Path) -> EmbedConfig:
    # 12 images, shards of 4: shards 0, 1, 2, run one after another on one worker thread.
    return EmbedConfig(
        source=str(data), store=str(store), backbone="tiny_test", shard_size=4, workers=1
    )


def failing_write(
    monkeypatch: pytest.MonkeyPatch, shard: int, error: Callable[[], Exception], times: int
) -> list[int]:
    """Make the store's write of ``shard`` raise ``error()`` its first ``times`` times;
    returns the list of shards whose write failed."""
    original = ZarrFeatureStore.write_shard
    failed: list[int] = []

    def write_shard(
        self: ZarrFeatureStore, key: str, index: int, *args: Any, **kwargs: Any
    ) -> None:
        if index == shard and len(failed) < times:
            failed.append(index)
            raise error()
        original(self, key, index, *args, **kwargs)

    monkeypatch.setattr(ZarrFeatureStore, "write_shard", write_shard)
    return failed


def test_a_transient_store_error_is_retried_and_the_run_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dataset(tmp_path / "data", classes=3, per_class=4, bad=False)
    failed = failing_write(monkeypatch, 1, lambda: OSError("store briefly unreachable"), 1)
    state = embed_flow(
        **run_values(config_for(tmp_path / "data", tmp_path / "s")), return_state=True
    )
    # Mutation: retries=0 on the compute-shards task (or a retry condition that refuses
    # OSError) ends this run Failed.
    assert state.is_completed(), state.message
    assert failed == [1]
    summary = state.result()
    assert (summary.status, summary.embedded, summary.shards_computed) == ("complete", 12, 3)
    with get_client(sync_client=True) as client:
        [task_run] = [
            t
            for t in client.read_task_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
                )
            )
            if t.name.startswith("shards-")
        ]
    assert task_run.run_count == 2  # tried twice, named after its feature set


def test_a_permanent_failure_names_the_shard_and_the_next_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dataset(tmp_path / "data", classes=3, per_class=4, bad=False)
    config = config_for(tmp_path / "data", tmp_path / "s")
    # Not an I/O error: retrying cannot help, so it is not retried.
    failed = failing_write(monkeypatch, 2, lambda: RuntimeError("device lost"), 99)
    state = embed_flow(**run_values(config), return_state=True)
    assert state.is_failed()
    # Mutation: compute_shards re-raising the worker's error as it is (no StepFailed
    # naming the shard) makes this fail.
    assert "shard 2 of 3" in (state.message or ""), state.message
    assert "device lost" in (state.message or "")
    # Mutation: a retry condition that retries every error makes this [2, 2, 2].
    assert failed == [2]

    monkeypatch.undo()  # the device is back
    resumed = run_embed(config)
    assert resumed.status == "complete"
    # The shards written before the failure are kept, not embedded again.
    assert resumed.shards_already_done + resumed.shards_computed == 3
    assert resumed.shards_already_done >= 1 and resumed.embedded == 4 * resumed.shards_computed
