"""``transfer-pipe serve`` in the foreground: a Dask cluster, the Prefect server, its
set-up, workers and deployments, started in that order and stopped together."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from transfer_pipe.app.serve.prefect_setup import (
    GPU_POOL_NOTE,
    PREFECT_FILE,
    deploy,
    ensure_crash_automation,
    ensure_work_pools,
    heartbeat_seconds,
    prefect_command,
)
from transfer_pipe.app.serve.processes import Child, StopSignal, log_tail, spawn, stop_all
from transfer_pipe.app.serve.record import (
    DASK_ENV,
    HEARTBEAT_ENV,
    HOME_ENV,
    exclusive,
    healthy,
    home,
    remove_record,
    write_record,
)
from transfer_pipe.config import EmbedConfig, Validated, option, option_of
from transfer_pipe.errors import TransferPipeError

ROOT_ENV = "TRANSFER_PIPE_ROOT"  # the project checkout workers run the flows from
STORE_ENV = "TRANSFER_PIPE_STORE"  # the CLI's default store, and the deployments'
HOST = "127.0.0.1"  # loopback only: the server has no authentication
# Imported by serve's Dask worker when it starts, not by its first task: torch and the
# shard code (seconds) are loaded once per serve, before any run needs them.
WORKER_PRELOAD = "transfer_pipe.features.shard"
# Dask's nanny sets MALLOC_TRIM_THRESHOLD_ in its worker's environment, which turns off
# glibc's dynamic mmap threshold: every batch's tensors are mapped and unmapped again, and
# shards ran at half the speed (measured: 547 against 944 images/s). Left unset here.
WORKER_CONFIG = """\
distributed:
  nanny:
    pre-spawn-environ:
      MALLOC_TRIM_THRESHOLD_: null
"""


def project_root() -> Path:
    """The checkout holding ``deploy/prefect.yaml`` and ``flows/``: ``$TRANSFER_PIPE_ROOT``,
    else the one this package was installed from (``pip install -e``)."""
    # Above serve/, app/ and transfer_pipe/.
    root = Path(os.environ.get(ROOT_ENV) or Path(__file__).resolve().parents[3])
    if not (root / PREFECT_FILE).is_file():
        raise TransferPipeError(
            f"{root / PREFECT_FILE} does not exist: `transfer-pipe serve` deploys the flows "
            f"of a transfer-pipe checkout. Set {ROOT_ENV}=/path/to/the/checkout."
        )
    return root


@dataclass(frozen=True)
class ServeOptions(Validated):
    """What ``transfer-pipe serve`` runs: its store, port and database. The fields given
    with ``option`` are the command's flags (``transfer_pipe.app.cli``)."""

    store: str = option_of(EmbedConfig, "store")
    port: int = option(4200, "loopback port", minimum=1, maximum=65535)
    database_url: str | None = option(
        None,
        "Prefect's database, e.g. postgresql+asyncpg://user:pw@host/prefect "
        "(default: SQLite under $TRANSFER_PIPE_HOME)",
    )
    gpu_worker: bool = option(False, "also run a worker on the gpu pool here")
    dask_threads: int | None = option(
        None,
        "threads of serve's Dask worker, which every run against this serve uses and "
        "which keeps the model loaded between runs (default: as a run's own cluster; 0: "
        "no cluster, each run starts its own; ignored when $DASK_SCHEDULER_ADDRESS is set)",
        minimum=0,
    )
    heartbeat_s: int = field(default_factory=heartbeat_seconds)
    startup_timeout_s: float = 300.0
    stop_timeout_s: float = 15.0
    home: Path = field(default_factory=home)


def serve(options: ServeOptions, out: IO[str] = sys.stdout) -> int:
    """Run the stack in the foreground until Ctrl-C or SIGTERM; stop everything it started.

    Raises ``TransferPipeError`` when a serve already runs on this home or the port is
    taken; returns 1 when a part of the stack fails or exits on its own."""
    root = project_root()
    options.home.mkdir(parents=True, exist_ok=True)
    with exclusive(options.home):
        _check_port_free(options.port)
        env = _environment(options, root)
        children: list[Child] = []
        stop = StopSignal()
        try:
            with stop.installed():
                return _run(options, root, env, children, stop, out)
        finally:
            stop_all(children, options.stop_timeout_s)
            remove_record(options.home)


