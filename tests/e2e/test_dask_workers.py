"""Shards and heads on a real Dask cluster: a `dask scheduler` process and two `dask worker`
processes, one of them a "GPU" worker (`--resources GPU=1`; this machine has no GPU, so
its forward passes run on the CPU, but the scheduler routes by the resource all the same).

What a user checks: every shard ran on the cluster's workers (the scheduler's task stream
says where), the features equal a local run's, each worker builds the model once, a CUDA
run goes to the GPU worker, and `transfer-pipe train` fits its heads there too."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client

from tests.support.dask_processes import DaskProcesses, assert_same_features
from tests.support.images import make_dataset
from transfer_pipe.app.cli import main
from transfer_pipe.cluster import GPU, run_on_cluster
from transfer_pipe.features import embedder
from transfer_pipe.store import open_store

pytestmark = [pytest.mark.usefixtures("prefect_api")]

SHARD_SIZE = 5
SHARDS = 7  # 30 good images + 4 bad files, 5 per shard


# --- run inside the worker processes (imported there by name) --------------------------

_builds: list[str] = []


def _count_model_builds() -> None:
    """Forget this process's models, and note every model built from now on."""
    embedder._cached_embedder.cache_clear()
    build = embedder.Embedder.__init__

    def noting(self: embedder.Embedder, config: embedder.EmbedderConfig) -> None:
        _builds.append(config.backbone)
        build(self, config)

    embedder.Embedder.__init__ = noting  # type: ignore[method-assign]


def _model_builds() -> list[str]:
    return list(_builds)


