"""The deployments of ``deploy/prefect.yaml`` as a user runs them: one ``transfer-pipe serve``
stack (server, work pools, deployments, process worker): the session's (``served``); runs
triggered through the REST API or made by Prefect's scheduler, executed by the worker, and
read back through the API (states, subflows, artifacts)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.images import make_dataset
from tests.support.prefect_api import api
from tests.support.serve import Served, wait_for_run

GOOD = 16  # images per dataset below: 2 classes x 8 (enough for train/val/test splits)
BAD = {"class0/empty.png", "class0/notes.png", "class1/truncated.jpg", "class1/bomb.png"}


@pytest.fixture(scope="module")
def nightly(served: Served) -> dict[str, Any]:
    deployment: dict[str, Any] = api("GET", f"{served.api_url}/deployments/name/pipeline/nightly")
    return deployment


def parameters(source: Path, store: Path) -> dict[str, Any]:
    """The pipeline's run form filled in for a small test folder and the tiny backbone."""
    return {
        "source": str(source),
        "store": str(store),
        "backbone": "tiny_test",
        "workers": 1,
        "heads": ["logreg", "ridge"],
        "shard_size": 8,
    }


def trigger(served: Served, deployment: dict[str, Any], values: dict[str, Any]) -> str:
    """A run of the deployment as the UI's Run button makes it; returns its id."""
    url = f"{served.api_url}/deployments/{deployment['id']}/create_flow_run"
    run: dict[str, Any] = api("POST", url, {"parameters": values})
    return str(run["id"])


def subflows(served: Served, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's subflow runs by flow name."""
    body = {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}}
    runs = api("POST", f"{served.api_url}/flow_runs/filter", body)
    return {api("GET", f"{served.api_url}/flows/{r['flow_id']}")["name"]: r for r in runs}


def artifacts(served: Served, run_ids: list[str]) -> list[dict[str, Any]]:
    body = {"artifacts": {"flow_run_id": {"any_": run_ids}}}
    found: list[dict[str, Any]] = api("POST", f"{served.api_url}/artifacts/filter", body)
    return found


