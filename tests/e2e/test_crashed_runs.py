"""A run whose process dies is marked Crashed in the UI, and a live one is not: two CLI runs
against the session's ``transfer-pipe serve`` (in the user's shell, so with serve's
heartbeat), each lasting minutes through the ``slow_test`` backbone on a few images; one is
SIGKILLed, as a lost machine or the OOM killer would kill it, the other lives on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.images import make_dataset
from tests.support.prefect_api import api
from tests.support.serve import SERVE_HEARTBEAT_S, Served, user_env, wait_for_run
from transfer_pipe.app.serve import CRASH_AUTOMATION, MISSED_HEARTBEATS
from transfer_pipe.backbones.builtin import SLOW_TEST_FORWARD_S

pytestmark = [pytest.mark.serve, pytest.mark.kill]

IMAGES = 240  # one forward pass each (batch size 1): a run of 240 x SLOW_TEST_FORWARD_S


def test_a_run_whose_process_dies_is_marked_crashed_and_a_live_one_is_not(
    served: Served, tmp_path: Path
) -> None:
    named = {"automations": {"name": {"any_": [CRASH_AUTOMATION]}}}
    # Mutation seen failing: serve without ensure_crash_automation has none (and the killed
    # run below would stay Running forever).
    (automation,) = api("POST", f"{served.api_url}/automations/filter", named)
    window = MISSED_HEARTBEATS * SERVE_HEARTBEAT_S
    assert automation["trigger"]["within"] == window
    assert 2 * window < IMAGES * SLOW_TEST_FORWARD_S  # both runs outlive the test's waits

    images = tmp_path / "images"
    make_dataset(images, classes=2, per_class=IMAGES // 2, bad=False)
    runs = [_start_embed(served, images, tmp_path / name) for name in ("one", "two")]
    try:
        # The run whose first heartbeat came first stays alive; the other is killed after
        # its first heartbeat (the automation watches a run from its first one on). The
        # live run's window then ends first: were it not sending heartbeats at serve's
        # cadence, it would be marked Crashed no later than the killed one.
        started = sorted(
            (_first_heartbeat(served, store, process), store, process) for store, process in runs
        )
        (_, _, live), (_, _, killed) = started
        live_run, killed_run = (_run_id(served, store) for _, store, _ in started)
        _kill_tree(killed)
        dead = wait_for_run(served, killed_run, timeout_s=window + 120)
        assert dead["state_type"] == "CRASHED", dead["state"]
        assert "no heartbeat" in dead["state"]["message"]
        # Mutation seen failing: a run that does not adopt serve's heartbeat (180 s, not 30)
        # is marked Crashed while alive, at the latest with the killed one. The automation
        # acts within seconds of a window's end: 15 s more covers a loaded machine.
        for _ in range(15):
            assert live.poll() is None, "the live run ended early"
            alive = api("GET", f"{served.api_url}/flow_runs/{live_run}")
            assert alive["state_type"] == "RUNNING", alive["state"]
            time.sleep(1)
    finally:
        for _, process in runs:
            _kill_tree(process)


def _start_embed(served: Served, images: Path, store: Path) -> tuple[Path, subprocess.Popen[bytes]]:
    """``transfer-pipe embed`` in the user's shell (no heartbeat setting: it takes serve's)."""
    store.parent.mkdir(parents=True, exist_ok=True)
    args = ["embed", str(images), "--store", str(store), "--backbone", "slow_test"]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "transfer_pipe.app.cli",
            *args,
            "--batch-size",
            "1",
            "--workers",
            "1",
        ],
        env=user_env(served.home),
        cwd=served.home,
        stdout=(store.parent / f"{store.name}.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    return store, process


def _run_id(served: Served, store: Path) -> str:
    body = {"flows": {"name": {"any_": ["embed"]}}}
    runs: list[dict[str, Any]] = api("POST", f"{served.api_url}/flow_runs/filter", body)
    (run,) = [r for r in runs if str(store) in json.dumps(r["parameters"])]
    return str(run["id"])


def _first_heartbeat(served: Served, store: Path, process: subprocess.Popen[bytes]) -> str:
    """When the embed run writing to ``store`` sent its first heartbeat (ISO time); waits
    for it (the server records events within seconds)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (store.parent / f"{store.name}.log").read_text(errors="replace")
            pytest.fail(f"the embed run ended (exit code {process.returncode}):\n{log[-2000:]}")
        try:
            run_id = _run_id(served, store)
        except ValueError:  # not created yet
            time.sleep(1)
            continue
        body = {
            "filter": {
                "event": {"name": ["prefect.flow-run.heartbeat"]},
                "resource": {"id": [f"prefect.flow-run.{run_id}"]},
            },
            "limit": 50,
        }
        events = api("POST", f"{served.api_url}/events/filter", body)["events"]
        if events:
            return str(min(e["occurred"] for e in events))
        time.sleep(1)
    pytest.fail(f"the embed run writing to {store} sent no heartbeat in 300 s")


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process and whatever it started: no final state is sent."""
    if process.poll() is not None:
        return
    children = psutil.Process(process.pid).children(recursive=True)
    process.kill()
    process.wait()
    for child in children:
        if child.is_running():
            child.kill()
