"""Shared fixtures: one Prefect test server for the whole session, each run its own home."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3 import S3Server, start_s3_server

# Set before Prefect is imported anywhere: Prefect reads its settings at import time.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="transfer-pipe-prefect-"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Published backbones are recorded here, not in the user's home.
os.environ.setdefault("TRANSFER_PIPE_HOME", tempfile.mkdtemp(prefix="transfer-pipe-home-"))


_E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every end-to-end test is ``slow`` (a Prefect server, subprocesses, real models), so
    that ``pytest -m "not slow"`` is a fast inner loop; plain ``pytest`` runs them all."""
    for item in items:
        if _E2E in item.path.parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def _torch_threads_at_start() -> int:
    import torch

    return torch.get_num_threads()


@pytest.fixture(autouse=True)
def _torch_threads_restored(_torch_threads_at_start: int) -> Iterator[None]:
    """Put torch's global thread count back after every test: tests pin it (the
    fine-tuning loop's bit-identical runs) and so does library code they call (an
    embedder takes its task's share), and no test may run with another's setting.
    (Checked: without it, a test after test_loop.py's trainers runs on 1 thread.)"""
    yield
    import torch

    if torch.get_num_threads() != _torch_threads_at_start:
        torch.set_num_threads(_torch_threads_at_start)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect server (the test harness); yields its API URL for subprocesses."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """An S3-compatible server (moto) on loopback for the whole session; tests take a
    fresh bucket each (``s3_bucket``) and may switch its fault injection on."""
    server, stop = start_s3_server()
    yield server
    stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh bucket's name, with the standard AWS variables (``AWS_ENDPOINT_URL``
    included) pointing this process and its subprocesses at the loopback server; faults
    are switched off again afterwards."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    yield s3_server.new_bucket()
    s3_server.faults.every = 0
