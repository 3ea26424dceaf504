"""Shards on an existing Dask cluster of worker processes, as the docs promise:
`DASK_SCHEDULER_ADDRESS` or `--dask-address` sends every shard task to that scheduler,
its process workers write the same features the in-process worker writes, and torch
(and, for heads, BLAS) inside a worker process use that worker's share of the cores."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import threadpoolctl
import torch
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from tests.support.images import make_dataset
from tests.support.synthetic import blobs, task_data
from transfer_pipe.app.cli import main
from transfer_pipe.features.embedder import Embedder
from transfer_pipe.heads.linear import LBFGSLinearClassifier
from transfer_pipe.heads.options import ProtocolOptions
from transfer_pipe.heads.protocol import fit_head
from transfer_pipe.heads.tasks import TaskData
from transfer_pipe.store import open_store

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("prefect_api")]

# The worker processes are told the machine has this many cores, so that "the worker's
# share" (cores // worker threads = 4) differs both from the whole machine (8) and from
# the 1 thread Dask's nanny gives a worker process by default (OMP_NUM_THREADS=1).
PRETENDED_CORES = 8
WORKER_THREADS = 2
SHARE = PRETENDED_CORES // WORKER_THREADS
SHARDS = 4  # 12 good images + 4 bad files, 4 per shard


# --- run inside the worker processes (imported there by name) --------------------------

_seen_threads: list[int] = []


def _pretend_cores(cores: int) -> None:
    os.cpu_count = lambda: cores


def _record_forward_threads() -> None:
    """Note torch's intra-op threads at every frozen forward pass of this process."""
    forward = Embedder._forward  # every forward pass: floats or pixels in

    def recording(self: Embedder, batch: torch.Tensor) -> dict[str, np.ndarray]:
        _seen_threads.append(torch.get_num_threads())
        return forward(self, batch)

    Embedder._forward = recording  # type: ignore[method-assign]


def _threads_seen() -> list[int]:
    return list(_seen_threads)


def _fit_logreg_noting_threads(data: TaskData) -> dict[str, Any]:
    """Fit the logreg head here; note torch's and every native pool's threads at each
    L-BFGS fit, and torch's threads once the head is fitted."""
    seen: list[tuple[int, dict[str, int]]] = []
    fit = LBFGSLinearClassifier.fit

    def noting(
        self: LBFGSLinearClassifier, X: Any, y: Any, init: Any = None
    ) -> LBFGSLinearClassifier:
        pools = {p["internal_api"]: p["num_threads"] for p in threadpoolctl.threadpool_info()}
        seen.append((torch.get_num_threads(), pools))
        return fit(self, X, y, init=init)

    LBFGSLinearClassifier.fit = noting  # type: ignore[method-assign]
    try:
        before = torch.get_num_threads()
        fitted = fit_head("logreg", data, ProtocolOptions(bootstrap=10))
        return {
            "chosen": fitted.chosen,
            "accuracy": fitted.metrics.accuracy,
            "seen": seen,
            "before": before,
            "after": torch.get_num_threads(),
        }
    finally:
        LBFGSLinearClassifier.fit = fit  # type: ignore[method-assign]


# --- the test side ----------------------------------------------------------------------


class ShardLog(SchedulerPlugin):
    """The shard tasks a scheduler saw finish."""

    name = "shard-log"

    def __init__(self) -> None:
        self.finished: list[str] = []

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "memory" and str(key).startswith("shard-"):
            self.finished.append(str(key))


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[LocalCluster, Client]]:
    """An existing cluster of one worker process with two threads, as a user starts one.
    Not the session's shared cluster: the share of the cores is only told apart from the
    whole machine on a worker of two threads, and the shard log needs the scheduler in
    this process."""
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=WORKER_THREADS,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(_pretend_cores, PRETENDED_CORES)
        client.run(_record_forward_threads)
        yield cluster, client