def _wait_for_the_driver(flag: str) -> bool:
    """Send the driver one progress message, then wait (at most 30 s) for the file that
    the driver's handler creates on receiving it: True when it came while this task ran."""
    from transfer_pipe.cluster import send_to_driver

    send_to_driver({"epoch": 1, "note": "sent from the worker"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if Path(flag).exists():
            return True
        time.sleep(0.1)
    return False


# --- the test side ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(shared_cluster: DaskProcesses) -> Iterator[tuple[DaskProcesses, Client]]:
    """The session's cluster (a scheduler, one plain worker and one worker advertising a
    GPU, as a user starts them); the client is the test's own (to read the task stream)."""
    with Client(shared_cluster.address) as client:
        client.get_task_stream()  # starts the scheduler's record of where tasks ran
        yield shared_cluster, client


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("dask-workers") / "images"
    make_dataset(data, classes=3, per_class=10)
    return data


def embed(images: Path, store: Path, *options: str) -> str:
    """Embed ``images`` with the tiny backbone; returns the feature set's key."""
    args = ["embed", str(images), "--store", str(store), "--backbone", "tiny_test"]
    layers = ["--layers", "penultimate,stages", "--shard-size", str(SHARD_SIZE)]
    assert main([*args, *layers, *options]) == 0
    [key] = open_store(str(store)).list_keys()
    return key


def ran_where(client: Client, since: float, prefix: str) -> dict[str, str]:
    """Task key -> address of the worker that ran it, for the ``prefix`` tasks that finished
    on the cluster since ``since``."""
    stream: list[dict[str, Any]] = client.get_task_stream(start=since)
    return {
        str(t["key"]): t["worker"]
        for t in stream
        if str(t["key"]).startswith(prefix) and t.get("status") == "OK"
    }


def worker_addresses(client: Client, *, gpu: bool | None = None) -> set[str]:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {
        address
        for address, worker in workers.items()
        if gpu is None or (GPU in (worker.get("resources") or {})) == gpu
    }


@pytest.fixture(scope="module")
def local_run(images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The same images embedded by the in-process worker: what the cluster must equal."""
    store = tmp_path_factory.mktemp("local") / "store"
    return store, embed(images, store, "--workers", "1", "--device", "cpu")


def test_dask_address_option_runs_every_shard_on_the_workers_with_local_features(
    cluster: tuple[DaskProcesses, Client],
    images: Path,
    local_run: tuple[Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Mutation seen failing: dask_client ignoring plan.address (always a LocalCluster):
    # no shard reaches the scheduler's task stream.
    processes, client = cluster
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    since = time.time()
    key = embed(images, tmp_path / "store", "--dask-address", processes.address, "--device", "cpu")

    where = ran_where(client, since, f"shard-{key}-")
    assert len(where) == SHARDS
    assert set(where.values()) <= worker_addresses(client)
    assert_same_features(tmp_path / "store", *local_run)


def test_scheduler_address_variable_runs_every_shard_on_the_workers(
    cluster: tuple[DaskProcesses, Client],
    images: Path,
    local_run: tuple[Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Mutation seen failing: plan_cluster ignoring DASK_SCHEDULER_ADDRESS: the shards run
    # on a LocalCluster of the run's own, and the task stream holds none of them.
    processes, client = cluster
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", processes.address)
    since = time.time()
    key = embed(images, tmp_path / "store", "--device", "cpu")

    assert len(ran_where(client, since, f"shard-{key}-")) == SHARDS
    assert_same_features(tmp_path / "store", *local_run)


def test_each_worker_builds_the_model_once_across_shards_and_runs(
    cluster: tuple[DaskProcesses, Client], tmp_path: Path
) -> None:
    # Mutation seen failing: get_embedder returning Embedder(config) (no per-process
    # cache): the worker builds the model once per batch, 6 times for 6 shards, not once.
    processes, client = cluster
    client.run(_count_model_builds)
    since = time.time()
    for name in ("first", "second"):  # two sources, the same backbone and layers
        make_dataset(tmp_path / name, classes=2, per_class=6, bad=False, start=len(name))
        store = tmp_path / f"{name}-store"
        key = embed(tmp_path / name, store, "--dask-address", processes.address)
        assert len(ran_where(client, since, f"shard-{key}-")) == 3

    builds = client.run(_model_builds)
    assert sum(len(b) for b in builds.values()) >= 1
    assert all(b in ([], ["tiny_test"]) for b in builds.values()), builds


def test_a_cuda_run_asks_for_the_gpu_and_runs_only_on_the_gpu_worker(
    cluster: tuple[DaskProcesses, Client],
    images: Path,
    local_run: tuple[Path, str],
    tmp_path: Path,
) -> None:
    # Mutation seen failing: task_resources returning {} for "auto" on a cluster that
    # offers a GPU: shards land on the plain worker too.
    processes, client = cluster
    since = time.time()
    key = embed(images, tmp_path / "store", "--dask-address", processes.address)  # auto
    where = ran_where(client, since, f"shard-{key}-")
    assert len(where) == SHARDS
    assert set(where.values()) == worker_addresses(client, gpu=True)
    assert_same_features(tmp_path / "store", *local_run)  # no GPU here: auto is the CPU


def test_train_fits_its_heads_on_the_cluster_with_the_local_result(
    cluster: tuple[DaskProcesses, Client],
    local_run: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Mutation seen failing: _fit_here_or_on_cluster always fitting here (on the driver):
    # no head task reaches the cluster.
    processes, client = cluster
    store, key = local_run
    train = ["train", key, "--store", str(store), "--heads", "logreg,ridge", "--json"]
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", processes.address)
    since = time.time()
    assert main([*train, "--refit"]) == 0
    where = ran_where(client, since, "head-")
    assert len(where) == 2
    assert set(where.values()) == worker_addresses(client, gpu=True)  # device auto
    on_cluster = capsys.readouterr().out

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    assert main([*train, "--refit"]) == 0
    here = capsys.readouterr().out
    assert len(ran_where(client, since, "head-")) == 2, "the local run used the cluster"
    assert _metrics_table(on_cluster) == _metrics_table(here)

    # --dask-address beside a feature-set key (no variable): the heads fit there too.
    # Mutation seen failing: run_config refusing it ("--dask-address choose what to
    # embed; feature set ... already fixes them"), as it did before.
    since = time.time()
    assert main([*train, "--refit", "--dask-address", processes.address]) == 0
    assert len(ran_where(client, since, "head-")) == 2
    assert _metrics_table(capsys.readouterr().out) == _metrics_table(here)


def _metrics_table(output: str) -> dict[str, tuple[Any, ...]]:
    """Per head of the run's ``--json`` summary: its ids, test metrics and chosen
    hyperparameters (not its fit time, which differs)."""
    heads = json.loads(output.strip().splitlines()[-1])["heads"]
    return {
        name: (h["head_ids"], h["accuracy"], h["macro_f1"], h["ece"], h["chosen"])
        for name, h in heads.items()
    }


def test_finetune_trains_on_the_cluster_and_saves_to_the_store(
    cluster: tuple[DaskProcesses, Client],
    local_run: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Mutation seen failing: run_finetune ignoring the Dask address (training on the
    # driver): no fine-tuning task reaches the cluster.
    processes, client = cluster
    store, key = local_run
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    since = time.time()
    args = ["finetune", key, "--store", str(store), "--policy", "top-1", "--epochs", "1"]
    address = ["--dask-address", processes.address]  # beside a key: the run's own option
    assert main([*args, *address, "--batch-size", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    where = ran_where(client, since, "finetune-")
    assert list(where) == [f"finetune-{result['run_id']}"]
    assert set(where.values()) == worker_addresses(client, gpu=True)  # device auto
    assert Path(result["checkpoint"]).exists()  # written by the worker, into the store
    assert main(["finetuned", "--store", str(store), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in listed] == [result["run_id"]]


def test_finetune_on_the_cluster_passes_each_epoch_on_once(
    cluster: tuple[DaskProcesses, Client], local_run: tuple[Path, str], tmp_path: Path
) -> None:
    # Each epoch reaches the driver's callback once, in order: sent by the worker as it
    # ends it (how that arrives while the task runs: the test below), and not repeated
    # from the history when the task returns. Mutation seen failing: the history replayed
    # whole after the task (no `row["epoch"] > seen` filter): epochs [1, 2, 1, 2].
    from transfer_pipe.config import FinetuneConfig
    from transfer_pipe.steps.finetune import ensure_probe, prepare_finetune, run_finetune

    processes, _ = cluster
    store = tmp_path / "store"
    shutil.copytree(local_run[0], store)
    config = FinetuneConfig(
        feature_set=local_run[1], store=str(store), policy="top-1", epochs=2, batch_size=8,
        dask_address=processes.address,
    )  # fmt: skip
    plan = prepare_finetune(config, local_run[1])
    epochs: list[int] = []
    run_finetune(plan, ensure_probe(plan), on_epoch=lambda row: epochs.append(row["epoch"]))
    assert epochs == [1, 2]


def test_a_task_on_the_cluster_sends_progress_to_the_driver_while_it_runs(
    cluster: tuple[DaskProcesses, Client], tmp_path: Path
) -> None:
    # Mutation seen failing: run_on_cluster waiting on future.result() and passing the
    # events on only after it (progress when the task returns): the task waited its 30 s
    # for the driver's answer in vain and returned False.
    processes, client = cluster
    flag, received = tmp_path / "received", []

    def on_event(message: Any) -> None:
        received.append(message)
        flag.touch()

    key = f"progress-{tmp_path.name}"
    answered = run_on_cluster(
        processes.address, "cpu", key, _wait_for_the_driver, str(flag), on_event=on_event
    )
    assert answered is True
    [message] = received
    assert message.pop("worker") in worker_addresses(client)  # the scheduler says who sent it
    assert message == {"epoch": 1, "note": "sent from the worker"}
