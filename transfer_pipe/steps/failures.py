"""What failed and why: images a run could not use, and a step that could not finish.

Two kinds of failure, handled apart:

- a bad image is data: a row of the feature set's failures table, reported (``failure_report``,
  ``failure_summary``) and never a crashed run;
- a step that cannot finish (a store that cannot be written, a device that went away) raises
  ``StepFailed`` naming the shard or head and the cause; ``is_transient`` says whether trying
  again may help (an orchestrator's retry condition reads it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.records import Record
from transfer_pipe.store import FeatureStore

FAILURE_ROWS = 200
"""At most this many rows of the failures table go into a run's report (the store keeps
them all: ``FeatureStore.failures``)."""


class StepFailed(Exception):
    """One unit of work (a shard, a head) could not finish; the message names it and the
    cause, and ``__cause__`` is the original error. Earlier units stay written: the next run
    resumes from them."""


def is_transient(exc: BaseException | None) -> bool:
    """Whether trying again may help: an I/O error or a timeout (a store or network
    hiccup, a device busy), here or as the cause of a ``StepFailed``; never a mistake the
    user must fix (``TransferPipeError``)."""
    while exc is not None:
        if isinstance(exc, TransferPipeError):
            return False
        if isinstance(exc, OSError | TimeoutError):
            return True
        exc = exc.__cause__
    return False


@dataclass(frozen=True)
class FailureReport(Record):
    """A feature set's images that could not be used: how many, the most common reasons
    (category, count), and the first ``FAILURE_ROWS`` rows (sample_id, uri, reason); then
    its notes: the images used with a caveat (a colour profile decoding could not use),
    how many, and the first rows (sample_id, uri, note)."""

    total: int
    reasons: list[tuple[str, int]]
    rows: list[dict[str, str]]
    noted: int = 0
    note_kinds: list[tuple[str, int]] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)

    @property
    def message(self) -> str:
        """``4 images failed (2 not-an-image, 1 empty, 1 truncated)``; "" when none did."""
        return _counted(self.total, "failed", self.reasons)

    @property
    def note_message(self) -> str:
        """``2 images used with a note (2 icc-unusable)``; "" when none was."""
        return _counted(self.noted, "used with a note", self.note_kinds)


def _counted(images: int, what: str, kinds: list[tuple[str, int]]) -> str:
    if not images:
        return ""
    counts = ", ".join(f"{n} {kind}" for kind, n in kinds)
    return f"{images} image{'s' if images != 1 else ''} {what} ({counts})"


def failure_report(store: FeatureStore, key: str, limit: int = FAILURE_ROWS) -> FailureReport:
    """The failures of feature set ``key``: count, reasons by frequency, the first rows."""
    table = store.failures(key)
    # A reason reads "category: detail"; the category groups them ("not-an-image", ...).
    categories = Counter(str(reason).split(":", 1)[0] for reason in table["reason"])
    rows = [
        {"sample_id": str(r.sample_id), "uri": str(r.uri), "reason": str(r.reason)}
        for r in table.head(limit).itertuples(index=False)
    ]
    noted = store.notes(key)
    kinds = Counter(str(note).split(":", 1)[0] for note in noted["note"])
    notes = [
        {"sample_id": str(r.sample_id), "uri": str(r.uri), "note": str(r.note)}
        for r in noted.head(limit).itertuples(index=False)
    ]
    return FailureReport(
        len(table), categories.most_common(), rows, len(noted), kinds.most_common(), notes
    )
