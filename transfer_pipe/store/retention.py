"""Retention: which versions a store keeps, and removing the rest with the rows only
they hold (``transfer-pipe gc``).

Per lineage, under its claim (a run writing it is never collected under it):

1. decide: the newest ``keep_last`` complete versions stay, and so do the ones younger
   than ``older_than`` days, the lineage's newest version, every version a saved head,
   fine-tuning run, sweep or published backbone names (unless ``force``), and an
   incomplete version a later run has not overtaken (a killed run resumes it);
2. remove the other versions, each one's marker first (it reads as missing from then on);
3. remove the lineage shards no kept version has a row in, each shard's record first
   (it reads as not written from then on).

A kill at any moment leaves every kept version whole (nothing it reads is touched), and
the next ``gc`` finds what is left of the removed ones and finishes the job.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.records import Record
from transfer_pipe.store.base import FeatureSetInfo, FeatureStore
from transfer_pipe.store.claims import Holder

# Store-root folders whose JSON documents name the feature sets they were made from.
REFERENCING_FOLDERS = ("heads", "finetune", "sweeps")
DEFAULT_KEEP_LAST = 7


@dataclass(frozen=True)
class Policy:
    """What to keep; ``keys`` instead names exactly the versions to remove."""

    keep_last: int | None = DEFAULT_KEEP_LAST
    older_than_days: float | None = None
    keys: tuple[str, ...] = ()
    force: bool = False


@dataclass(frozen=True)
class Decision(Record):
    """One version and what ``gc`` does with it, and why."""

    key: str
    lineage: str
    created: str
    rows: int
    status: str
    remove: bool
    why: str


@dataclass(frozen=True)
class GcReport(Record):
    """What a ``gc`` removed (or, dry, would remove), and the store's size around it."""

    store: str
    dry_run: bool
    removed: list[str]
    kept: list[str]
    skipped: list[str] = field(default_factory=list)  # "<lineage>: why"
    decisions: list[Decision] = field(default_factory=list)
    freed_bytes: int = 0
    shards_removed: int = 0
    store_bytes_before: int = 0
    store_bytes_after: int = 0


class _Busy(Exception):
    def __init__(self, holder: Holder) -> None:
        self.holder = holder


def references(
    store: FeatureStore, read: Callable[[str], Iterable[tuple[str, bytes]]]
) -> dict[str, list[str]]:
    """Feature-set key -> who names it: every ``feature_set`` field (at any depth) of the
    JSON documents under the referencing folders. ``read(folder)`` yields (path, bytes)
    of the JSON files under a store-root folder."""
    named: dict[str, list[str]] = {}
    for folder in REFERENCING_FOLDERS:
        for path, data in read(folder):
            try:
                document = json.loads(data)
            except ValueError:
                continue
            for key in _feature_sets(document):
                named.setdefault(key, []).append(path)
    return named


def _feature_sets(document: Any) -> Iterable[str]:
    if isinstance(document, dict):
        for name, value in document.items():
            if name.endswith("feature_set") and isinstance(value, str) and value:
                yield value
            else:
                yield from _feature_sets(value)
    elif isinstance(document, list):
        for item in document:
            yield from _feature_sets(item)


def decide(
    infos: Sequence[FeatureSetInfo],
    policy: Policy,
    referenced: dict[str, list[str]],
    now: datetime,
) -> list[Decision]:
    """Keep or remove each version of one lineage (``infos``), and why."""
    complete = sorted((i for i in infos if i.status == "complete"), key=_age, reverse=True)
    newest = complete[0].sequence if complete else -1
    rank = {info.key: n for n, info in enumerate(complete)}
    decisions = []
    for info in infos:
        why = _keep_reason(info, rank, newest, policy, referenced, now)
        decisions.append(
            Decision(
                key=info.key,
                lineage=info.lineage,
                created=info.created,
                rows=info.rows,
                status=info.status,
                remove=why is None,
                why=why or "removed",
            )
        )
    return decisions


def _age(info: FeatureSetInfo) -> tuple[int, str]:
    return (info.sequence, info.key)


def _keep_reason(
    info: FeatureSetInfo,
    rank: dict[str, int],
    newest: int,
    policy: Policy,
    referenced: dict[str, list[str]],
    now: datetime,
) -> str | None:
    """Why ``info`` stays, None when it goes."""
    named = policy.keys and info.key in policy.keys
    if policy.keys and not named:
        return "not named"
    if info.key in referenced and not policy.force:
        return f"referenced by {', '.join(sorted(referenced[info.key]))} (--force removes it)"
    if named:
        return None
    if info.status != "complete":
        return None if info.sequence < newest else "incomplete: the next run resumes it"
    if rank[info.key] == 0:
        return "the lineage's newest version"
    if policy.keep_last is not None and rank[info.key] < policy.keep_last:
        return f"one of the newest {policy.keep_last}"
    if policy.older_than_days is not None:
        created = datetime.fromisoformat(info.created) if info.created else now
        if now - created < timedelta(days=policy.older_than_days):
            return f"younger than {policy.older_than_days:g} days"
    return None


