"""``transfer-pipe verify``: read a feature set end to end, name what is damaged, and with
``repair`` mark the damaged shards not done so the next embed recomputes only those.

    report = verify_feature_set("store", "3f2a...", repair=True)
    print(verify_message(report))
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.records import Record
from transfer_pipe.store import FeatureStore, StorageOptions, open_store
from transfer_pipe.store.claims import Holder, every
from transfer_pipe.store.integrity import Damage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyReport(Record):
    """What ``verify`` found in one feature set and, with ``--repair``, what it did."""

    feature_set: str
    store: str
    ok: bool  # nothing damaged
    status: str  # the feature set's status now (after a repair: incomplete)
    damaged_shards: list[int]
    damaged_metadata: list[str]  # metadata documents, relative to the feature set's folder
    damaged_columns: list[str]
    damaged_table: bool
    problems: list[str]
    repaired: bool
    actions: list[str]
    next_step: str  # the command to run next ("" when nothing is to be done)


def verify_feature_set(
    store_url: str, key: str, storage_options: StorageOptions = None, repair: bool = False
) -> VerifyReport:
    """Check feature set ``key`` of the store at ``store_url`` (every object, every
    checksum); with ``repair``, repair it as ``store.integrity.repair`` says."""
    store = open_store(store_url, storage_options)
    if repair:  # it writes: not while a run writes the same lineage
        name = _lineage_of(store, key)
        claim = store.claim(name, done=lambda: False, waiting=every(30, _waiting(key)))
        assert claim is not None
        try:
            damage: Damage = store.verify(key, repair=True)
        finally:
            claim.release()
    else:
        damage = store.verify(key)
    repaired = repair and not damage.ok
    return VerifyReport(
        feature_set=key,
        store=store_url,
        ok=damage.ok,
        status=_status(store, key),
        damaged_shards=list(damage.shards),
        damaged_metadata=list(damage.metadata),
        damaged_columns=list(damage.columns),
        damaged_table=damage.table,
        problems=list(damage.problems),
        repaired=repaired,
        actions=list(damage.actions),
        next_step=_next_step(store_url, key, damage, repaired),
    )


def _waiting(key: str) -> Callable[[Holder], None]:
    def say(holder: Holder) -> None:
        logger.warning(
            "the lineage of feature set %s is being written by another run (%s): the repair "
            "waits for it",
            key,
            holder.describe(),
        )

    return say


def _lineage_of(store: FeatureStore, key: str) -> str:
    """The lineage whose claim a repair of ``key`` takes (the key itself when its spec
    does not read: the repair then only removes the version)."""
    try:
        return store.spec(key).lineage
    except TransferPipeError:
        return key


def _status(store: FeatureStore, key: str) -> str:
    try:
        return store.status(key)
    except TransferPipeError:
        return "damaged"


def _next_step(store_url: str, key: str, damage: Damage, repaired: bool) -> str:
    if damage.ok:
        return ""
    if repaired:
        return (
            "run the same `transfer-pipe embed` (source and options) that made this feature "
            "set: it computes only the shards marked not done and completes it again"
        )
    return f"transfer-pipe verify {key} --store {store_url} --repair"


def verify_message(report: VerifyReport) -> str:
    """The report for people: one line when whole, else a line per problem and the fix."""
    if report.ok:
        return f"feature set {report.feature_set}: every object reads and checks out"
    shards = ", ".join(map(str, report.damaged_shards)) or "none"
    lines = [
        f"feature set {report.feature_set} is damaged: shards {shards}; metadata "
        f"{', '.join(report.damaged_metadata) or 'whole'}; columns "
        f"{', '.join(report.damaged_columns) or 'whole'}; table "
        f"{'damaged' if report.damaged_table else 'whole'}",
        *(f"  {problem}" for problem in report.problems),
    ]
    if report.repaired:
        lines += [f"repaired ({report.status}):", *(f"  {a}" for a in report.actions)]
    lines.append(f"next: {report.next_step}")
    return "\n".join(lines)


__all__ = ["VerifyReport", "verify_feature_set", "verify_message"]
