"""Claims: at most one run writes a feature set at a time, and a dead one blocks nobody.

Two runs that target the same feature set at the same time (two scheduled runs, a CLI run
during a deployment's run) must not both create it, nor both compute its shards. The run
that writes takes the feature set's claim first; the other waits until the claim is given
back (the feature set is then complete: it reuses it) or lapses (its holder died: it takes
the claim over and resumes from the shards already written).

A claim is one small JSON object per generation, ``claims/<name>/<generation>.json``,
created with an exclusive write (``O_EXCL`` on a disk, ``If-None-Match: *`` on S3), so of
two runs racing for the same generation exactly one wins. The holder rewrites its object
every ``ttl / 4`` seconds (its heartbeat) with a new expiry. A claim whose expiry has
passed, or whose holder is a process of this machine that no longer exists, has lapsed:
the next run takes generation + 1. A holder that finds a higher generation than its own
has lost its claim (it stalled past its expiry) and stops writing what one writer alone
may write (the feature set's attributes). Expiries compare wall clocks of different
machines: they must agree to within a few seconds (NTP), well under the ttl.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from transfer_pipe.errors import TransferPipeError

logger = logging.getLogger(__name__)

TTL_ENV = "TRANSFER_PIPE_CLAIM_TTL"
DEFAULT_TTL = 60.0
"""Seconds a claim outlives its holder's last heartbeat (the heartbeat comes every ttl/4):
how long a run that died on another machine blocks the next one."""


def claim_ttl() -> float:
    """The ttl of claims this process takes: ``TRANSFER_PIPE_CLAIM_TTL`` or 60 s."""
    raw = os.environ.get(TTL_ENV)
    if raw is None:
        return DEFAULT_TTL
    try:
        ttl = float(raw)
    except ValueError:
        ttl = 0.0
    if ttl <= 0:
        raise TransferPipeError(f"{TTL_ENV}={raw!r}: give a number of seconds above 0.")
    return ttl


def this_machine() -> str:
    """Names this machine and its process namespace: a pid means the same process only
    within one (two containers on one host may share a hostname, never a pid namespace)."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "-"
    return f"{socket.gethostname()}/{namespace}"


@dataclass(frozen=True)
class Holder:
    """Who holds a claim, and until when (the object's JSON)."""

    run: str  # unique per claim taken
    machine: str
    pid: int
    taken: str  # ISO time, for people
    expires: float  # seconds since the epoch

    def lapsed(self, now: float) -> bool:
        """True when the holder can no longer be writing: past its expiry, or a process
        of this machine that has ended."""
        if now > self.expires:
            return True
        return self.machine == this_machine() and not _alive(self.pid)

    def describe(self) -> str:
        host = self.machine.split("/", 1)[0]
        left = max(0.0, self.expires - time.time())
        return (
            f"process {self.pid} on {host} since {self.taken}; "
            f"its claim lapses in {left:.0f} s unless renewed"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


class Claim:
    """A claim held by this process, renewed by a background thread until ``release``."""

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        folder: str,
        generation: int,
        holder: Holder,
        ttl: float,
    ) -> None:
        self._fs = fs
        self._folder = folder
        self.generation = generation
        self.holder = holder
        self._ttl = ttl
        self._lost = False
        self._stop = threading.Event()
        self._beats = threading.Thread(target=self._heartbeat, name=f"claim {folder}", daemon=True)
        self._beats.start()

    @property
    def path(self) -> str:
        return _object(self._folder, self.generation)

    @property
    def held(self) -> bool:
        """False once another run has taken the claim over (checked now, in the store)."""
        if not self._lost and _generations(self._fs, self._folder)[-1:] != [self.generation]:
            self._lost = True
        return not self._lost

    def release(self) -> None:
        """Stop the heartbeat and give the claim back (a waiting run goes on at once)."""
        self._stop.set()
        self._beats.join()
        if self._lost:
            return
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(self.path)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._ttl / 4):
            if not self.held:
                logger.warning(
                    "lost the claim on %s: another run took it over after this one stalled "
                    "past its expiry; this run stops renewing it",
                    self._folder,
                )
                return
            renewed = Holder(**{**asdict(self.holder), "expires": time.time() + self._ttl})
            try:
                self._fs.pipe_file(self.path, _encode(renewed))
                self.holder = renewed
            except OSError as err:  # transient: the next beat tries again, well in time
                logger.warning("could not renew the claim %s: %s", self.path, err)


