"""The night at a glance: one markdown report of a pipeline run, whatever started it.

What a person checks the morning after: the version the night wrote (rows added, removed
and changed, bytes written, the store's size), the lineage's history night by night, the
files that failed and why, the heads' test metrics (or that they were up to date), and what
retention removed. The pipeline flow turns it into its own artifact, on every route (a
night with nothing new included).

    markdown = night_markdown(store, summary)
"""

from __future__ import annotations

from collections.abc import Sequence

from transfer_pipe.report.tables import markdown_table
from transfer_pipe.steps.failures import FAILURE_ROWS, FailureReport, failure_report
from transfer_pipe.steps.results import PipelineSummary
from transfer_pipe.store import FeatureSetInfo, FeatureStore

HISTORY_ROWS = 14  # the lineage's newest versions shown; `transfer-pipe ls` lists them all


def size(nbytes: float) -> str:
    """``1.2 MB``-style, for people."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    raise AssertionError("unreachable")


def night_markdown(store: FeatureStore, summary: PipelineSummary) -> str:
    """The night's report from ``summary`` and what the store holds now."""
    key = summary.embed.feature_set
    lineage = store.spec(key).lineage
    history = [info for info in store.catalog() if info.lineage == lineage]
    failures = failure_report(store, key, FAILURE_ROWS)
    return night_report(summary, history, failures, store.store_nbytes())


def night_report(
    summary: PipelineSummary,
    history: Sequence[FeatureSetInfo],
    failures: FailureReport,
    store_bytes: int,
) -> str:
    """The markdown of one pipeline run: ``history`` is its lineage's versions, oldest
    first (its own last); ``failures`` the version's failed files."""
    embedded = summary.embed
    version = next((v for v in history if v.key == embedded.feature_set), None)
    lines = [f"# {summary.message}", ""]
    lines += _version_lines(embedded.feature_set, version, store_bytes)
    lines += ["", f"## History of lineage {version.lineage if version else '?'}", ""]
    shown = history[-HISTORY_ROWS:]
    rows = [
        [v.key, v.created, v.rows, v.added, v.removed, v.changed, size(v.new_bytes)] for v in shown
    ]
    header = ["version", "created", "rows", "added", "removed", "changed", "written"]
    lines.append(markdown_table(header, rows))
    if len(history) > len(shown):
        lines.append(f"\n({len(history) - len(shown)} older versions: `transfer-pipe ls`)")
    lines += ["", "## Failed files", ""]
    if failures.total:
        lines.append(f"{failures.message}; `transfer-pipe show {embedded.feature_set}` lists all.")
        lines.append("")
        lines.append(
            markdown_table(
                ["sample_id", "reason"], [[r["sample_id"], r["reason"]] for r in failures.rows]
            )
        )
    else:
        lines.append("none")
    if failures.noted:
        lines += ["", f"{failures.note_message}:", ""]
        rows = [[r["sample_id"], r["note"]] for r in failures.notes]
        lines.append(markdown_table(["sample_id", "note"], rows))
    lines += ["", f"## Heads (task {summary.train.task})", ""]
    if summary.train.heads_fitted == 0:
        lines.append("up to date: no head needed fitting; their test metrics:")
        lines.append("")
    table = summary.train.table
    if table:
        columns = list(table[0])
        lines.append(markdown_table(columns, [[row.get(c, "") for c in columns] for row in table]))
    lines += ["", "## Retention", ""]
    retained = summary.retention
    if retained is None:
        lines.append("nothing to collect (no new version tonight, or keep_last 0)")
    else:
        removed = ", ".join(retained.removed) or "none"
        lines.append(
            f"removed versions: {removed}; {retained.shards_removed} shards, "
            f"{size(retained.freed_bytes)} freed"
        )
        lines += [f"skipped lineage {line}" for line in retained.skipped]
    return "\n".join(lines) + "\n"


def _version_lines(key: str, version: FeatureSetInfo | None, store_bytes: int) -> list[str]:
    if version is None:
        return [f"feature set {key}; store {size(store_bytes)}"]
    parent = f"parent {version.parent}" if version.parent else "the lineage's first version"
    return [
        f"**version {key}** ({parent}): {version.rows} rows; {version.added} added, "
        f"{version.removed} removed, {version.changed} changed; {size(version.new_bytes)} "
        f"written; it reads {size(version.nbytes)}; the store holds {size(store_bytes)}."
    ]