def _run(
    options: ServeOptions,
    root: Path,
    env: dict[str, str],
    children: list[Child],
    stop: StopSignal,
    out: IO[str],
) -> int:
    api_url = env["PREFECT_API_URL"]
    logs = options.home / "logs"
    logs.mkdir(exist_ok=True)
    started = time.monotonic()
    dask_address = _start_dask(options, env, root, logs, children, stop)
    if dask_address:
        env[DASK_ENV] = dask_address  # the runs its workers start
    print(f"starting a Prefect server on {api_url} (log: {logs / 'server.log'})", file=out)
    server = spawn(
        "server",
        prefect_command("server", "start", "--host", HOST, "--port", str(options.port)),
        env,
        root,
        logs,
    )
    children.append(server)
    write_record(options.home, options.port, api_url, options.heartbeat_s, dask_address)
    if not _wait_healthy(api_url, server, options.startup_timeout_s, stop):
        return _failed(logs, stop, out)
    print(f"server healthy after {time.monotonic() - started:.0f} s", file=out)
    ensure_work_pools(api_url)
    ensure_crash_automation(api_url, options.heartbeat_s)
    for pool in ("cpu", "gpu") if options.gpu_worker else ("cpu",):
        worker = prefect_command("worker", "start", "--pool", pool, "--type", "process")
        children.append(spawn(f"worker-{pool}", worker, env, root, logs))
    deployed = deploy(env, root)
    _print_ready(options, api_url, deployed, dask_address, time.monotonic() - started, out)
    return _wait(children, stop, logs, out)


def _start_dask(
    options: ServeOptions,
    env: dict[str, str],
    root: Path,
    logs: Path,
    children: list[Child],
    stop: StopSignal,
) -> str | None:
    """Start serve's Dask scheduler and its one worker (a nanny process restarts the
    worker if it dies); returns the scheduler's address once it listens, or the address
    ``$DASK_SCHEDULER_ADDRESS`` names (a cluster of the user's: nothing started), or None
    with ``dask_threads=0``."""
    if env.get(DASK_ENV):
        return env[DASK_ENV]
    from transfer_pipe.cluster import plan_cluster

    threads = options.dask_threads
    if threads is None:
        threads = plan_cluster(None, None).workers
    if threads == 0:
        return None
    folder = options.home / "dask"
    (folder / "config").mkdir(parents=True, exist_ok=True)
    (folder / "config" / "transfer-pipe.yaml").write_text(WORKER_CONFIG)
    env = {**env, "DASK_CONFIG": str(folder / "config")}
    scheduler_file = folder / "scheduler.json"
    scheduler_file.unlink(missing_ok=True)  # a stale one would name a dead scheduler
    scheduler = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    # Its HTTP routes (health, metrics) would listen on every interface at 8787 even
    # without a dashboard: loopback, on a free port.
    loopback = ["--no-dashboard", "--dashboard-address", f"{HOST}:0"]
    scheduler += ["--host", HOST, "--port", "0", *loopback]
    children.append(
        spawn(
            "dask-scheduler", [*scheduler, "--scheduler-file", str(scheduler_file)], env, root, logs
        )
    )
    deadline = time.monotonic() + options.startup_timeout_s
    while not scheduler_file.exists():
        if children[-1].process.poll() is not None or time.monotonic() > deadline:
            raise TransferPipeError(
                "the Dask scheduler did not start; its log ends:\n"
                + log_tail(logs / "dask-scheduler.log")
            )
        stop.wait(0.2)
    address = str(json.loads(scheduler_file.read_text())["address"])
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", address]
    worker += ["--nworkers", "1", "--nthreads", str(threads), *loopback]
    worker += ["--host", HOST]  # the worker and its nanny: loopback only, like the server
    worker += ["--name", "transfer-pipe-serve", "--local-directory", str(folder)]
    worker += ["--preload", WORKER_PRELOAD]
    if options.gpu_worker:  # runs asking for CUDA send their tasks here (cluster.GPU)
        worker += ["--resources", "GPU=1"]
    children.append(spawn("dask-worker", worker, env, root, logs))
    return address


