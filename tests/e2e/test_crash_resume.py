"""SIGKILL an embed run midway, resume it, and compare with an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.images import make_dataset
from tests.support.pausing import PAUSE_ENV, pausing_command, wait_until_stopped
from tests.support.progress import shards_done
from transfer_pipe.store import open_store

pytestmark = pytest.mark.kill  # runs SIGKILLed and resumed


def _command(data: Path, store: Path) -> list[str]:
    return [
        sys.executable, "-m", "transfer_pipe.app.cli", "embed", str(data), "--store", str(store),
        "--backbone", "tiny_test", "--layers", "penultimate,stages", "--image-size", "48",
        "--shard-size", "8", "--batch-size", "4", "--workers", "1",
    ]  # fmt: skip


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, prefect_api: str) -> None:
    data = tmp_path / "images"
    make_dataset(data, classes=4, per_class=60)  # 240 good images + 4 bad = 31 shards
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    killed_store = tmp_path / "killed"

    # The run stops itself once 5 shards are written, and is killed there: mid-run, on a
    # fast machine too (polling the store, a run once finished every shard before the kill).
    run = subprocess.Popen(
        pausing_command(*_command(data, killed_store)[3:]), env={**env, PAUSE_ENV: "5"},
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_until_stopped(run)
    os.killpg(run.pid, signal.SIGKILL)  # the CLI and its Dask workers, no cleanup
    run.wait()
    done_at_kill = shards_done(killed_store)
    assert 5 <= done_at_kill < 31
    at_kill = open_store(str(killed_store))
    stats_at_kill = at_kill.shard_stats(at_kill.list_keys()[0])
    embedded_before = int(stats_at_kill.loc[stats_at_kill["done"], "embedded"].sum())

    resumed = subprocess.run(
        [*_command(data, killed_store), "--json"], env=env, check=True, capture_output=True
    )
    summary = json.loads(resumed.stdout.decode().strip().splitlines()[-1])
    # No shard marked done is computed again; every other one is computed exactly once.
    assert summary["shards_already_done"] == done_at_kill
    assert summary["shards_computed"] == 31 - done_at_kill
    # The rows the killed run wrote are reused, counted from the store at the kill; only
    # the rest is embedded now. Mutation: finalize_embedding counting `embedded` from every
    # shard's stats instead of this run's results makes this fail (reused 0).
    assert (summary["reused"], summary["embedded"]) == (embedded_before, 240 - embedded_before)
    clean_store = tmp_path / "clean"
    subprocess.run(_command(data, clean_store), env=env, check=True, capture_output=True)

    killed, clean = open_store(str(killed_store)), open_store(str(clean_store))
    [key] = clean.list_keys()
    assert killed.list_keys() == [key]
    assert killed.status(key) == "complete"
    resumed_stats = killed.shard_stats(key)
    assert int(resumed_stats["done"].sum()) == 31
    for layer in clean.spec(key).layers:
        a, b = killed.load(key, layer=layer), clean.load(key, layer=layer)
        assert a.sample_ids.tolist() == b.sample_ids.tolist()
        np.testing.assert_array_equal(a.features, b.features)
    assert killed.failures(key).equals(clean.failures(key))
    assert len(clean.failures(key)) == 4
    assert not list(killed_store.rglob("*.partial")), "a killed write left a temporary file"


# --- a kill while the store is created, and while the run commits -----------------------

# Runs `transfer-pipe` and SIGKILLs its own process at one write of the store, chosen by
# what is written, not by a point the product code offers: zarr writes every file to a
# temporary "<name>.<uuid>.partial" and renames it into place, and the kill comes just
# before that rename, so the new content is on disk but not yet in place.
_KILLING_RUNNER = """
import json, os, pathlib, signal, sys

from transfer_pipe.app.cli import main
from transfer_pipe.store.zarr_store import ZarrFeatureStore

point = os.environ["KILL_AT"]
inside: set[str] = set()


def during(name, method):
    def wrapped(*args, **kwargs):
        inside.add(name)
        try:
            return method(*args, **kwargs)
        finally:
            inside.discard(name)
    return wrapped


ZarrFeatureStore.create = during("create", ZarrFeatureStore.create)
ZarrFeatureStore.mark_complete = during("mark_complete", ZarrFeatureStore.mark_complete)
rename = pathlib.Path.replace


def attributes(partial):
    return json.loads(partial.read_bytes()).get("attributes", {})


def killing_rename(self, target):
    target = pathlib.Path(target)
    metadata = target.name == "zarr.json"
    if point == "create-midway" and "create" in inside and metadata:
        die = target.parent.parent.name == "features"  # the first layer's array
    elif point == "create-commit" and "create" in inside and metadata:
        die = "spec" in attributes(self)
    elif point == "finalize-commit" and "mark_complete" in inside and metadata:
        die = attributes(self).get("status") == "complete"
    else:
        die = False
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(self, target)


