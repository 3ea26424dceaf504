"""SIGKILL an embed run midway, resume it, and compare with an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

from tests.images import make_dataset
from transfer_pipe.store import open_store


def _command(data: Path, store: Path) -> list[str]:
    return [
        sys.executable, "-m", "transfer_pipe.cli", "embed", str(data), "--store", str(store),
        "--backbone", "tiny_test", "--layers", "penultimate,stages", "--image-size", "48",
        "--shard-size", "8", "--batch-size", "4", "--workers", "1",
    ]  # fmt: skip


def _shards_done(store: Path) -> int:
    try:
        sets = zarr.open_group(str(store), mode="r")["feature_sets"]
        return sum(int(np.asarray(g["shard_done"][:]).sum()) for _, g in sets.groups())  # type: ignore[union-attr]
    except (KeyError, FileNotFoundError, ValueError):
        return 0


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, prefect_api: str) -> None:
    data = tmp_path / "images"
    make_dataset(data, classes=4, per_class=60)  # 240 good images + 4 bad = 31 shards
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    killed_store = tmp_path / "killed"

    run = subprocess.Popen(
        _command(data, killed_store), env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while _shards_done(killed_store) < 5:
        assert run.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # the CLI and its Dask workers, no cleanup
    run.wait()
    done_at_kill = _shards_done(killed_store)
    assert 5 <= done_at_kill < 31

    resumed = subprocess.run(
        [*_command(data, killed_store), "--json"], env=env, check=True, capture_output=True
    )
    summary = json.loads(resumed.stdout.decode().strip().splitlines()[-1])
    # No shard marked done is computed again; every other one is computed exactly once.
    assert summary["shards_already_done"] == done_at_kill
    assert summary["shards_computed"] == 31 - done_at_kill
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
