"""``transfer-pipe migrate`` (issue 21, part 7): a store written by the release before
versions (``tests/fixtures/store_v2``: two feature sets of one folder, one copy each, and a
head) becomes versions of one lineage; every key opens the same rows as before, the head
still loads and predicts, the store shrinks, and a second run, or a run cut short then
run again, changes nothing more.

Each test names, in a comment, the mutation of the code it was seen failing on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from transfer_pipe.app.cli import main
from transfer_pipe.heads.persist import load_head
from transfer_pipe.store import open_store

FIXTURE = Path(__file__).parents[1] / "fixtures" / "store_v2"
FIRST, SECOND = "716b9737089fe92d", "070cbe269ed83751"  # oldest first
HEAD = "source-logreg-a753cce812"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(FIXTURE, copy)
    return copy


def old_rows(store: Path, key: str) -> dict[str, tuple[np.ndarray, str]]:
    """sample id -> (features, failure reason), read from a layout-2 feature set with
    plain zarr."""
    group = zarr.open_group(str(store / "feature_sets" / key), mode="r")
    ids = np.asarray(group["sample_id"][:]).tolist()
    features = np.asarray(group["features/penultimate"][:])
    reasons = np.asarray(group["failure"][:]).tolist()
    return {str(i): (f, str(r)) for i, f, r in zip(ids, features, reasons, strict=True)}


def migrate(store: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    assert main(["migrate", "--store", str(store), "--json"]) == 0
    report: dict[str, object] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return report


def test_every_key_opens_the_same_rows_as_versions_that_share_them(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Mutation seen failing: _write_rows writing the features of the table's rows in
    # table order rather than by lineage row (values land on other sample ids).
    before = {key: old_rows(store, key) for key in (FIRST, SECOND)}
    size_before = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    report = migrate(store, capsys)
    assert report["migrated"] == [FIRST, SECOND]
    assert report["shared_rows"] == 12  # the second version shares every row of the first
    opened = open_store(str(store))
    assert opened.list_keys() == sorted([FIRST, SECOND])
    assert not (store / "feature_sets" / FIRST).exists()
    assert opened.spec(SECOND).parent == FIRST
    assert opened.info(SECOND).added == 2 and opened.spec(SECOND).appended == 2
    for key, rows in before.items():
        assert opened.status(key) == "complete" and opened.verify(key).ok
        table = opened.row_table(key)
        assert sorted(table["sample_id"]) == sorted(rows)
        for sample_id, reason in zip(table["sample_id"], table["failure"], strict=True):
            assert reason == rows[sample_id][1]
        good = opened.load(key, layer="penultimate")
        for sample_id, features in zip(good.sample_ids, good.features, strict=True):
            np.testing.assert_array_equal(features, rows[sample_id][0])
    size_after = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    assert size_after < size_before


def test_a_head_fitted_before_still_loads_on_its_key(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Mutation seen failing: migrate giving versions new keys (lineage id as the key).
    migrate(store, capsys)
    model, card = load_head(str(store), HEAD)
    assert card.feature_set == SECOND
    loaded = open_store(str(store)).load(SECOND, layer="penultimate")
    assert set(model.predict(loaded.features)) <= set(card.classes)


def test_before_migrating_every_command_says_to_migrate(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Mutation seen failing: status() reading a layout-2 set as missing (an embed would
    # silently recompute it beside the old copy).
    assert main(["ls", "--store", str(store)]) == 0
    assert "transfer-pipe migrate" in capsys.readouterr().out
    assert main(["show", SECOND, "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "transfer-pipe migrate" in err and len(err.strip().splitlines()) == 1


def test_a_second_or_interrupted_migration_goes_on_where_it_stopped(
    store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mutation seen failing: migrate skipping a feature set whose version is complete
    # but whose old folder was not removed yet (its rows stay stored twice).
    from transfer_pipe.store.zarr_store import ZarrFeatureStore

    real = ZarrFeatureStore.drop_legacy

    def cut_short(self: ZarrFeatureStore, key: str) -> None:
        raise KeyboardInterrupt  # killed once the first version is complete

    monkeypatch.setattr(ZarrFeatureStore, "drop_legacy", cut_short)
    with pytest.raises(KeyboardInterrupt):
        main(["migrate", "--store", str(store)])
    monkeypatch.setattr(ZarrFeatureStore, "drop_legacy", real)
    assert open_store(str(store)).verify(FIRST).ok
    report = migrate(store, capsys)
    assert report["migrated"] == [FIRST, SECOND]
    assert not (store / "feature_sets").exists() or not any((store / "feature_sets").iterdir())
    assert migrate(store, capsys)["migrated"] == []


def test_migrate_on_a_folder_that_is_no_store_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Mutation seen failing: migrate creating the store's folders before checking.
    folder = tmp_path / "photos"
    folder.mkdir()
    assert main(["migrate", "--store", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "is not a feature store" in err and len(err.strip().splitlines()) == 1
    assert list(folder.iterdir()) == []
