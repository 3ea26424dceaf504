"""What the steps of one run hand each other inside a process, held by their caller.

Two things cross from one step to the next and cannot travel as a flow's parameters
(Prefect validates and stores those; a claim's heartbeat thread cannot be pickled):

- the manifest a check just loaded, taken (once) by the embed run that follows, so a
  source is listed and hashed once, not twice;
- the claims an embed run took (``store.claims``), given back when it ends.

A caller opens a context around the steps it runs (``with open_context():``, as the CLI
does around a command and each embed flow around its tasks); the steps find it there, and
an embed plan carries the context it was made in. Outside any context each step stands
alone: nothing is handed on, and a long-lived process (a worker running scheduled runs)
lists its source afresh every run.

Light on purpose: the CLI opens a context before it knows whether a command embeds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transfer_pipe.config import EmbedConfig
    from transfer_pipe.data.manifest import Manifest
    from transfer_pipe.store.claims import Claim


class RunContext:
    """The manifests checked and not yet taken, and the claims held, by ``(store URL,
    feature-set key)``, of the runs one caller drives."""

    def __init__(self) -> None:
        self._manifests: dict[EmbedConfig, Manifest] = {}
        self.claims: dict[tuple[str, str], Claim] = {}

    def keep_manifest(self, config: EmbedConfig, manifest: Manifest) -> None:
        """Hand ``manifest`` (just checked for ``config``) to the run that follows."""
        self._manifests[config] = manifest

    def take_manifest(self, config: EmbedConfig) -> Manifest | None:
        """The manifest a check kept for ``config``, once; None when there is none."""
        return self._manifests.pop(config, None)

    def __reduce__(self) -> tuple[type[RunContext], tuple[Any, ...]]:
        # A copy in another process holds nothing: claims and manifests stay here.
        return (RunContext, ())


_OPEN: ContextVar[RunContext | None] = ContextVar("transfer_pipe_run_context", default=None)


@contextlib.contextmanager
def open_context() -> Iterator[RunContext]:
    """The run context of the block: the one a caller opened around it, else a new one
    that ends with the block."""
    opened = _OPEN.get()
    if opened is not None:
        yield opened
        return
    context = RunContext()
    token = _OPEN.set(context)
    try:
        yield context
    finally:
        _OPEN.reset(token)


def current_context() -> RunContext:
    """The context a caller opened around this call; a new one of its own otherwise."""
    return _OPEN.get() or RunContext()
