"""A `transfer-pipe` run that stops itself (SIGSTOP) once it has written a number of
shards, so that a test acts on it mid-run whatever the machine's speed: polling the store
from outside let a fast run finish every shard between two looks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PAUSE_ENV = "TRANSFER_PIPE_TEST_PAUSE_AFTER_SHARDS"
REPO = Path(__file__).resolve().parents[2]

# The CLI with produce_shard wrapped (in the run's own process: its Dask worker is in-process).
_RUNNER = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from tests.support.pausing import pause_after_shards
from transfer_pipe.app.cli import main
pause_after_shards()
sys.exit(main(sys.argv[1:]))
"""

_state: dict[str, Any] = {"written": 0, "lock": threading.Lock()}


def pause_after_shards() -> None:
    """In the run's process: once ``$TRANSFER_PIPE_TEST_PAUSE_AFTER_SHARDS`` shards are
    written and marked done, the whole process (every thread) stops until SIGCONT or
    SIGKILL."""
    from transfer_pipe.features import shard

    _state.update(after=int(os.environ[PAUSE_ENV]), produce_shard=shard.produce_shard)
    shard.produce_shard = pausing


def pausing(task: Any) -> Any:
    """produce_shard, then the pause at the chosen count. (A function of a module, not of
    ``__main__`` nor a closure: Dask hashes the function it maps by its name.)"""
    result = _state["produce_shard"](task)
    with _state["lock"]:
        _state["written"] += 1
        if _state["written"] == _state["after"]:
            os.kill(os.getpid(), signal.SIGSTOP)
    return result


def pausing_command(*cli_args: str) -> list[str]:
    """The command line of a run that stops after ``$TRANSFER_PIPE_TEST_PAUSE_AFTER_SHARDS``
    shards (run it with that variable set, in a session of its own)."""
    return [sys.executable, "-c", _RUNNER, *cli_args]


def wait_until_stopped(process: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    """Return once ``process`` has stopped itself; fail if it ends or takes too long."""
    import psutil

    deadline = time.monotonic() + timeout_s
    watched = psutil.Process(process.pid)
    while watched.status() != psutil.STATUS_STOPPED:
        assert process.poll() is None, "the run ended before it paused"
        assert time.monotonic() < deadline, f"the run did not pause in {timeout_s} s"
        time.sleep(0.05)
