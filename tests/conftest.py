"""Shared fixtures: one Prefect test server for the whole session, each run its own home."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

# The helpers in tests/support assert as test modules do: with pytest's detailed messages.
pytest.register_assert_rewrite("tests.support")

from tests.support.dask_processes import DaskProcesses, worker_homes  # noqa: E402
from tests.support.s3 import S3Server, start_s3_server  # noqa: E402
from tests.support.serve import SESSION_SERVE_ENV, Served, start_serve, stop_serve  # noqa: E402

# Set before Prefect is imported anywhere: Prefect reads its settings at import time. Each
# pytest-xdist worker has homes of its own (a worker inherits the controller's variables).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("PREFECT_HOME", "TRANSFER_PIPE_HOME"):
        os.environ.pop(variable, None)
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="transfer-pipe-prefect-"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# OpenMP threads that find no work sleep instead of spinning: the tests run processes side
# by side (xdist workers, CLI runs, servers) on few cores, and spinning threads take the
# cores the others wait for. (Speed only: results do not depend on it.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Published backbones are recorded here, not in the user's home.
os.environ.setdefault("TRANSFER_PIPE_HOME", tempfile.mkdtemp(prefix="transfer-pipe-home-"))


# Markers by the resource a test needs (registered in pyproject.toml; `make check` runs
# the tests that need none of them). A test that takes one of these fixtures, directly or
# through another, is marked here; the rest are marked in their modules.
_MARK_OF_FIXTURE = {
    "served": "serve",
    "s3_server": "s3",
    "postgres": "postgres",
    "shared_cluster": "cluster",
}


# Under pytest-xdist (`make test`), the tests of one shared stack run in one worker, so
# that the stack starts once (`--dist loadgroup`).
_GROUP_OF_FIXTURE = {"served": "serve", "shared_cluster": "cluster"}


def pytest_itemcollected(item: pytest.Item) -> None:
    """Marks each test as it is collected: before any collection hook (-m, xdist's groups)
    reads the marks."""
    names = item.fixturenames  # type: ignore[attr-defined]
    for fixture, marker in _MARK_OF_FIXTURE.items():
        if fixture in names:
            item.add_marker(marker)
    for fixture, group in _GROUP_OF_FIXTURE.items():
        if fixture in names:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def _torch_threads_at_start() -> int:
    """Torch's threads in this process: under pytest-xdist, the worker's share of the
    cores. Each worker's torch taking every core made OpenMP threads of two processes spin
    against each other (the torch-heads tests ran 12x slower beside another worker)."""
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
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
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One ``transfer-pipe serve`` stack (server, work pools, deployments, worker, crash
    automation) for the session's serve, deployment, crash and browser tests: it takes
    40-100 s to start on two cores. Each test keeps its own work area and store, and finds
    its own runs by their parameters."""
    served = start_serve(tmp_path_factory.mktemp("serve"), env=SESSION_SERVE_ENV)
    yield served
    stop_serve(served)


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskProcesses]:
    """One real Dask cluster for the session's cluster tests that kill nothing: a `dask
    scheduler` process, a plain worker and one advertising a GPU (``--resources GPU=1``),
    one thread each, each with a HOME of its own. Fault tests start clusters of their own."""
    from transfer_pipe.cluster import GPU

    processes = DaskProcesses(tmp_path_factory.mktemp("shared-cluster"))
    try:
        processes.start_scheduler()
        processes.start_worker(env=worker_homes(processes.folder, "worker-a"))
        homes = worker_homes(processes.folder, "worker-gpu")
        processes.start_worker("--resources", f"{GPU}=1", env=homes)
        processes.wait_for_workers(2)
        yield processes
    finally:
        processes.stop()


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
