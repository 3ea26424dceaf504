"""`transfer-pipe serve` as a user runs it: a real subprocess with its own home and port,
its Prefect server, work pools, deployments and worker, read back through Prefect's REST API;
then the same stack on a real PostgreSQL where Debian's `postgresql` is installed."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.images import make_dataset
from transfer_pipe.serve import CRASH_AUTOMATION, HEARTBEAT_ENV, MISSED_HEARTBEATS
from transfer_pipe.serve import rest as api

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
READY = "transfer-pipe serve is ready"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


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


def cli(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "transfer_pipe.cli", *args],
        env=user_env(home),
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
    command = [sys.executable, "-m", "transfer_pipe.cli", "serve", "--store", str(store)]
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
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run: dict[str, Any] = api("GET", f"{served.api_url}/flow_runs/{run_id}")
        if run["state_type"] in TERMINAL:
            return run
        time.sleep(2)
    pytest.fail(f"flow run {run_id} did not finish in {timeout_s} s")


HEARTBEAT_S = 30  # Prefect's minimum: the crash automation's window is then 90 s


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    heartbeat = {HEARTBEAT_ENV: str(HEARTBEAT_S)}
    served = start_serve(tmp_path_factory.mktemp("serve"), env=heartbeat)
    yield served
    stop_serve(served)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    make_dataset(root, classes=2, per_class=3, bad=False)
    return root


def test_serve_is_healthy_with_its_pools_and_deployments(served: Served) -> None:
    assert api("GET", f"{served.api_url}/health") is True
    record = json.loads((served.home / "server.json").read_text())
    assert (record["api_url"], record["port"]) == (served.api_url, served.port)
    assert record["heartbeat_s"] == HEARTBEAT_S  # what the CLI's runs against serve send
    # Mutation: a concurrency limit of None for gpu in serve.WORK_POOLS fails the limit.
    cpu = api("GET", f"{served.api_url}/work_pools/cpu")
    gpu = api("GET", f"{served.api_url}/work_pools/gpu")
    assert (cpu["type"], gpu["type"], gpu["concurrency_limit"]) == ("process", "process", 1)
    # A worker polls the cpu pool.
    workers = api("POST", f"{served.api_url}/work_pools/cpu/workers/filter", {})
    assert [w["status"] for w in workers] == ["ONLINE"]
    deployments = api("POST", f"{served.api_url}/deployments/filter", {})
    expected = {"embed": "cpu", "train-heads": "cpu", "finetune": "gpu", "sweep": "cpu"}
    if (ROOT / "flows" / "pipeline.py").exists():
        expected["nightly"] = "cpu"
    # Mutation: deploying only the first name of serve.deployable() fails this.
    assert {d["name"]: d["work_pool_name"] for d in deployments} == expected
    # The UI page is served on the same port, and calls the API on that port.
    with urllib.request.urlopen(served.api_url.removesuffix("/api"), timeout=30) as page:
        assert page.status == 200
    settings = api("GET", f"{served.api_url.removesuffix('/api')}/ui-settings")
    # Mutation: PREFECT_UI_API_URL at :4200 in serve's environment (the bug) fails.
    assert settings["api_url"] == served.api_url


def test_cli_commands_use_the_running_server(served: Served, images: Path) -> None:
    store = served.home / "cli-store"
    args = ("embed", str(images), "--store", str(store), "--backbone", "tiny_test")
    done = cli(served.home, *args, "--workers", "1", "--json")
    assert done.returncode == 0, done.stderr
    # Mutation: dropping the use_running_server() call in the CLI starts Prefect's
    # temporary server: this message appears and the run is not in serve's history.
    assert "Starting temporary server" not in done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    runs = flow_runs(served, "embed")
    mine = [r for r in runs if str(store) in json.dumps(r["parameters"])]
    assert [r["state_type"] for r in mine] == ["COMPLETED"]
    assert summary["embedded"] == 6


def test_a_deployment_run_is_executed_by_the_worker(served: Served, images: Path) -> None:
    deployment = api(
        "POST",
        f"{served.api_url}/deployments/filter",
        {"deployments": {"name": {"any_": ["embed"]}}},
    )[0]
    store = served.home / "deployment-store"
    parameters = {"source": str(images), "store": str(store), "backbone": "tiny_test"}
    run = api(
        "POST",
        f"{served.api_url}/deployments/{deployment['id']}/create_flow_run",
        {"parameters": parameters},
    )
    # Mutation: a wrong pull-step directory in deploy/prefect.yaml (or no worker) leaves
    # the run Crashed or never started.
    finished = wait_for_run(served, run["id"])
    assert finished["state_type"] == "COMPLETED", finished["state"]
    listed = cli(served.home, "ls", "--store", str(store), "--json")
    assert [(f["rows"], f["status"]) for f in json.loads(listed.stdout)] == [(6, "complete")]


def test_a_run_whose_process_dies_is_marked_crashed_and_a_live_one_is_not(
    served: Served, tmp_path: Path
) -> None:
    named = {"automations": {"name": {"any_": [CRASH_AUTOMATION]}}}
    (automation,) = api("POST", f"{served.api_url}/automations/filter", named)
    window = MISSED_HEARTBEATS * HEARTBEAT_S
    assert automation["trigger"]["within"] == window
    # A CLI run in the user's shell (no heartbeat setting: it takes serve's), long enough
    # to outlive the window: 70,000 images at 112 px take minutes on two cores.
    store = tmp_path / "store"
    command = [sys.executable, "-m", "transfer_pipe.cli", "embed", "fashion-mnist"]
    log = (tmp_path / "cli.log").open("w")
    process = subprocess.Popen(
        [*command, "--store", str(store), "--image-size", "112"],
        env=user_env(served.home),
        cwd=served.home,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        run = _running_run_of(served, str(store), process)
        # Mutation: a run that does not adopt serve's heartbeat (Prefect's 180 s) is
        # marked Crashed while alive, inside this wait.
        time.sleep(window + 20)
        assert process.poll() is None, (tmp_path / "cli.log").read_text()[-2000:]
        alive = api("GET", f"{served.api_url}/flow_runs/{run['id']}")
        assert alive["state_type"] == "RUNNING", alive["state"]
        process.kill()  # as a lost machine or the OOM killer would: no final state sent
        process.wait()
        # Mutation: serve without ensure_crash_automation leaves the run Running forever.
        dead = wait_for_run(served, run["id"], timeout_s=window + 120)
        assert dead["state_type"] == "CRASHED", dead["state"]
        assert "no heartbeat" in dead["state"]["message"]
    finally:
        process.kill()
        log.close()


def _running_run_of(served: Served, store: str, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The embed flow run writing to ``store``, once it is Running."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        for run in flow_runs(served, "embed"):
            if store in json.dumps(run["parameters"]) and run["state_type"] == "RUNNING":
                return run
        time.sleep(1)
    pytest.fail(f"no Running embed run for {store} (exit code {process.poll()})")


def test_a_second_serve_on_the_same_home_says_where_the_first_runs(served: Served) -> None:
    args = ("serve", "--store", str(served.store), "--port", str(free_port()))
    second = cli(served.home, *args, timeout=180)  # a refusal takes seconds
    # Mutation: dropping the serve.lock check starts a second stack (and a second worker).
    assert second.returncode == 2
    assert "already running" in second.stderr
    assert f"127.0.0.1:{served.port}" in second.stderr


def test_sigterm_stops_every_process_serve_started(served: Served) -> None:
    tree = psutil.Process(served.process.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in tree)
    assert "server start" in names and "worker start" in names
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(120) == 0
    # Mutation: signalling only the server in _stop_all leaves the worker running.
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert alive == []
    assert not (served.home / "server.json").exists()


# --- PostgreSQL --------------------------------------------------------------------------

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: CI runs as root, so run it as `postgres`."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture
def postgres() -> Iterator[str]:
    """A real PostgreSQL in a temporary folder on a free port; yields its asyncpg URL."""
    if not PG_BIN:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    bin_dir, port = Path(PG_BIN[-1]), free_port()
    # Not under pytest's tmp_path: its parents are root-only, and postgres must reach it.
    data = Path(tempfile.mkdtemp(prefix="transfer-pipe-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(data / "log")]
    subprocess.run(_as_postgres([*ctl, "-o", options, "-w", "start"]), check=True)
    try:
        subprocess.run(
            [
                str(bin_dir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "prefect",
            ],
            check=True,
        )
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run(_as_postgres([*ctl, "-m", "fast", "stop"]), check=False)
        shutil.rmtree(data, ignore_errors=True)


def test_serve_on_postgresql_keeps_its_runs_there(
    postgres: str, tmp_path: Path, images: Path
) -> None:
    served = start_serve(tmp_path, "--database-url", postgres)
    try:
        store = tmp_path / "store"
        args = ("embed", str(images), "--store", str(store), "--backbone", "tiny_test")
        done = cli(served.home, *args, "--workers", "1")
        assert done.returncode == 0, done.stderr
    finally:
        stop_serve(served)
    # Read the database itself, with the server gone: the run is in PostgreSQL (Mutation:
    # not passing --database-url on to PREFECT_API_DATABASE_CONNECTION_URL keeps SQLite).
    port = postgres.rsplit(":", 1)[1].split("/")[0]
    # (The nightly deployment's scheduled runs are there too: only the embed run is ours.)
    query = (
        "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id "
        "WHERE f.name = 'embed'"
    )
    psql = [str(Path(PG_BIN[-1]) / "psql"), "-h", "127.0.0.1", "-p", port, "-U", "postgres"]
    rows = subprocess.run(
        [*psql, "-d", "prefect", "-At", "-c", query],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert rows == ["embed|COMPLETED"]
    assert not (served.home / "prefect" / "prefect.db").exists()
