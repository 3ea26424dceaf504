"""Where a ``transfer-pipe serve`` runs: ``<home>/server.json`` (home: ``$TRANSFER_PIPE_HOME``,
default ``~/.transfer-pipe``), written by the serve that holds the home's lock and read by
every other command (``use_running_server``) before Prefect is imported."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.records import Record, known_fields

HOME_ENV = "TRANSFER_PIPE_HOME"  # the same home as published backbones (backbones.published)
RECORD_NAME = "server.json"
DASK_ENV = "DASK_SCHEDULER_ADDRESS"  # where every run of this serve sends its Dask tasks
# Seconds between a flow run's heartbeats (Prefect's setting): a serve's crash automation
# expects them this often (``prefect_setup``), so its runs are started with it.
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


def home() -> Path:
    """The transfer-pipe home: ``$TRANSFER_PIPE_HOME``, default ``~/.transfer-pipe``."""
    return Path(os.environ.get(HOME_ENV) or "~/.transfer-pipe").expanduser()


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    # A plain GET, not Prefect's client: every command asks this before Prefect is imported.
    # Imported here: only a home with a server record gets this far (``running_record``).
    import urllib.request

    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


@dataclass(frozen=True)
class ServerRecord(Record):
    """Where a ``transfer-pipe serve`` runs: ``<home>/server.json``."""

    url: str  # the UI
    api_url: str
    port: int
    pid: int  # serve's own process
    heartbeat_s: int | None = None  # what its crash automation expects (older records: none)
    dask_address: str | None = None  # its Dask scheduler (None: runs start their own)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerRecord:
        """A record read back; fields it does not know (a newer serve's) are dropped."""
        return cls(**known_fields(cls, data, RECORD_NAME))


def read_record(at: Path | None = None) -> ServerRecord | None:
    """What ``<home>/server.json`` says, or None without one (or with one that is not a
    server record)."""
    path = (at or home()) / RECORD_NAME
    try:
        return ServerRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError, TransferPipeError):
        return None  # unreadable, not JSON, or not a JSON object of a server record


def running_record(at: Path | None = None) -> ServerRecord | None:
    """The record of the ``serve`` under the home when its process is alive and its
    server answers ``/api/health``; else None (no record, or a stale one)."""
    record = read_record(at)
    if not record or not _alive(record.pid):
        return None
    return record if healthy(record.api_url) else None


def use_running_server() -> str | None:
    """Point Prefect at the running ``transfer-pipe serve`` (``PREFECT_API_URL``) unless a
    server is chosen already; returns the URL used, or None when Prefect will start its
    temporary server. The run then sends heartbeats as often as that serve's crash
    automation expects them (a slower cadence would get a live run marked Crashed), and
    runs its Dask tasks on that serve's cluster unless ``$DASK_SCHEDULER_ADDRESS`` names
    another. Call before Prefect is imported: it reads settings from the env."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    record = running_record()
    if record is None:
        return None
    os.environ["PREFECT_API_URL"] = api_url = record.api_url
    if record.heartbeat_s:
        os.environ[HEARTBEAT_ENV] = str(record.heartbeat_s)
    if record.dask_address:
        os.environ.setdefault(DASK_ENV, record.dask_address)
    return api_url


@contextlib.contextmanager
def exclusive(at: Path) -> Iterator[None]:
    """Hold ``<home>/serve.lock`` for the serve's lifetime: one serve per home."""
    with open(at / "serve.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            record = read_record(at)
            raise TransferPipeError(
                f"a transfer-pipe server is already running for {at}: "
                f"{record.url if record else '(starting)'} (pid {record.pid if record else '?'}). "
                "Stop it with Ctrl-C in its terminal, or use another TRANSFER_PIPE_HOME."
            ) from None
        yield


def write_record(
    at: Path, port: int, api_url: str, heartbeat_s: int, dask_address: str | None
) -> None:
    from transfer_pipe.files import write_text_atomic

    record = ServerRecord(
        url=api_url.removesuffix("/api"),
        api_url=api_url,
        port=port,
        pid=os.getpid(),
        heartbeat_s=heartbeat_s,
        dask_address=dask_address,
    )
    write_text_atomic(at / RECORD_NAME, record.to_json())


def remove_record(at: Path) -> None:
    record = read_record(at)
    if record and record.pid == os.getpid():
        (at / RECORD_NAME).unlink(missing_ok=True)