def collect(
    store: FeatureStore,
    policy: Policy,
    referenced: dict[str, list[str]],
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    lineages: Sequence[str] = (),
) -> GcReport:
    """Apply ``policy`` to every lineage of ``store`` (to ``lineages`` when given; see the
    module docstring)."""
    now = now or datetime.now(UTC)
    infos = store.catalog()
    known = {info.key for info in infos}
    unknown = [key for key in policy.keys if key not in known]
    if unknown:
        raise TransferPipeError(
            f"no feature set {', '.join(unknown)} in {store.url}: `transfer-pipe ls --store "
            f"{store.url}` lists the versions it holds; nothing was removed."
        )
    before = store.store_nbytes()
    by_lineage: dict[str, list[FeatureSetInfo]] = {}
    for info in infos:
        by_lineage.setdefault(info.lineage, []).append(info)
    decided: list[Decision] = []
    skipped: list[str] = []
    freed = shards = 0
    for lineage, versions in sorted(by_lineage.items()):
        if lineages and lineage not in lineages:
            continue
        decisions = decide(versions, policy, referenced, now)
        if not any(d.remove for d in decisions) and not _unneeded(store, lineage, decisions):
            decided.extend(decisions)
            continue
        try:
            claim = None if dry_run else store.claim(lineage, done=lambda: False, waiting=_busy)
        except _Busy as busy:
            skipped.append(
                f"{lineage}: a run is writing it ({busy.holder.describe()}); nothing of it was "
                "removed: run gc again once that run is over"
            )
            decided.extend(
                replace(d, remove=False, why="its lineage is being written") for d in decisions
            )
            continue
        try:
            lineage_freed, lineage_shards = _collect_lineage(store, lineage, decisions, dry_run)
        finally:
            if claim is not None:
                claim.release()
        decided.extend(decisions)
        freed += lineage_freed
        shards += lineage_shards
    if not dry_run:  # what a killed gc left of the versions it was removing
        for key in store.leftover_versions():
            freed += store.drop_version(key)
    return GcReport(
        store=store.url,
        dry_run=dry_run,
        removed=[d.key for d in decided if d.remove],
        kept=[d.key for d in decided if not d.remove],
        skipped=skipped,
        decisions=decided,
        freed_bytes=freed,
        shards_removed=shards,
        store_bytes_before=before,
        store_bytes_after=before - freed if dry_run else store.store_nbytes(),
    )


def _busy(holder: Holder) -> None:
    raise _Busy(holder)


def _collect_lineage(
    store: FeatureStore, lineage: str, decisions: Sequence[Decision], dry_run: bool
) -> tuple[int, int]:
    """Remove the versions ``decisions`` remove and the shards only they needed; returns
    (bytes freed, shards removed)."""
    kept = [d.key for d in decisions if not d.remove]
    sizes = store.written_shards(lineage)
    unneeded = _unneeded(store, lineage, decisions, sizes)
    if dry_run:
        versions = sum(store.own_nbytes(d.key) for d in decisions if d.remove)
        return versions + sum(sizes[s] for s in unneeded), len(unneeded)
    freed = 0
    for decision in decisions:
        if decision.remove:
            freed += store.drop_version(decision.key)
    if not kept:
        return freed + store.drop_lineage(lineage), len(sizes)
    return freed + store.drop_shards(lineage, unneeded), len(unneeded)


def _unneeded(
    store: FeatureStore,
    lineage: str,
    decisions: Sequence[Decision],
    sizes: dict[int, int] | None = None,
) -> list[int]:
    """The lineage's stored shards no kept version has a row in (also those a killed
    gc left behind)."""
    needed: set[int] = set()
    for decision in decisions:
        if not decision.remove:
            needed |= store.shards_of(decision.key)
    stored = store.written_shards(lineage) if sizes is None else sizes
    return sorted(set(stored) - needed)


def read_json_files(fs: Any, root: str) -> Callable[[str], Iterable[tuple[str, bytes]]]:
    """``references``' reader over an fsspec filesystem and the store's root path."""

    def read(folder: str) -> Iterable[tuple[str, bytes]]:
        base = posixpath.join(root.rstrip("/"), folder)
        try:
            paths = fs.find(base)
        except FileNotFoundError:
            return
        for path in paths:
            if str(path).endswith(".json"):
                try:
                    yield posixpath.relpath(str(path), root.rstrip("/")), fs.cat_file(path)
                except FileNotFoundError:
                    continue

    return read
