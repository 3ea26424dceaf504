"""`transfer-pipe serve` started as a user starts it (a real subprocess with its own home
and port), stopped with SIGTERM, and its flow runs read back through Prefect's REST API."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.prefect_api import api, final_run
from transfer_pipe.app.serve import HEARTBEAT_ENV

READY = "transfer-pipe serve is ready"
SERVE_HEARTBEAT_S = 30  # Prefect's shortest: the crash automation's window is then 90 s
# The session's stack: its flow runs heartbeat at SERVE_HEARTBEAT_S, and its scheduler and
# worker poll every few seconds instead of Prefect's 60 s and 10 s, so that a scheduled run
# appears and starts within a test's patience.
SESSION_SERVE_ENV = {
    HEARTBEAT_ENV: str(SERVE_HEARTBEAT_S),
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
    "PREFECT_WORKER_QUERY_SECONDS": "3",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def user_env(home: Path) -> dict[str, str]:
    """A user's shell: their own transfer-pipe home, no Prefect server chosen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.pop("PREFECT_HOME", None)  # the session's (conftest's): serve chooses its own
    env.pop("PREFECT_LOGGING_LEVEL", None)  # INFO: "Starting temporary server" is shown
    return {**env, "TRANSFER_PIPE_HOME": str(home)}


def cli(
    home: Path, *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``transfer-pipe ARGS`` as a user in ``home`` runs it (a home where serve runs: against
    that server; any other: Prefect's temporary server), with ``env`` added."""
    return subprocess.run(
        [sys.executable, "-m", "transfer_pipe.app.cli", *args],
        env={**user_env(home), **(env or {})},
        cwd=home,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Served:
    process: subprocess.Popen[str]
    home: Path
    store: Path
    port: int
    output: Path

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


def start_serve(base: Path, *extra: str, env: dict[str, str] | None = None) -> Served:
    """``transfer-pipe serve`` in the background; returns once it printed that it's ready."""
    home, store, port, output = base / "home", base / "store", free_port(), base / "serve.out"
    home.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "transfer_pipe.app.cli", "serve", "--store", str(store)]
    process = subprocess.Popen(
        [*command, "--port", str(port), *extra],
        env={**user_env(home), **(env or {})},
        cwd=base,
        stdout=output.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    served = Served(process, home, store, port, output)
    deadline = time.monotonic() + 600
    while READY not in output.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_serve(served)
            pytest.fail(f"serve did not become ready:\n{output.read_text()}")
        time.sleep(1)
    return served


def stop_serve(served: Served) -> None:
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
        try:
            served.process.wait(120)
        except subprocess.TimeoutExpired:
            served.process.kill()


def flow_runs(served: Served, flow_name: str) -> list[dict[str, Any]]:
    body = {"flows": {"name": {"any_": [flow_name]}}}
    runs: list[dict[str, Any]] = api("POST", f"{served.api_url}/flow_runs/filter", body)
    return runs


def wait_for_run(served: Served, run_id: str, timeout_s: float = 600) -> dict[str, Any]:
    run = final_run(served.api_url, run_id, timeout_s, poll_s=2)
    if run is None:
        pytest.fail(f"flow run {run_id} did not finish in {timeout_s} s")
    return run
