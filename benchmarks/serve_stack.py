"""A ``transfer-pipe serve`` stack for benchmark scripts: started as a user starts it (a
subprocess with its own home and a free loopback port), driven through Prefect's REST API,
stopped with SIGTERM. (The tests have their own, pytest-aware copy in tests/support/serve.py.)
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' serve helpers
from tests.support.prefect_api import api, final_run
from tests.support.serve import READY, cli, free_port, user_env


def exit_on_sigterm() -> None:
    """SIGTERM ends the script through ``sys.exit``, so that its ``finally`` blocks stop the
    stack it started (Python's default would die at once and leave serve running)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Stack:
    """A running ``transfer-pipe serve``."""

    process: subprocess.Popen[bytes]
    home: Path
    port: int
    log: Path

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(
        self, *args: str, timeout: float = 3600, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``transfer-pipe ARGS`` in this stack's home: it runs against the stack's server
        (and its Dask cluster, unless ``env`` says otherwise)."""
        return cli(self.home, *args, timeout=timeout, env=env)

    def run_deployment(self, name: str, parameters: dict[str, Any]) -> str:
        """Create a run of deployment ``flow/deployment`` (Scheduled for now, as the
        scheduler does); its id. The worker picks it up."""
        deployment = api("GET", f"{self.api_url}/deployments/name/{name}")
        body = {"parameters": parameters}
        run = api("POST", f"{self.api_url}/deployments/{deployment['id']}/create_flow_run", body)
        return str(run["id"])

    def wait_for_run(self, run_id: str, timeout_s: float = 7200) -> dict[str, Any]:
        """The flow run once it reached a final state."""
        run = final_run(self.api_url, run_id, timeout_s)
        if run is None:
            raise TimeoutError(f"flow run {run_id} did not finish in {timeout_s} s")
        return run

    def timings(self, run_id: str) -> dict[str, float]:
        """Seconds of a finished run, from its state history: ``picked_up_s`` from the
        worker taking it (Pending) to its end, ``running_s`` from Running (the flow's
        ``start_time``) to its end, ``queued_s`` from creation to pick-up."""
        run = api("GET", f"{self.api_url}/flow_runs/{run_id}")
        states = api("GET", f"{self.api_url}/flow_run_states/?flow_run_id={run_id}")
        pending = min(parse_time(s["timestamp"]) for s in states if s["type"] == "PENDING")
        end, start = parse_time(run["end_time"]), parse_time(run["start_time"])
        return {
            "picked_up_s": round((end - pending).total_seconds(), 2),
            "running_s": round((end - start).total_seconds(), 2),
            "queued_s": round((pending - parse_time(run["created"])).total_seconds(), 2),
        }


@contextmanager
def serve_stack(base: Path, store: Path, timeout_s: float = 900) -> Iterator[Stack]:
    """``transfer-pipe serve --store STORE`` with its home under ``base``, on a free port;
    yields once it printed that it is ready, and stops it (SIGTERM) afterwards."""
    home, port, log = base / "home", free_port(), base / "serve.log"
    home.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "transfer_pipe.app.cli", "serve", "--store", str(store)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            env=user_env(home),
            cwd=base,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    stack = Stack(process, home, port, log)
    try:
        deadline = time.monotonic() + timeout_s
        while READY not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not become ready:\n{log.read_text()}")
            time.sleep(1)
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