pathlib.Path.replace = killing_rename
sys.exit(main(sys.argv[1:]))
"""
KILL_POINTS = ("create-midway", "create-commit", "finalize-commit")


def _kill_at(point: str, data: Path, store: Path, env: dict[str, str], work: Path) -> None:
    """The small embed into ``store``, SIGKILLed at ``point`` (``_KILLING_RUNNER``)."""
    runner = work / "killing_runner.py"
    runner.write_text(_KILLING_RUNNER)
    killed = subprocess.run(
        [sys.executable, str(runner), *_small_command(data, store)],
        env={**env, "KILL_AT": point}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]


def _small_command(data: Path, store: Path) -> list[str]:
    return [
        "embed", str(data), "--store", str(store), "--backbone", "tiny_test",
        "--layers", "penultimate,stages", "--shard-size", "4", "--workers", "1", "--json",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def small_uninterrupted(
    tmp_path_factory: pytest.TempPathFactory, prefect_api: str
) -> tuple[Path, Path]:
    """12 good images and 4 bad files (4 shards), embedded by one uninterrupted run."""
    root = tmp_path_factory.mktemp("crash-points")
    data, store = root / "images", root / "clean"
    make_dataset(data, classes=2, per_class=6)
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    command = [sys.executable, "-m", "transfer_pipe.app.cli", *_small_command(data, store)]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    return data, store


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_while_creating_or_committing_resumes_to_the_uninterrupted_result(
    point: str, small_uninterrupted: tuple[Path, Path], tmp_path: Path, prefect_api: str
) -> None:
    # Mutation: create() writing the spec first (not last) leaves a spec after the midway
    # kill; the rerun resumes into arrays that were never created and fails.
    # Mutation: status() counting a group without its spec as "incomplete" (not missing).
    # Mutation: create_group without overwrite=True: the rerun cannot recreate the group.
    # Mutation: recover() not removing *.partial leaves the killed commit's temporary file.
    # Mutation: finalize skipping mark_complete when no shard was computed leaves the
    # feature set incomplete after the finalize kill.
    data, clean_store = small_uninterrupted
    store = tmp_path / "killed"
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    _kill_at(point, data, store, env, tmp_path)
    assert list(store.rglob("*.partial")), "the kill did not come in the middle of a write"
    at_kill = open_store(str(store))
    [key] = open_store(str(clean_store)).list_keys()
    if point.startswith("create"):
        assert at_kill.list_keys() == [], "a half-created feature set counts as existing"
    else:
        assert at_kill.status(key) == "incomplete"
        assert bool(at_kill.shards_done(key).all())

    rerun = subprocess.run(
        [sys.executable, "-m", "transfer_pipe.app.cli", *_small_command(data, store)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["shards_computed"] == (0 if point == "finalize-commit" else 4)

    resumed, clean = open_store(str(store)), open_store(str(clean_store))
    assert resumed.list_keys() == [key]
    assert resumed.status(key) == "complete"
    assert resumed.row_table(key).equals(clean.row_table(key))
    for layer in clean.spec(key).layers:
        np.testing.assert_array_equal(
            resumed.load(key, layer=layer).features, clean.load(key, layer=layer).features
        )
    assert resumed.failures(key).equals(clean.failures(key))
    assert resumed.provenance(key)["counts"] == clean.provenance(key)["counts"]
    assert not list(store.rglob("*.partial")), "a killed write left a temporary file"


@pytest.fixture(scope="module")
def increment_uninterrupted(
    tmp_path_factory: pytest.TempPathFactory, prefect_api: str
) -> tuple[Path, Path, Path]:
    """A folder of 12 good images and 4 bad files embedded cold, then 6 more images in the
    same folder (2 new shards) embedded by one uninterrupted run over a copy of the cold
    store: (folder, cold store, increment store)."""
    root = tmp_path_factory.mktemp("increment-points")
    data, cold, store = root / "images", root / "cold", root / "increment"
    make_dataset(data, classes=2, per_class=6)
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    command = [sys.executable, "-m", "transfer_pipe.app.cli", *_small_command(data, cold)]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    make_dataset(data, classes=2, per_class=3, bad=False, start=6)
    shutil.copytree(cold, store)
    command = [sys.executable, "-m", "transfer_pipe.app.cli", *_small_command(data, store)]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    return data, cold, store


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_during_an_increment_resumes_to_the_uninterrupted_version(
    point: str,
    increment_uninterrupted: tuple[Path, Path, Path],
    tmp_path: Path,
    prefect_api: str,
) -> None:
    # Mutation seen failing: create() growing the lineage's arrays after it writes the
    # spec (create-midway: the resumed version writes beyond its arrays' end).
    # Mutation seen failing: finalize skipping mark_complete when no shard was computed
    # (finalize-commit: the version stays incomplete).
    data, cold, clean_store = increment_uninterrupted
    store = tmp_path / "killed"
    shutil.copytree(cold, store)
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    _kill_at(point, data, store, env, tmp_path)
    rerun = subprocess.run(
        [sys.executable, "-m", "transfer_pipe.app.cli", *_small_command(data, store)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    resumed, clean = open_store(str(store)), open_store(str(clean_store))
    assert resumed.list_keys() == clean.list_keys()
    [old] = open_store(str(cold)).list_keys()
    [key] = [k for k in clean.list_keys() if k != old]
    assert resumed.status(key) == "complete" and resumed.spec(key).parent == old
    assert resumed.spec(key).appended == clean.spec(key).appended == 6
    assert resumed.verify(key).ok and resumed.verify(old).ok
    for layer in clean.spec(key).layers:
        a, b = resumed.load(key, layer=layer), clean.load(key, layer=layer)
        assert a.sample_ids.tolist() == b.sample_ids.tolist()
        np.testing.assert_array_equal(a.features, b.features)
    assert resumed.failures(key).equals(clean.failures(key))
    # The old version's rows are shared, not copied: the store grew by the new rows only.
    assert (
        resumed.row_table(key)
        .set_index("sample_id")
        .loc[resumed.row_table(old)["sample_id"], "row"]
        .tolist()
        == resumed.row_table(old)["row"].tolist()
    )
