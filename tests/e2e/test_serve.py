"""`transfer-pipe serve` as a user runs it: a real subprocess with its own home and port,
its Prefect server, work pools, deployments and worker (the session's stack, ``served``),
read back through Prefect's REST API; then a stack of its own on a real PostgreSQL, where
Debian's `postgresql` is installed, stopped with SIGTERM."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.images import make_dataset
from tests.support.prefect_api import api
from tests.support.serve import (
    SERVE_HEARTBEAT_S,
    Served,
    cli,
    flow_runs,
    free_port,
    start_serve,
    stop_serve,
    user_env,
    wait_for_run,
)

pytestmark = pytest.mark.serve

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    make_dataset(root, classes=2, per_class=3, bad=False)
    return root


def test_serve_is_healthy_with_its_pools_and_deployments(served: Served) -> None:
    assert api("GET", f"{served.api_url}/health") is True
    record = json.loads((served.home / "server.json").read_text())
    assert (record["api_url"], record["port"]) == (served.api_url, served.port)
    assert record["heartbeat_s"] == SERVE_HEARTBEAT_S  # what CLI runs against serve send
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


# A CLI run in a fresh Python, as a user runs it against serve; then the heavy modules that
# its own process imported.
_NIGHT = """
import json, sys
from transfer_pipe.app.cli import main
code = main({argv!r})
print(json.dumps({{"code": code, "torch": "torch" in sys.modules}}))
"""


def _embedder_cache(address: str) -> tuple[int, int]:
    """(hits, misses) of the model cache of the one worker at ``address``."""
    from distributed import Client

    def cache_info() -> tuple[int, int]:
        from transfer_pipe.features import embedder

        info = embedder._cached_embedder.cache_info()
        return info.hits, info.misses

    with Client(address) as client:
        (answer,) = client.run(cache_info).values()
    return answer


def test_runs_against_serve_use_its_dask_worker_which_keeps_the_model_between_nights(
    served: Served, tmp_path: Path
) -> None:
    record = json.loads((served.home / "server.json").read_text())
    address = record["dask_address"]
    assert address and address.startswith("tcp://127.0.0.1:")
    folder, store = tmp_path / "images", tmp_path / "store"
    make_dataset(folder, classes=2, per_class=3, bad=False)
    # The default backbone: its weights are a file, whose digest needs no torch.
    args = ["embed", str(folder), "--store", str(store), "--image-size", "32", "--json"]
    assert cli(served.home, *args).returncode == 0  # night 0: the lineage and its model
    before = _embedder_cache(address)
    make_dataset(folder, classes=2, per_class=1, bad=False, start=3)  # night 1: 2 new images
    done = subprocess.run(
        [sys.executable, "-c", _NIGHT.format(argv=args)],
        env=user_env(served.home),
        cwd=served.home,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    *printed, report = done.stdout.strip().splitlines()
    summary = json.loads(printed[-1])
    assert json.loads(report) == {"code": 0, "torch": False}
    assert (summary["rows"], summary["embedded"], summary["reused"]) == (8, 2, 6)
    # The night's images went through the model serve's worker already held: no new model
    # was built. Mutations seen to fail here: the EmbedderConfig imported from the torch
    # module in the embed step (the night's own process imports torch); serve's worker
    # not in the record (the night starts a cluster of its own in its process).
    hits, misses = _embedder_cache(address)
    assert misses == before[1] and hits > before[0]
    ls = cli(served.home, "ls", "--store", str(store), "--json")
    assert [f["rows"] for f in json.loads(ls.stdout)] == [6, 8]


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


def test_a_second_serve_on_the_same_home_says_where_the_first_runs(served: Served) -> None:
    args = ("serve", "--store", str(served.store), "--port", str(free_port()))
    second = cli(served.home, *args, timeout=180)  # a refusal takes seconds
    # Mutation: dropping the serve.lock check starts a second stack (and a second worker).
    assert second.returncode == 2
    assert "already running" in second.stderr
    assert f"127.0.0.1:{served.port}" in second.stderr


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


def test_serve_on_postgresql_keeps_its_runs_there_and_sigterm_stops_it_all(
    postgres: str, tmp_path: Path, images: Path
) -> None:
    """A stack of its own (its database is another), stopped as a user stops it."""
    served = start_serve(tmp_path, "--database-url", postgres)
    try:
        store = tmp_path / "store"
        args = ("embed", str(images), "--store", str(store), "--backbone", "tiny_test")
        done = cli(served.home, *args, "--workers", "1")
        assert done.returncode == 0, done.stderr
        tree = psutil.Process(served.process.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "server start" in names and "worker start" in names
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(120) == 0
        # Mutation: signalling only the server in stop_all leaves the worker running.
        _, alive = psutil.wait_procs(tree, timeout=10)
        assert alive == []
        assert not (served.home / "server.json").exists()
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