@pytest.fixture
def shard_log(cluster: tuple[LocalCluster, Client]) -> Iterator[ShardLog]:
    scheduler = cluster[0].scheduler
    assert scheduler is not None  # a LocalCluster's scheduler lives in this process
    log = ShardLog()
    scheduler.add_plugin(log)
    yield log
    scheduler.remove_plugin(name=log.name)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("dask-clusters") / "images"
    make_dataset(data, classes=2, per_class=6)
    return data


def embed(images: Path, store: Path, *options: str) -> None:
    args = ["embed", str(images), "--store", str(store), "--backbone", "tiny_test"]
    layers = ["--layers", "penultimate,stages", "--shard-size", "4"]
    assert main([*args, *layers, *options]) == 0


def test_dask_scheduler_address_runs_every_shard_there_with_the_same_features(
    cluster: tuple[LocalCluster, Client],
    shard_log: ShardLog,
    images: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Mutation: plan_cluster ignoring DASK_SCHEDULER_ADDRESS runs the shards on a
    # LocalCluster of its own, and none reach this scheduler.
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster[0].scheduler_address)
    embed(images, tmp_path / "remote")
    assert len(shard_log.finished) == SHARDS
    assert len(set(shard_log.finished)) == SHARDS

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    embed(images, tmp_path / "local", "--workers", "1")
    assert len(shard_log.finished) == SHARDS, "the in-process run used the external cluster"

    remote, local = open_store(str(tmp_path / "remote")), open_store(str(tmp_path / "local"))
    [key] = local.list_keys()
    assert remote.list_keys() == [key]
    assert remote.status(key) == "complete"
    for layer in local.spec(key).layers:
        a, b = remote.load(key, layer=layer), local.load(key, layer=layer)
        assert a.sample_ids.tolist() == b.sample_ids.tolist()
        np.testing.assert_array_equal(a.features, b.features)
    assert remote.failures(key).equals(local.failures(key))


def test_dask_address_option_caps_torch_threads_to_the_workers_share(
    cluster: tuple[LocalCluster, Client],
    shard_log: ShardLog,
    images: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Mutation: dropping use_threads in produce_shard leaves the nanny's 1 thread; a
    # threads_per_task that ignores the worker's threads gives all 8 pretended cores.
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    client = cluster[1]
    seen_before = len(next(iter(client.run(_threads_seen).values())))
    embed(images, tmp_path / "store", "--dask-address", cluster[0].scheduler_address)
    assert len(shard_log.finished) == SHARDS

    [seen] = client.run(_threads_seen).values()
    assert len(seen) > seen_before, "no forward pass ran in the worker process"
    assert set(seen[seen_before:]) == {SHARE}


def test_heads_in_a_dask_process_worker_use_its_share_of_the_cores(
    cluster: tuple[LocalCluster, Client],
) -> None:
    # Mutation: a threads_per_task that ignores the worker's threads gives 8, not 4;
    # threadpool_limits(limits=None) leaves BLAS and OpenMP at the nanny's 1; dropping
    # the restore of the previous count leaks the share into the thread's later tasks.
    # (Dropping only torch.set_num_threads(threads) is not caught, and cannot be: torch
    # reads its threads from the OpenMP pool that threadpool_limits already caps.)
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3.0, size=(3, 8))
    data = task_data(blobs(rng, centers, 30), blobs(rng, centers, 10), blobs(rng, centers, 10))
    in_worker = cluster[1].submit(_fit_logreg_noting_threads, data, pure=False).result()

    assert in_worker["seen"], "the logreg head fitted nothing"
    assert {torch_threads for torch_threads, _ in in_worker["seen"]} == {SHARE}
    native = {n for _, pools in in_worker["seen"] for n in pools.values()}
    assert native == {SHARE}, in_worker["seen"][0][1]
    assert in_worker["after"] == in_worker["before"]

    here = fit_head("logreg", data, ProtocolOptions(bootstrap=10))
    assert in_worker["chosen"] == here.chosen
    assert in_worker["accuracy"] == here.metrics.accuracy
