"""``transfer-pipe gc`` on real stores (issue 21, part 4): it removes old versions and the
shards only they hold, keeps what is referenced or being written, says what it freed,
changes nothing on a dry run or a bad command, and a kill at any moment leaves a store
that ``verify`` passes and the next ``gc`` finishes.

Each test names, in a comment, the mutation of the code it was seen failing on.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.images import write_image
from transfer_pipe.app.cli import main
from transfer_pipe.config import EmbedConfig, TrainConfig
from transfer_pipe.steps.embed import embed
from transfer_pipe.steps.train import train
from transfer_pipe.store import open_store
from transfer_pipe.store.layout import shard_objects

SHARD = 4


def night(data: Path, store: Path) -> str:
    config = EmbedConfig(
        source=str(data), store=str(store), backbone="tiny_test", shard_size=SHARD, workers=1
    )
    return embed(config).feature_set


def images(data: Path, classes: int, first: int, last: int) -> None:
    for i in range(first, last):
        write_image(data / f"c{i % classes}" / f"{i:03d}.png", seed=i)


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, list[str]]:
    """Three nights of one folder: 8 images (two shards: class c0's four, then c1's),
    then c0's four removed, then two added: the first shard only the first version
    needs."""
    data, store = tmp_path / "data", tmp_path / "store"
    images(data, 2, 0, 8)
    keys = [night(data, store)]
    for i in range(0, 8, 2):
        (data / "c0" / f"{i:03d}.png").unlink()
    keys.append(night(data, store))
    images(data, 2, 8, 10)
    keys.append(night(data, store))
    return store, keys


def gc(capsys: pytest.CaptureFixture[str], store: Path, *args: str) -> dict[str, object]:
    capsys.readouterr()
    assert main(["gc", "--store", str(store), "--json", *args]) == 0
    report: dict[str, object] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return report


def files(store: Path) -> dict[str, bytes]:
    skip = ("claims",)
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in store.rglob("*")
        if p.is_file() and not str(p.relative_to(store)).startswith(skip)
    }


def test_keep_last_removes_old_versions_and_the_shards_only_they_hold(
    history: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    # Mutation seen failing: _collect_lineage not dropping unneeded shards (store size
    # unchanged, shards_removed 0).
    store, keys = history
    before = open_store(str(store)).load(keys[-1], layer="penultimate")
    dry = gc(capsys, store, "--keep-last", "1", "--dry-run")
    assert open_store(str(store)).list_keys() == sorted(keys)  # a dry run removes nothing
    report = gc(capsys, store, "--keep-last", "1")
    assert sorted(report["removed"]) == sorted(keys[:2])  # type: ignore[arg-type]
    assert report["kept"] == [keys[2]]
    assert report["shards_removed"] == 1 == dry["shards_removed"]  # the first one only
    assert report["freed_bytes"] == dry["freed_bytes"] > 0
    assert report["store_bytes_after"] < report["store_bytes_before"]  # type: ignore[operator]
    reopened = open_store(str(store))
    assert reopened.list_keys() == [keys[2]]
    assert reopened.verify(keys[2]).ok
    after = reopened.load(keys[2], layer="penultimate")
    assert list(after.sample_ids) == list(before.sample_ids)
    np.testing.assert_array_equal(after.features, before.features)


def test_a_referenced_version_is_kept_with_its_rows_unless_forced(
    history: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    # Mutation seen failing: collect_garbage passing no references ({}) to collect.
    store, keys = history
    heads = TrainConfig(
        feature_set=keys[0], store=str(store), heads=("logreg",), c_values=2,
        val_fraction=0.25, test_fraction=0.25,
    )  # fmt: skip
    train(heads)
    report = gc(capsys, store, "--keep-last", "1")
    assert report["removed"] == [keys[1]] and report["shards_removed"] == 0
    assert open_store(str(store)).verify(keys[0]).ok
    report = gc(capsys, store, "--keep-last", "1", "--force")
    assert report["removed"] == [keys[0]] and report["shards_removed"] == 1


def test_a_lineage_being_written_is_skipped_and_named(
    history: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    # Mutation seen failing: collect not taking the lineage's claim (versions removed
    # under a running night).
    store, keys = history
    opened = open_store(str(store))
    lineage = opened.spec(keys[0]).lineage
    claim = opened.claim(lineage, done=lambda: False)
    assert claim is not None
    try:
        report = gc(capsys, store, "--keep-last", "1")
    finally:
        claim.release()
    assert report["removed"] == [] and lineage in report["skipped"][0]  # type: ignore[index]
    assert open_store(str(store)).list_keys() == sorted(keys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "no feature set nope"),
        (["--keep-last", "0"], "--keep-last must be at least 1"),
        (["KEY", "--keep-last", "2"], "not both"),
        (["--older-than", "-1"], "--older-than must be at least 0"),
    ],
)
def test_a_bad_gc_command_exits_2_naming_the_fix_and_changes_nothing(
    history: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    # Mutation seen failing: collect removing the known keys before refusing an unknown.
    store, keys = history
    before = files(store)
    args = [keys[0] if a == "KEY" else a for a in args]
    assert main(["gc", "--store", str(store), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert files(store) == before


def half_removed_shards(store: Path) -> list[str]:
    """Shards still marked written (their record there) with one of their objects gone:
    a later version would share their rows by content hash and read them as lost."""
    opened = open_store(str(store))
    half = []
    for lineage in opened.lineages():
        folder = store / "lineages" / lineage.lineage
        for shard in opened.records(lineage.lineage):  # type: ignore[attr-defined]
            # (No failure object is stored for a shard without failures: Zarr writes no
            # chunk that holds only its fill value, "".)
            wanted = [o for o in shard_objects(lineage, shard) if not o.startswith("failure/")]
            missing = [o for o in wanted if not (folder / o).exists()]
            half += [f"{lineage.lineage} shard {shard}: {name}" for name in missing]
    return half


# A gc that SIGKILLs itself just before its removal number KILL_AT (its claim's holder
# then no longer exists, as after a real kill).
KILLED_GC = """
import os, signal, sys
import fsspec.implementations.local as local
from transfer_pipe.app.cli import main
real, count = local.LocalFileSystem.rm_file, [0]
def rm_file(self, path):
    if count[0] == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    count[0] += 1
    real(self, path)
local.LocalFileSystem.rm_file = rm_file
sys.exit(main(sys.argv[1:]))
"""


def test_a_gc_killed_at_any_moment_leaves_a_verified_store_and_the_next_finishes(
    history: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Mutations seen failing: drop_shards removing a shard's rows before its record (a
    # kill in between leaves a "written" shard without rows: verify fails); drop_version
    # removing the folder before its marker.
    store, keys = history
    whole = tmp_path / "whole"
    shutil.copytree(store, whole)
    gc(capsys, whole, "--keep-last", "1")
    wanted = files(whole)
    for kill_at in itertools.count():  # each removal in turn, until the gc runs through
        copy = tmp_path / f"killed-{kill_at}"
        shutil.copytree(store, copy)
        killed = subprocess.run(
            [sys.executable, "-c", KILLED_GC, "gc", "--store", str(copy), "--keep-last", "1"],
            env={**os.environ, "KILL_AT": str(kill_at)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if killed.returncode == 0:
            assert files(copy) == wanted and kill_at > 4  # versions, then shards, killed
            break
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert open_store(str(copy)).verify(keys[2]).ok, kill_at
        assert not half_removed_shards(copy), kill_at  # no later night shares a lost row
        gc(capsys, copy, "--keep-last", "1")
        assert files(copy) == wanted, kill_at