def take(
    fs: fsspec.AbstractFileSystem,
    folder: str,
    *,
    ttl: float | None = None,
    done: Callable[[], bool] = lambda: False,
    waiting: Callable[[Holder], None] = lambda holder: None,
    poll: float | None = None,
) -> Claim | None:
    """Take the claim at ``folder``, waiting while another live run holds it.

    Returns None, without taking it, as soon as ``done()`` says the work needs no writer
    any more (checked before each try: the holder finished it). ``waiting(holder)`` is
    called on every poll (every ``ttl / 10`` s, at most 2 s) while another run holds it."""
    ttl = claim_ttl() if ttl is None else ttl
    poll = min(2.0, ttl / 10) if poll is None else poll
    while True:
        if done():
            return None
        generations = _generations(fs, folder)
        current = _read(fs, folder, generations[-1]) if generations else None
        if generations and current is None:
            continue  # given back or cleared between the listing and the read: look again
        if current is not None and not current.lapsed(time.time()):
            waiting(current)
            time.sleep(poll)
            continue
        generation = generations[-1] + 1 if generations else 0
        holder = Holder(
            run=uuid.uuid4().hex,
            machine=this_machine(),
            pid=os.getpid(),
            taken=datetime.now(UTC).isoformat(timespec="seconds"),
            expires=time.time() + ttl,
        )
        try:
            _create(fs, _object(folder, generation), _encode(holder))
        except FileExistsError:
            continue  # another run took this generation first: look again
        if _generations(fs, folder)[-1:] != [generation]:
            # A run that listed before an older generation was cleared can win a
            # generation below the newest: the newest one rules, so give this one back.
            fs.rm_file(_object(folder, generation))
            continue
        if current is not None:
            logger.warning(
                "took over the claim on %s from %s: it lapsed",
                folder,
                current.describe(),
            )
        for old in generations:  # lapsed: nobody renews them any more
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(_object(folder, old))
        return Claim(fs, folder, generation, holder, ttl)


def every(seconds: float, say: Callable[[Holder], None]) -> Callable[[Holder], None]:
    """``say`` throttled to once per ``seconds``, for ``take``'s ``waiting`` callback: a
    run that waits says so at once, then now and then."""
    last = -seconds

    def throttled(holder: Holder) -> None:
        nonlocal last
        if time.monotonic() - last >= seconds:
            last = time.monotonic()
            say(holder)

    return throttled


_CREATING = threading.Lock()


def _create(fs: fsspec.AbstractFileSystem, path: str, content: bytes) -> None:
    """Write ``path`` whole if it does not exist, as one atomic step; FileExistsError when
    it does. On a disk: a hard link of a complete temporary file (``link`` never replaces
    a file; fsspec's local "create" mode checks, then writes: two writers could both pass).
    Elsewhere: the filesystem's exclusive create (``If-None-Match: *`` on S3)."""
    if not isinstance(fs, LocalFileSystem):
        with _CREATING:  # memory:// checks, then writes: atomic only within one lock
            fs.pipe_file(path, content, mode="create")
        return
    partial = f"{path}.{uuid.uuid4().hex}.partial"
    with open(partial, "wb") as file:
        file.write(content)
    try:
        os.link(partial, path)
    finally:
        os.unlink(partial)


def _object(folder: str, generation: int) -> str:
    return f"{folder.rstrip('/')}/{generation:010d}.json"


def _generations(fs: fsspec.AbstractFileSystem, folder: str) -> list[int]:
    """The claim's generations present, oldest first."""
    try:
        names = fs.ls(folder, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        stem = str(name).rstrip("/").rsplit("/", 1)[-1].removesuffix(".json")
        if stem.isdigit():
            found.append(int(stem))
    return sorted(found)


def _read(fs: fsspec.AbstractFileSystem, folder: str, generation: int) -> Holder | None:
    """The holder of ``generation``; None when it was just given back. An object being
    written (empty, or half of it) counts as a claim that lapses a ttl after it was
    last written."""
    path = _object(folder, generation)
    try:
        raw = fs.cat_file(path)
        fields: dict[str, Any] = json.loads(raw)
        return Holder(**fields)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        try:
            written = fs.modified(path).timestamp()
        except (FileNotFoundError, NotImplementedError):
            written = time.time()
        return Holder(run="?", machine="?", pid=0, taken="?", expires=written + claim_ttl())


def _encode(holder: Holder) -> bytes:
    return json.dumps(asdict(holder)).encode()
