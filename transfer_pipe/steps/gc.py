"""Retention as a step: ``transfer-pipe gc`` and the pipeline's nightly clean-up.

report = collect_garbage(GcConfig(store="store", keep_last=7))
print(gc_message(report))
"""

from __future__ import annotations

from transfer_pipe.config import GcConfig
from transfer_pipe.store import open_store
from transfer_pipe.store.cards import store_fs
from transfer_pipe.store.retention import (
    DEFAULT_KEEP_LAST,
    GcReport,
    Policy,
    collect,
    read_json_files,
    references,
)


def collect_garbage(config: GcConfig, lineages: tuple[str, ...] = ()) -> GcReport:
    """Remove what ``config`` says no longer needs keeping (``store.retention``);
    ``lineages`` limits it to those lineages (the pipeline collects its own only)."""
    store = open_store(config.store, config.storage_options)
    fs, root = store_fs(config.store, config.storage_options)
    named = references(store, read_json_files(fs, root))
    keep_last = config.keep_last
    if keep_last is None and not config.keys and config.older_than is None:
        keep_last = DEFAULT_KEEP_LAST
    policy = Policy(
        keep_last=keep_last,
        older_than_days=config.older_than,
        keys=config.keys,
        force=config.force,
    )
    return collect(store, policy, named, dry_run=config.dry_run, lineages=lineages)


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"


def gc_message(report: GcReport) -> str:
    """What ``gc`` did, for the terminal: one line per removed or kept version, then
    the bytes freed and the store's size."""
    verb = "would remove" if report.dry_run else "removed"
    lines = []
    for decision in report.decisions:
        what = verb if decision.remove else "kept"
        reason = "" if decision.remove else f" ({decision.why})"
        lines.append(
            f"{what} {decision.key} (lineage {decision.lineage}, {decision.rows} rows, "
            f"created {decision.created or '?'}){reason}"
        )
    lines.extend(f"skipped lineage {line}" for line in report.skipped)
    lines.append(
        f"{verb} {len(report.removed)} versions and {report.shards_removed} shards, "
        f"{'freeing' if report.dry_run else 'freed'} {_mb(report.freed_bytes)}; store "
        f"{_mb(report.store_bytes_before)} -> {_mb(report.store_bytes_after)}"
    )
    return "\n".join(lines)
