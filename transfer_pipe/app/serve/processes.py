"""The processes serve starts: each in its own process group with its output in a log,
stopped as a whole tree (a flow run a worker started may sit in a group of its own), and
the signals that end serve's foreground wait."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType


@dataclass
class Child:
    """A process serve started, under the name its log is written as (``<name>.log``)."""

    name: str
    process: subprocess.Popen[bytes]


def spawn(name: str, command: list[str], env: dict[str, str], root: Path, logs: Path) -> Child:
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
    return Child(name, process)


class StopSignal:
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


def _signal_tree(child: Child, signum: int) -> None:
    pids = [child.process.pid, *_descendants(child.process.pid)]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.process.pid, signum)  # the group: start_new_session made pid its id
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def stop_all(children: list[Child], timeout_s: float) -> None:
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


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a child's log, for the message that says it stopped."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
