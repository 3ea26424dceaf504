"""Progress reports bounded in number, whatever the number of shards."""

from __future__ import annotations

from collections.abc import Callable


class WholePercent:
    """Passes a run's progress on to ``send`` (a percent) at most once per whole percent:
    the orchestrator's API serves every run, and a billion images make 122,000 shards.

    ``total`` shards in all, ``before`` of them written before this run started. Call it
    with the number this run has written so far; ``finish`` sends the final share once,
    whether or not it crossed a whole percent since the last report."""

    def __init__(self, total: int, before: int, send: Callable[[float], object]) -> None:
        self.total, self.before, self.send = max(1, total), before, send
        self.shown = int(self.percent(0))

    def percent(self, done: int) -> float:
        """The share of all shards written, ``done`` of them by this run."""
        return 100.0 * (self.before + done) / self.total

    def __call__(self, done: int, pending: int = 0) -> None:
        percent = self.percent(done)
        if int(percent) > self.shown:
            self.shown = int(percent)
            self.send(percent)

    def finish(self, done: int) -> None:
        self.send(self.percent(done))
