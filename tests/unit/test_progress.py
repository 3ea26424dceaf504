"""The progress throttle: a run of many shards reports a bounded number of times."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from transfer_pipe.progress import WholePercent


def reports(total: int, before: int, done: int) -> list[float]:
    """What a run that writes ``done`` shards one by one sends, its final report included."""
    sent: list[float] = []
    progress = WholePercent(total, before, sent.append)
    for written in range(1, done + 1):
        progress(written, done - written)
    progress.finish(done)
    return sent


@pytest.mark.parametrize("total", [220, 122_000])
def test_many_shards_send_at_most_one_report_per_whole_percent(total: int) -> None:
    sent = reports(total, before=0, done=total)
    # Mutation seen failing: sending at every shard sends total + 1 reports.
    assert len(sent) <= 101
    assert sent == sorted(sent) and sent[-1] == 100.0
    assert sent[0] == pytest.approx(1.0, abs=100 / total)  # the first whole percent


def test_a_resumed_run_starts_from_the_shards_written_before() -> None:
    sent = reports(200, before=150, done=50)
    # 150 of 200 written before: 75 % is where it starts, 76 % its first report.
    # Mutation seen failing: ignoring ``before`` reports 1 % after this run's second shard.
    assert sent[0] == 76.0 and sent[-1] == 100.0
    assert len(sent) <= 26


def test_few_shards_report_each_one_and_the_end_once_more() -> None:
    assert reports(4, before=0, done=4) == [25.0, 50.0, 75.0, 100.0, 100.0]


def test_a_run_that_writes_nothing_reports_its_share_once() -> None:
    # Every shard was written before: the final report says 100 %, never more.
    assert reports(10, before=10, done=0) == [100.0]
    assert reports(0, before=0, done=0) == [0.0]


def test_the_embed_flow_updates_its_progress_artifact_through_the_throttle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The compute task of flows/embed.py, its engine and Dask left out: 220 shards
    written one by one update the artifact at most once per whole percent, ending at 100.
    Mutation seen failing: compute() passing an unthrottled callback (``lambda done,
    pending: update_progress_artifact(...)``) sends 220 updates."""
    import flows.embed

    updates: list[float] = []
    monkeypatch.setattr(flows.embed, "create_progress_artifact", lambda *a, **k: "artifact")
    monkeypatch.setattr(flows.embed, "update_progress_artifact", lambda _, p: updates.append(p))

    def compute_shards(plan: Any, on_progress: Any) -> list[int]:
        for done in range(1, 221):
            for callback in on_progress:
                callback(done, 220 - done)
        return list(range(220))

    monkeypatch.setattr(flows.embed.steps, "compute_shards", compute_shards)
    plan = SimpleNamespace(spec=SimpleNamespace(n_shards=220, key="k"), shards_already_done=0)
    assert len(flows.embed.compute.fn(plan)) == 220
    assert len(updates) <= 101 and updates == sorted(updates) and updates[-1] == 100.0
