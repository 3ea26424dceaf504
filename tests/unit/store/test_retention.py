"""Which versions ``gc`` keeps (issue 21, part 4): the newest N, the young, the newest
of each lineage, every referenced one unless forced, and an incomplete version a later
run has not overtaken; named keys remove exactly those.

Each test names, in a comment, the mutation of the code it was seen failing on.
"""

from __future__ import annotations

from datetime import UTC, datetime

from transfer_pipe.store import FeatureSetInfo
from transfer_pipe.store.retention import Decision, Policy, decide

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def version(n: int, status: str = "complete", days_old: float = 0.0) -> FeatureSetInfo:
    created = datetime.fromtimestamp(NOW.timestamp() - days_old * 86400, UTC)
    return FeatureSetInfo(
        key=f"v{n}",
        source="s",
        backbone="b",
        layers=("penultimate",),
        rows=10 + n,
        failed=0,
        status=status,  # type: ignore[arg-type]
        nbytes=1,
        created=created.isoformat(),
        lineage="L",
        sequence=n,
    )


def removed(decisions: list[Decision]) -> list[str]:
    return sorted(d.key for d in decisions if d.remove)


def test_keep_last_keeps_the_newest_n_by_their_place_in_the_lineage() -> None:
    # Mutation seen failing: ranking by key instead of sequence (v10 sorts before v2).
    infos = [version(n) for n in (1, 2, 10, 11)]
    assert removed(decide(infos, Policy(keep_last=2), {}, NOW)) == ["v1", "v2"]
    assert removed(decide(infos, Policy(keep_last=1), {}, NOW)) == ["v1", "v10", "v2"]


def test_the_newest_version_always_stays_and_older_than_keeps_the_young() -> None:
    # Mutation seen failing: dropping the "newest version" rule (a lineage untouched for
    # 30 days would lose every version, and the next night recompute everything).
    infos = [version(1, days_old=40), version(2, days_old=20), version(3, days_old=10)]
    policy = Policy(keep_last=None, older_than_days=15)
    assert removed(decide(infos, policy, {}, NOW)) == ["v1", "v2"]
    policy = Policy(keep_last=None, older_than_days=30)
    assert removed(decide(infos, policy, {}, NOW)) == ["v1"]


def test_a_referenced_version_stays_unless_forced_and_says_who_names_it() -> None:
    # Mutation seen failing: _keep_reason ignoring ``referenced``.
    infos = [version(n) for n in (1, 2, 3)]
    named = {"v1": ["heads/h1/card.json"]}
    decisions = decide(infos, Policy(keep_last=1), named, NOW)
    assert removed(decisions) == ["v2"]
    assert "heads/h1/card.json" in next(d.why for d in decisions if d.key == "v1")
    forced = Policy(keep_last=1, force=True)
    assert removed(decide(infos, forced, named, NOW)) == ["v1", "v2"]


def test_an_overtaken_incomplete_version_goes_a_newer_one_stays() -> None:
    # Mutation seen failing: keeping every incomplete version (a killed night's abandoned
    # rows would never be collected).
    infos = [version(1), version(2, "incomplete"), version(3), version(4, "incomplete")]
    assert removed(decide(infos, Policy(keep_last=5), {}, NOW)) == ["v2"]


def test_named_keys_remove_exactly_those_and_never_a_referenced_one_unforced() -> None:
    # Mutation seen failing: named keys still filtered by keep_last (nothing removed).
    infos = [version(n) for n in (1, 2, 3)]
    assert removed(decide(infos, Policy(keys=("v3",)), {}, NOW)) == ["v3"]
    named = {"v3": ["sweeps/s/sweep.json"]}
    assert removed(decide(infos, Policy(keys=("v3",)), named, NOW)) == []
    assert removed(decide(infos, Policy(keys=("v3",), force=True), named, NOW)) == ["v3"]