def _environment(options: ServeOptions, root: Path) -> dict[str, str]:
    """The environment of every child: Prefect's home, database and URLs point at this
    serve (the UI calls the API on this same port), no analytics (often offline)."""
    api_url = f"http://{HOST}:{options.port}/api"
    store = options.store if "://" in options.store else os.path.abspath(options.store)
    env = {
        **os.environ,
        "PREFECT_HOME": str(options.home / "prefect"),
        "PREFECT_API_URL": api_url,
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(options.port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        HEARTBEAT_ENV: str(options.heartbeat_s),  # the runs its workers start
        ROOT_ENV: str(root),
        STORE_ENV: store,
        HOME_ENV: str(options.home),
    }
    env.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "transfer_pipe")
    if options.database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = options.database_url
    else:  # SQLite under the home, whatever the caller's environment says
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    return env


def _wait_healthy(api_url: str, server: Child, timeout_s: float, stop: StopSignal) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop.requested:
        if server.process.poll() is not None:
            return False
        if healthy(api_url):
            return True
        time.sleep(0.5)
    return False


def _failed(logs: Path, stop: StopSignal, out: IO[str]) -> int:
    if stop.requested:
        return 0
    ends = log_tail(logs / "server.log")
    print(f"the Prefect server did not become healthy; its log ends:\n{ends}", file=out)
    return 1


def _print_ready(
    options: ServeOptions,
    api_url: str,
    deployed: list[str],
    dask_address: str | None,
    seconds: float,
    out: IO[str],
) -> None:
    ui = api_url.removesuffix("/api")
    workers = "cpu and gpu pools" if options.gpu_worker else "cpu pool"
    gpu_note = "" if options.gpu_worker else f"  gpu pool:    {GPU_POOL_NOTE}\n"
    dask = (
        f"{dask_address} (every run against this serve; the model stays loaded)"
        if dask_address
        else "none: each run starts its own local cluster"
    )
    print(
        f"\ntransfer-pipe serve is ready after {seconds:.0f} s\n"
        f"  UI:          {ui}\n"
        f"  API:         {api_url}\n"
        f"  deployments: {', '.join(deployed)}\n"
        f"  worker:      process worker on the {workers}\n"
        f"{gpu_note}"
        f"  dask:        {dask}\n"
        f"  store:       {options.store}\n"
        f"  logs:        {options.home / 'logs'}\n\n"
        "Try, in another terminal (transfer-pipe commands find this server by themselves):\n"
        f"  transfer-pipe embed fashion-mnist --store {options.store} --limit 1000\n"
        f"  PREFECT_API_URL={api_url} prefect deployment run 'embed/embed' "
        f"-p source=fashion-mnist\n"
        f"  PREFECT_API_URL={api_url} prefect deployment ls\n\n"
        "Ctrl-C stops the server, the workers and the Dask cluster.",
        file=out,
        flush=True,
    )


def _wait(children: list[Child], stop: StopSignal, logs: Path, out: IO[str]) -> int:
    """Stay in the foreground until a stop signal (0) or a child exiting on its own (1)."""
    while not stop.requested:
        for child in children:
            if child.process.poll() is not None:
                print(
                    f"{child.name} exited with status {child.process.returncode}; stopping. "
                    f"Its log ends:\n{log_tail(logs / f'{child.name}.log')}",
                    file=out,
                )
                return 1
        stop.wait(1.0)
    print("stopping the workers, the server and the Dask cluster", file=out, flush=True)
    return 0


def _check_port_free(port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            raise TransferPipeError(
                f"port {port} on {HOST} is in use; pass --port with a free one."
            ) from None
