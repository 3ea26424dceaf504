"""Faults of a real Dask cluster (`dask scheduler` and `dask worker` processes) during an
embed run, as a user meets them: a worker process killed in the middle of a shard, the
scheduler lost mid-run, and a run that asks for a GPU of a cluster that has none."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed import Client

from tests.support.dask_processes import DaskProcesses, assert_same_features
from tests.support.images import make_dataset
from transfer_pipe.app.cli import main
from transfer_pipe.features.embedder import Embedder
from transfer_pipe.store import open_store

pytestmark = [pytest.mark.cluster, pytest.mark.kill, pytest.mark.usefixtures("prefect_api")]

SHARDS = 5  # 16 good images + 4 bad files, 4 per shard
FORWARD_S = 1.5  # each forward pass (one per shard) takes this long in the workers


# --- run inside the worker processes (imported there by name) --------------------------


def _slow_forward(seconds: float) -> None:
    """Make every frozen forward pass of this process take ``seconds`` longer, so that a
    shard is surely in progress when the test strikes."""
    forward = Embedder._forward  # every forward pass: floats or pixels in

    def slow(self: Embedder, batch: torch.Tensor) -> dict[str, np.ndarray]:
        time.sleep(seconds)
        return forward(self, batch)

    Embedder._forward = slow  # type: ignore[method-assign]


# --- the test side ----------------------------------------------------------------------


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[DaskProcesses]:
    folder = tmp_path / "dask"
    folder.mkdir()
    cluster = DaskProcesses(folder)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("cluster-faults") / "images"
    make_dataset(data, classes=2, per_class=8)
    return data


@pytest.fixture(scope="module")
def local_run(images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The same images embedded without a cluster fault: what every faulty run must equal."""
    store = tmp_path_factory.mktemp("local") / "store"
    assert main(embed_args(images, store, "--workers", "1")) == 0
    [key] = open_store(str(store)).list_keys()
    return store, key


def embed_args(images: Path, store: Path, *options: str) -> list[str]:
    args = ["embed", str(images), "--store", str(store), "--backbone", "tiny_test"]
    layers = ["--layers", "penultimate,stages", "--shard-size", "4"]
    return [*args, *layers, "--device", "cpu", *options]


def in_background(action: Callable[[], None]) -> threading.Thread:
    """Run ``action`` beside the embed run (which runs in this, the main, thread)."""
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def wait_for(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the embed run never reached the point to strike")
        time.sleep(0.1)


def test_a_worker_killed_mid_shard_has_its_shard_rerun_elsewhere_and_the_store_complete(
    processes: DaskProcesses, images: Path, local_run: tuple[Path, str], tmp_path: Path
) -> None:
    # Mutation seen failing: compute_shards pinning the shards to one worker (workers=[the
    # first]) instead of asking for resources: the killed worker's shard can run nowhere
    # else, and the run waits forever (here: until the test's timeout).
    processes.start_scheduler()
    workers = [processes.start_worker(nanny=False) for _ in range(2)]
    processes.wait_for_workers(2)
    struck: dict[str, object] = {}
    with Client(processes.address) as client:
        client.run(_slow_forward, FORWARD_S)
        client.get_task_stream()  # start the scheduler's record of where tasks ran
        pids = client.run(os.getpid)
        since = time.time()

        def kill_a_worker_mid_shard() -> None:
            busy: dict[str, list[str]] = {}

            def a_shard_started() -> bool:
                busy.update(client.processing())
                return any(keys for keys in busy.values())

            wait_for(a_shard_started)
            time.sleep(FORWARD_S / 3)  # inside the shard's forward pass
            address = next(a for a, keys in busy.items() if keys)
            struck.update(address=address, shards=list(busy[address]))
            os.kill(pids[address], signal.SIGKILL)  # a worker this test started

        killer = in_background(kill_a_worker_mid_shard)
        args = embed_args(images, tmp_path / "store", "--dask-address", processes.address)
        assert main(args) == 0
        killer.join()
        stream = client.get_task_stream(start=since)

    assert sum(w.poll() is not None for w in workers) == 1, "no worker was killed"
    ran = {str(t["key"]): t["worker"] for t in stream if t.get("status") == "OK"}
    store, key = local_run
    shards = [k for k in ran if k.startswith(f"shard-{key}-")]
    assert len(shards) == SHARDS
    for shard in struck["shards"]:  # type: ignore[attr-defined]
        assert ran[shard] != struck["address"], f"{shard} was not rerun on the other worker"
    assert_same_features(tmp_path / "store", store, key)


def test_a_lost_scheduler_fails_the_run_clearly_and_the_next_run_resumes(
    processes: DaskProcesses,
    images: Path,
    local_run: tuple[Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Mutation seen failing: _shard_result without its lost-scheduler branch: the run
    # still fails, but with a traceback ending in "FutureCancelledError", not a line
    # naming the scheduler.
    store, key = local_run
    processes.start_scheduler()
    processes.start_worker(nanny=False)
    processes.wait_for_workers(1)
    with Client(processes.address) as client:
        client.run(_slow_forward, FORWARD_S)
    address = processes.address
    struck_at: list[float] = []

    def kill_the_scheduler_after_two_shards() -> None:
        def two_shards_written() -> bool:
            target = open_store(str(tmp_path / "store"))
            return key in target.list_keys() and target.shards_done(key).sum() >= 2

        wait_for(two_shards_written)
        processes.kill_scheduler()
        struck_at.append(time.monotonic())

    killer = in_background(kill_the_scheduler_after_two_shards)
    capsys.readouterr()
    assert main(embed_args(images, tmp_path / "store", "--dask-address", address)) == 2
    failed_after = time.monotonic() - struck_at[0]
    killer.join()
    err = capsys.readouterr().err
    assert f"lost the Dask scheduler at {address}" in err
    assert "run again to resume" in err
    assert failed_after < 60, "the run hung on the lost scheduler"
    done = int(open_store(str(tmp_path / "store")).shards_done(key).sum())
    assert 2 <= done < SHARDS

    processes.stop()
    processes.start_scheduler()
    processes.start_worker(nanny=False)
    processes.wait_for_workers(1)
    args = embed_args(images, tmp_path / "store", "--dask-address", processes.address, "--json")
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # (The worker may finish its shard after the scheduler is gone: written, so kept.)
    assert summary["shards_already_done"] >= done
    assert summary["shards_computed"] == SHARDS - summary["shards_already_done"] > 0
    assert_same_features(tmp_path / "store", store, key)


def test_a_cuda_run_on_a_cluster_without_a_gpu_worker_fails_in_seconds(
    processes: DaskProcesses, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Mutation seen failing: cluster_resources not calling check_resources: the shards
    # wait for a GPU worker forever (here: until the test's timeout).
    processes.start_scheduler()
    processes.start_worker(nanny=False)
    processes.wait_for_workers(1)
    args = embed_args(images, tmp_path / "store", "--dask-address", processes.address)
    capsys.readouterr()
    started = time.monotonic()
    assert main([*args, "--device", "cuda"]) == 2
    assert time.monotonic() - started < 60
    err = capsys.readouterr().err
    assert f"no worker of the Dask cluster at {processes.address} offers the GPU resource" in err
    assert "--resources GPU=1" in err and "--device cpu" in err
