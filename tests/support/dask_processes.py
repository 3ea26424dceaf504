"""A real Dask cluster for tests: `dask scheduler` and `dask worker` processes, started as a
user starts them (the venv's `dask` command, a scheduler file), and stopped by their ids."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from distributed import Client

from transfer_pipe.store import open_store

REPO = Path(__file__).resolve().parents[2]
DASK = str(Path(sys.executable).with_name("dask"))
START_TIMEOUT_S = 120.0


@dataclass
class DaskProcesses:
    """One scheduler process and the worker processes started against it."""

    folder: Path
    scheduler: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def scheduler_file(self) -> Path:
        return self.folder / "scheduler.json"

    @property
    def address(self) -> str:
        address: str = json.loads(self.scheduler_file.read_text())["address"]
        return address

    def start_scheduler(self) -> str:
        """Start `dask scheduler` on a free port; returns its address once it listens."""
        self.scheduler_file.unlink(missing_ok=True)
        args = [DASK, "scheduler", "--port", "0", "--no-dashboard", "--scheduler-file"]
        self.scheduler = self._spawn("scheduler", [*args, str(self.scheduler_file)])
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._scheduler_file_written():  # (the file exists before it is written)
            if self.scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start: {self.log('scheduler')}")
            time.sleep(0.2)
        return self.address

    def _scheduler_file_written(self) -> bool:
        try:
            return "address" in json.loads(self.scheduler_file.read_text())
        except (OSError, ValueError):
            return False

    def start_worker(
        self, *options: str, nanny: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start one `dask worker` process of one thread (``options``: e.g. resources;
        ``env``: variables of its own, e.g. another HOME)."""
        args = [DASK, "worker", "--scheduler-file", str(self.scheduler_file)]
        args += ["--nthreads", "1", "--nworkers", "1", "--no-dashboard", *options]
        if not nanny:
            args.append("--no-nanny")
        worker = self._spawn(f"worker{len(self.workers)}", args, env or {})
        self.workers.append(worker)
        return worker

    def wait_for_workers(self, n: int) -> None:
        with Client(self.address, timeout=START_TIMEOUT_S) as client:
            client.wait_for_workers(n, timeout=START_TIMEOUT_S)

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        os.kill(self.scheduler.pid, signal.SIGKILL)
        self.scheduler.wait()

    def stop(self) -> None:
        """Stop what this cluster started, workers first, each by its own id: SIGTERM (a
        nanny then stops its worker process too), SIGKILL after 10 s."""
        for process in [*self.workers, self.scheduler]:
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.workers.clear()
        self.scheduler = None

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _spawn(
        self, name: str, args: list[str], extra: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """The process, its output in ``folder/<name>.log``; it imports this checkout
        (and the tests package, for functions a test runs inside it)."""
        env = {**os.environ, **(extra or {}), "PYTHONPATH": str(REPO)}
        env.pop("DASK_SCHEDULER_ADDRESS", None)
        with (self.folder / f"{name}.log").open("ab") as log:
            return subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def assert_same_features(a_store: Path, b_store: Path, key: str) -> None:
    """Both stores hold feature set ``key`` complete, with equal rows, features (bit for
    bit) and failures."""
    a, b = open_store(str(a_store)), open_store(str(b_store))
    assert a.status(key) == b.status(key) == "complete"
    for layer in b.spec(key).layers:
        x, y = a.load(key, layer=layer), b.load(key, layer=layer)
        assert x.sample_ids.tolist() == y.sample_ids.tolist()
        np.testing.assert_array_equal(x.features, y.features)
    assert a.failures(key).equals(b.failures(key))


def worker_homes(folder: Path, name: str) -> dict[str, str]:
    """A worker's own HOME and transfer-pipe home under ``folder``: what a worker on another
    machine has (it shares nothing with the driver but the store)."""
    home = folder / name
    return {"HOME": str(home), "TRANSFER_PIPE_HOME": str(home / ".transfer-pipe")}
