"""``transfer-pipe serve``: a Prefect server, work pools, deployments and a worker that stay up,
and a Dask cluster (a scheduler and one worker) that keeps the model loaded between runs.

The server, ``prefect deploy`` and the worker are ``prefect`` CLI subprocesses; the work
pools and the crash automation are set up through Prefect's own client. Where it runs is
recorded in ``<home>/server.json`` (home: ``$TRANSFER_PIPE_HOME``, default
``~/.transfer-pipe``), so every other ``transfer-pipe`` command finds it
(``use_running_server``) instead of starting Prefect's temporary server (15-40 s, and its
history thrown away), and its Dask cluster: a night with a few new images then pays neither
for torch's import nor for building the model (seconds each; the run's own process imports
neither).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from transfer_pipe.config import EmbedConfig, Validated, option, option_of
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.records import Record, known_fields

# Prefect is imported where it is used: `use_running_server` must set PREFECT_API_URL
# before Prefect's import reads its settings, and `ls` must not pay seconds for it.
if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

HOME_ENV = "TRANSFER_PIPE_HOME"  # the same home as published backbones (backbones.published)
ROOT_ENV = "TRANSFER_PIPE_ROOT"  # the project checkout workers run the flows from
STORE_ENV = "TRANSFER_PIPE_STORE"  # the CLI's default store, and the deployments'
RECORD_NAME = "server.json"
DASK_ENV = "DASK_SCHEDULER_ADDRESS"  # where every run of this serve sends its Dask tasks
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
PREFECT_FILE = Path("deploy") / "prefect.yaml"
HOST = "127.0.0.1"  # loopback only: the server has no authentication
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
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
DEFAULT_HEARTBEAT_S = 180  # Prefect's own default
MISSED_HEARTBEATS = 3
_FINAL_EVENTS = ("Completed", "Failed", "Cancelled", "Crashed")


def home() -> Path:
    """The transfer-pipe home: ``$TRANSFER_PIPE_HOME``, default ``~/.transfer-pipe``."""
    return Path(os.environ.get(HOME_ENV) or "~/.transfer-pipe").expanduser()


def project_root() -> Path:
    """The checkout holding ``deploy/prefect.yaml`` and ``flows/``: ``$TRANSFER_PIPE_ROOT``,
    else the one this package was installed from (``pip install -e``)."""
    root = Path(
        os.environ.get(ROOT_ENV) or Path(__file__).resolve().parents[2]
    )  # app/, transfer_pipe/
    if not (root / PREFECT_FILE).is_file():
        raise TransferPipeError(
            f"{root / PREFECT_FILE} does not exist: `transfer-pipe serve` deploys the flows "
            f"of a transfer-pipe checkout. Set {ROOT_ENV}=/path/to/the/checkout."
        )
    return root


# --- where a server runs ------------------------------------------------------------------


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    # A plain GET, not Prefect's client: every command asks this before Prefect is imported.
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
    return record if _healthy(record.api_url) else None


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


# --- serve -------------------------------------------------------------------------------


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


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]


def serve(options: ServeOptions, out: IO[str] = sys.stdout) -> int:
    """Run the stack in the foreground until Ctrl-C or SIGTERM; stop everything it started.

    Raises ``TransferPipeError`` when a serve already runs on this home or the port is
    taken; returns 1 when a part of the stack fails or exits on its own."""
    root = project_root()
    options.home.mkdir(parents=True, exist_ok=True)
    with _exclusive(options.home):
        _check_port_free(options.port)
        env = _environment(options, root)
        children: list[_Child] = []
        stop = _StopSignal()
        try:
            with stop.installed():
                return _run(options, root, env, children, stop, out)
        finally:
            _stop_all(children, options.stop_timeout_s)
            _remove_record(options.home)


def _run(
    options: ServeOptions,
    root: Path,
    env: dict[str, str],
    children: list[_Child],
    stop: _StopSignal,
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
    server = _spawn(
        "server",
        _prefect("server", "start", "--host", HOST, "--port", str(options.port)),
        env,
        root,
        logs,
    )
    children.append(server)
    _write_record(options.home, options.port, api_url, options.heartbeat_s, dask_address)
    if not _wait_healthy(api_url, server, options.startup_timeout_s, stop):
        return _failed(server, logs, stop, out)
    print(f"server healthy after {time.monotonic() - started:.0f} s", file=out)
    _ensure_work_pools(api_url)
    ensure_crash_automation(api_url, options.heartbeat_s)
    for pool in ("cpu", "gpu") if options.gpu_worker else ("cpu",):
        worker = _prefect("worker", "start", "--pool", pool, "--type", "process")
        children.append(_spawn(f"worker-{pool}", worker, env, root, logs))
    deployed = _deploy(env, root)
    _print_ready(options, api_url, deployed, dask_address, time.monotonic() - started, out)
    return _wait(children, stop, logs, out)


def _start_dask(
    options: ServeOptions,
    env: dict[str, str],
    root: Path,
    logs: Path,
    children: list[_Child],
    stop: _StopSignal,
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
        _spawn(
            "dask-scheduler", [*scheduler, "--scheduler-file", str(scheduler_file)], env, root, logs
        )
    )
    deadline = time.monotonic() + options.startup_timeout_s
    while not scheduler_file.exists():
        if children[-1].process.poll() is not None or time.monotonic() > deadline:
            raise TransferPipeError(
                "the Dask scheduler did not start; its log ends:\n"
                + _tail(logs / "dask-scheduler.log")
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
    children.append(_spawn("dask-worker", worker, env, root, logs))
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


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def _spawn(name: str, command: list[str], env: dict[str, str], root: Path, logs: Path) -> _Child:
    """Start ``command`` in its own process group (stopped as a group), output to a log."""
    with open(logs / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return _Child(name, process)


def _run_prefect(args: Sequence[str], env: dict[str, str], root: Path) -> None:
    """Run a short ``prefect`` command; its output becomes the error when it fails."""
    done = subprocess.run(
        _prefect(*args), env=env, cwd=root, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise TransferPipeError(
            f"`prefect {' '.join(args)}` failed:\n{(done.stdout + done.stderr).strip()[-3000:]}"
        )


def _wait_healthy(api_url: str, server: _Child, timeout_s: float, stop: _StopSignal) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop.requested:
        if server.process.poll() is not None:
            return False
        if _healthy(api_url):
            return True
        time.sleep(0.5)
    return False


def _failed(server: _Child, logs: Path, stop: _StopSignal, out: IO[str]) -> int:
    if stop.requested:
        return 0
    tail = _tail(logs / "server.log")
    print(f"the Prefect server did not become healthy; its log ends:\n{tail}", file=out)
    return 1


def _ensure_work_pools(api_url: str) -> None:
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


def _deploy(env: dict[str, str], root: Path) -> list[str]:
    names = deployable(root)
    selected = [arg for name in names for arg in ("--name", name)]
    _run_prefect(["deploy", "--prefect-file", str(PREFECT_FILE), *selected], env, root)
    return names


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


def _wait(children: list[_Child], stop: _StopSignal, logs: Path, out: IO[str]) -> int:
    """Stay in the foreground until a stop signal (0) or a child exiting on its own (1)."""
    while not stop.requested:
        for child in children:
            if child.process.poll() is not None:
                print(
                    f"{child.name} exited with status {child.process.returncode}; stopping. "
                    f"Its log ends:\n{_tail(logs / f'{child.name}.log')}",
                    file=out,
                )
                return 1
        stop.wait(1.0)
    print("stopping the workers, the server and the Dask cluster", file=out, flush=True)
    return 0


# --- signals, processes, the record ----------------------------------------------------


class _StopSignal:
    """Ctrl-C (SIGINT) and SIGTERM set a flag that the wait loops check."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)  # a signal ends the sleep early; the loop checks the flag


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc): a flow run started by the worker may
    sit in a process group of its own."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (in parentheses) may hold spaces: split after it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_tree(child: _Child, signum: int) -> None:
    pids = [child.process.pid, *_descendants(child.process.pid)]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.process.pid, signum)  # the group: start_new_session made pid its id
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _stop_all(children: list[_Child], timeout_s: float) -> None:
    """Terminate every child's process tree (the worker first, so it stops taking runs),
    then kill whatever is left after ``timeout_s``."""
    trees = {c.name: [c.process.pid, *_descendants(c.process.pid)] for c in children}
    for child in reversed(children):
        _signal_tree(child, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in reversed(children):
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(max(0.1, deadline - time.monotonic()))
    for child in reversed(children):
        _signal_tree(child, signal.SIGKILL)
        for pid in trees[child.name]:  # orphans re-parented to init are no longer below
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        child.process.wait()


def _check_port_free(port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            raise TransferPipeError(
                f"port {port} on {HOST} is in use; pass --port with a free one."
            ) from None


@contextlib.contextmanager
def _exclusive(at: Path) -> Iterator[None]:
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


def _write_record(
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


def _remove_record(at: Path) -> None:
    record = read_record(at)
    if record and record.pid == os.getpid():
        (at / RECORD_NAME).unlink(missing_ok=True)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