def keyed(found: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    [artifact] = [a for a in found if (a["key"] or "").startswith(prefix)]
    return artifact


def table(artifact: dict[str, Any]) -> list[dict[str, Any]]:
    data = artifact["data"]
    rows: list[dict[str, Any]] = json.loads(data) if isinstance(data, str) else data
    return rows


def seconds(run: dict[str, Any]) -> float:
    start, end = (datetime.fromisoformat(run[k]) for k in ("start_time", "end_time"))
    return (end - start).total_seconds()


def test_a_triggered_pipeline_run_completes_with_its_subflows_and_artifacts(
    served: Served, nightly: dict[str, Any], tmp_path: Path
) -> None:
    data, store = tmp_path / "photos", tmp_path / "store"
    make_dataset(data, classes=2, per_class=8, bad=True)  # 16 good images, 4 bad files
    run_id = trigger(served, nightly, parameters(data, store))
    run = wait_for_run(served, run_id, timeout_s=900)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["state"]["message"].startswith(f"{GOOD} images embedded, 0 reused; 2 heads")
    assert "4 images failed" in run["state"]["message"]

    # Mutation: calling the steps directly instead of run_embed/run_train in
    # flows/pipeline.py leaves no subflow runs.
    children = subflows(served, run_id)
    assert {name: r["state_type"] for name, r in children.items()} == {
        "embed": "COMPLETED",
        "train-heads": "COMPLETED",
    }

    found = artifacts(served, [run_id, *(r["id"] for r in children.values())])
    assert any(a["type"] == "progress" and a["data"] == 100.0 for a in found)
    summary = keyed(found, "embed-summary-photos-")
    assert summary["type"] == "table"
    # The failures table names every bad file of the folder, one row each.
    # Mutation: dropping the failures table from flows/embed.py's _report makes this fail.
    failures = table(keyed(found, "embed-failures-photos-"))
    assert sorted(row["sample_id"] for row in failures) == sorted(BAD)
    heads = table(keyed(found, "heads-metrics-photos-"))
    assert sorted(row["head"] for row in heads) == ["logreg", "ridge"]


def runs_of(served: Served, deployment: dict[str, Any], store: Path) -> list[dict[str, Any]]:
    """The deployment's runs on ``store`` (other tests and the nightly cron have others)."""
    body = {"deployments": {"id": {"any_": [deployment["id"]]}}}
    runs = api("POST", f"{served.api_url}/flow_runs/filter", body)
    return [r for r in runs if r["parameters"].get("store") == str(store)]


def scheduled_run(
    served: Served, deployment: dict[str, Any], values: dict[str, Any]
) -> dict[str, Any]:
    """Give the deployment an interval schedule (with these parameters) whose first run is
    due in seconds, wait for the scheduler to create that run and the worker to start it,
    then remove the schedule (and the runs it planned); returns the finished run."""
    before = {r["id"] for r in runs_of(served, deployment, Path(values["store"]))}
    # Due after one scheduler loop (5 s): were the scheduler later than that, the run
    # would come at the next interval, a minute on, inside the wait below.
    anchor = datetime.now(UTC) + timedelta(seconds=8)
    schedule = {"interval": 60, "anchor_date": anchor.isoformat(), "timezone": "UTC"}
    url = f"{served.api_url}/deployments/{deployment['id']}/schedules"
    body = [{"schedule": schedule, "active": True, "max_scheduled_runs": 1, "parameters": values}]
    [created] = api("POST", url, body)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            new = [
                r
                for r in runs_of(served, deployment, Path(values["store"]))
                if r["id"] not in before and r["state_type"] != "SCHEDULED"
            ]
            if new:
                break
            time.sleep(2)
        else:
            pytest.fail("the scheduler made no run that the worker started in 300 s")
    finally:
        api("DELETE", f"{url}/{created['id']}")
    [run] = new
    assert run["auto_scheduled"] is True  # made by the scheduler, not by a trigger
    return wait_for_run(served, run["id"], timeout_s=900)


def test_scheduled_runs_embed_only_what_is_new(
    served: Served, nightly: dict[str, Any], tmp_path: Path
) -> None:
    data, store = tmp_path / "growing", tmp_path / "store"
    make_dataset(data, classes=2, per_class=8, bad=True)
    values = parameters(data, store)

    first = scheduled_run(served, nightly, values)
    assert first["state_type"] == "COMPLETED", first["state"]
    assert first["state"]["message"].startswith(f"{GOOD} images embedded, 0 reused; 2 heads")

    # Mutation: `refit: true` in the nightly deployment's parameters (deploy/prefect.yaml)
    # makes this run fit 2 heads again: the message no longer says "heads up to date".
    unchanged = scheduled_run(served, nightly, values)
    assert unchanged["state_type"] == "COMPLETED", unchanged["state"]
    message = unchanged["state"]["message"]
    assert message.startswith(f"no new images: 0 embedded, {GOOD} reused, heads up to date")

    make_dataset(data, classes=2, per_class=2, bad=False, start=8)  # 4 new images
    grown = scheduled_run(served, nightly, values)
    assert grown["state_type"] == "COMPLETED", grown["state"]
    assert grown["state"]["message"].startswith(f"4 images embedded, {GOOD} reused; 2 heads")
    embed = subflows(served, grown["id"])["embed"]
    summary = table(keyed(artifacts(served, [embed["id"]]), "embed-summary-growing-"))
    assert summary  # the embed subflow's own summary table, shown in the UI

    # The schedules made for the test are gone; the nightly cron is what is left.
    left = api("GET", f"{served.api_url}/deployments/{nightly['id']}/schedules")
    assert [s["schedule"].get("cron") for s in left] == ["0 2 * * *"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backbone": "no-such-net"}, "no-such-net"),
        ({"source": "/no/such/folder"}, "does not exist"),
    ],
)
def test_bad_input_fails_the_deployment_run_in_seconds_writing_nothing(
    served: Served,
    nightly: dict[str, Any],
    tmp_path: Path,
    overrides: dict[str, Any],
    message: str,
) -> None:
    data, store = tmp_path / "photos", tmp_path / "store"
    make_dataset(data, classes=2, per_class=2, bad=False)
    values = {**parameters(data, store), **overrides}
    run = wait_for_run(served, trigger(served, nightly, values))
    assert run["state_type"] == "FAILED", run["state"]
    # Mutation: state.result(raise_on_failure=False) in flows/embed.py's run_embed swallows
    # the embed run's error: the pipeline then fails on an AttributeError naming neither.
    assert message in run["state"]["message"]
    assert seconds(run) < 60  # a check, not a run: nothing was embedded
    assert not store.exists() or not any(store.rglob("*.json"))
