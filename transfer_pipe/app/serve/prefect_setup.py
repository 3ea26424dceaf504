"""What serve sets up on its Prefect server, through Prefect's own client and CLI: the work
pools, the automation that marks runs Crashed when their heartbeats stop, and the
deployments of ``deploy/prefect.yaml``.

Prefect is imported where it is used: ``use_running_server`` must set PREFECT_API_URL
before Prefect's import reads its settings, and ``ls`` must not pay seconds for it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from transfer_pipe.app.serve.record import HEARTBEAT_ENV
from transfer_pipe.errors import TransferPipeError

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

PREFECT_FILE = Path("deploy") / "prefect.yaml"
WORK_POOLS = {"cpu": None, "gpu": 1}
GPU_POOL_NOTE = (
    "no worker: the finetune deployment shows Not Ready and its runs wait until one "
    "starts; on a machine with a GPU run `transfer-pipe serve --gpu-worker`, or "
    "`prefect worker start --pool gpu` against this server"
)
"""The work pools serve creates and their concurrency limits (one run per GPU)."""

# A run whose process dies with its machine (SIGKILL, out of memory, an evicted pod) never
# reports a final state: it would show Running in the UI forever. Every flow run sends a
# heartbeat event every HEARTBEAT_ENV seconds; this automation marks a run Crashed once
# MISSED_HEARTBEATS of them in a row are missing (Prefect's "zombie flows" recipe).
CRASH_AUTOMATION = "transfer-pipe: crash runs that stopped sending heartbeats"
DEFAULT_HEARTBEAT_S = 180  # Prefect's own default
MISSED_HEARTBEATS = 3
_FINAL_EVENTS = ("Completed", "Failed", "Cancelled", "Crashed")


def heartbeat_seconds() -> int:
    """Seconds between a flow run's heartbeats: ``$PREFECT_FLOWS_HEARTBEAT_FREQUENCY``,
    else Prefect's default; at least 30, Prefect's minimum."""
    value = os.environ.get(HEARTBEAT_ENV) or str(DEFAULT_HEARTBEAT_S)
    try:
        return max(30, int(value))
    except ValueError:
        raise TransferPipeError(
            f"{HEARTBEAT_ENV}={value!r} is not a whole number of seconds (30 or more)"
        ) from None


def ensure_crash_automation(api_url: str | None = None, heartbeat_s: int | None = None) -> str:
    """Create, or bring up to date, the automation that marks a flow run Crashed once
    ``MISSED_HEARTBEATS`` heartbeats in a row are missing; returns its id. Idempotent:
    one automation of that name per server, whatever the number of serve starts. By
    default the server of ``$PREFECT_API_URL`` and the heartbeat of the environment."""
    api_url = api_url or os.environ.get("PREFECT_API_URL")
    if not api_url:
        raise TransferPipeError(
            "set PREFECT_API_URL to the server to create the automation on "
            "(`transfer-pipe serve` creates it on its own server)"
        )
    heartbeat_s = heartbeat_s or heartbeat_seconds()
    body = {
        "name": CRASH_AUTOMATION,
        "description": (
            f"A flow run that sent no heartbeat and no final state for "
            f"{MISSED_HEARTBEATS} x {heartbeat_s} s lost its process: mark it Crashed."
        ),
        "enabled": True,
        "trigger": {
            "type": "event",
            "posture": "Proactive",
            "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
            "after": ["prefect.flow-run.heartbeat"],
            "expect": [
                "prefect.flow-run.heartbeat",
                *(f"prefect.flow-run.{state}" for state in _FINAL_EVENTS),
            ],
            "for_each": ["prefect.resource.id"],
            "threshold": 1,
            "within": MISSED_HEARTBEATS * heartbeat_s,
        },
        "actions": [
            {
                "type": "change-flow-run-state",
                "state": "CRASHED",
                "message": (
                    f"no heartbeat for {MISSED_HEARTBEATS * heartbeat_s} s: the run's "
                    "process is gone (killed, out of memory, or its machine lost)"
                ),
            }
        ],
    }
    from prefect.events.schemas.automations import AutomationCore

    with _client(api_url) as client:
        automation = AutomationCore.model_validate(body)
        existing = client.read_automations_by_name(CRASH_AUTOMATION)
        if not existing:
            return str(client.create_automation(automation))
        for extra in existing[1:]:  # created twice by a race of two serves: keep one
            client.delete_automation(extra.id)
        client.update_automation(existing[0].id, automation)
        return str(existing[0].id)


def _client(api_url: str) -> SyncPrefectClient:
    """Prefect's client for the server at ``api_url``; it retries what the server answers
    while SQLite is busy (503), which happens on a small machine while a worker runs flows."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api_url)


def ensure_work_pools(api_url: str) -> None:
    """Create the missing process pools with the process worker's job template, then set
    every pool's concurrency limit (an existing pool keeps its other settings)."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    with _client(api_url) as client:
        for name, limit in WORK_POOLS.items():
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                pool = WorkPoolCreate(name=name, type="process", base_job_template=template)
                with contextlib.suppress(ObjectAlreadyExists):  # another serve won the race
                    client.create_work_pool(pool)
            client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=limit))


def deployable(root: Path) -> list[str]:
    """The names of the deployments in ``deploy/prefect.yaml`` whose entrypoint file exists
    in ``root`` (a flow still being written is left out, not a failed deploy)."""
    import yaml

    config = yaml.safe_load((root / PREFECT_FILE).read_text())
    return [
        entry["name"]
        for entry in config.get("deployments") or []
        if (root / entry["entrypoint"].split(":")[0]).is_file()
    ]


def deploy(env: dict[str, str], root: Path) -> list[str]:
    names = deployable(root)
    selected = [arg for name in names for arg in ("--name", name)]
    _run_prefect(["deploy", "--prefect-file", str(PREFECT_FILE), *selected], env, root)
    return names


def prefect_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def _run_prefect(args: Sequence[str], env: dict[str, str], root: Path) -> None:
    """Run a short ``prefect`` command; its output becomes the error when it fails."""
    done = subprocess.run(
        prefect_command(*args), env=env, cwd=root, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise TransferPipeError(
            f"`prefect {' '.join(args)}` failed:\n{(done.stdout + done.stderr).strip()[-3000:]}"
        )
