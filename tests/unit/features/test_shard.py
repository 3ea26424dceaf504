"""A shard in a worker, without Dask or Prefect: decode, embed, write, record failures."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.images import make_dataset
from transfer_pipe import steps
from transfer_pipe.backbones import get_backbone
from transfer_pipe.backbones.taps import LayerTap
from transfer_pipe.config import EmbedConfig
from transfer_pipe.data.read import read_image
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.features.embedder import get_embedder
from transfer_pipe.features.tasks import EmbedderConfig, run_shard
from transfer_pipe.run_context import open_context
from transfer_pipe.store import open_store


def _config(tmp_path: Path, **overrides: object) -> EmbedConfig:
    values: dict[str, object] = {
        "source": str(tmp_path / "data"),
        "store": str(tmp_path / "store"),
        "backbone": "tiny_test",
        "shard_size": 6,
        "batch_size": 4,
    }
    values.update(overrides)
    return EmbedConfig(**values)  # type: ignore[arg-type]


def test_shard_matches_a_direct_forward_pass_and_records_failures(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", classes=3, per_class=4)  # 12 good + 4 bad
    plan = steps.prepare_embedding(_config(tmp_path))
    assert plan.status_before == "missing" and len(plan.tasks) == plan.spec.n_shards == 3
    results = [run_shard(task) for task in plan.tasks]
    assert sum(r.embedded for r in results) == 12
    assert sum(r.failed for r in results) == 4

    store = open_store(str(tmp_path / "store"))
    key = plan.spec.key
    loaded = store.load(key)
    spec = get_backbone("tiny_test")
    tap = LayerTap(spec.build(), ["penultimate"])
    uris = dict(zip(store.row_table(key)["sample_id"], store.row_table(key)["uri"], strict=True))
    batch = torch.stack([spec.preprocessing(read_image(uris[s])) for s in loaded.sample_ids])
    with torch.inference_mode():
        direct = tap(batch)["penultimate"].numpy()
    np.testing.assert_allclose(loaded.features, direct, rtol=1e-5, atol=1e-6)


def test_resumed_plan_skips_done_shards_and_reuse_copies_rows(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", classes=2, per_class=6, bad=False)
    config = _config(tmp_path)
    with open_context():  # one run's context: the resumed plan keeps the claim it holds
        plan = steps.prepare_embedding(config)
        run_shard(plan.tasks[0])
        resumed = steps.prepare_embedding(config)
        assert resumed.status_before == "incomplete"
        assert [t.shard for t in resumed.tasks] == [1]
        run_shard(resumed.tasks[0])
        summary = steps.finalize_embedding(resumed, [])
        assert summary.status == "complete"

    # The same images in another folder: a new feature set (the uris differ) whose rows
    # are all found by content hash, so nothing is computed.
    shutil.copytree(tmp_path / "data", tmp_path / "copy")
    copy = steps.prepare_embedding(replace(config, source=str(tmp_path / "copy"), shard_size=5))
    assert copy.spec.key != plan.spec.key
    assert sum(len(t.reuse) for t in copy.tasks) == 12
    results = [run_shard(t) for t in copy.tasks]
    assert sum(r.embedded for r in results) == 0
    store = open_store(config.store)
    np.testing.assert_array_equal(
        store.load(copy.spec.key).features, store.load(plan.spec.key).features
    )


def _count_model_loads() -> None:
    """Run inside a Dask worker: count the Embedders built there (each loads a model)."""
    from transfer_pipe.features import embedder

    build = embedder.Embedder.__init__

    def counting(self: embedder.Embedder, config: EmbedderConfig) -> None:
        embedder.model_loads = getattr(embedder, "model_loads", 0) + 1  # type: ignore[attr-defined]
        build(self, config)

    embedder.Embedder.__init__ = counting  # type: ignore[method-assign]


def _model_loads() -> int:
    from transfer_pipe.features import embedder

    return int(getattr(embedder, "model_loads", 0))


@pytest.mark.cluster
def test_the_model_is_loaded_once_per_dask_worker_process(tmp_path: Path) -> None:
    """Four shards, one batch each, on a Dask worker process of two threads: one load.
    Mutation: get_embedder building ``Embedder(config)`` on every call (no per-process
    cache) makes this count 4 loads and fail."""
    from distributed import Client, LocalCluster

    make_dataset(tmp_path / "data", classes=2, per_class=8, bad=False)  # 16 images
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        config = _config(tmp_path, shard_size=4, dask_address=cluster.scheduler_address)
        plan = steps.prepare_embedding(config)
        client.run(_count_model_loads)
        results = steps.compute_shards(plan)
        loads = client.run(_model_loads)
        worker_pids = client.run(os.getpid)
    assert len(results) == 4 and sum(r.embedded for r in results) == 16
    assert os.getpid() not in worker_pids.values()  # the shards ran in another process
    assert list(loads.values()) == [1]


def test_cpu_repeats_numbers_exactly_and_runs_bf16_when_asked() -> None:
    preprocessing = get_backbone("tiny_test").preprocessing
    batch = torch.rand(5, 3, preprocessing.image_size, preprocessing.image_size)
    plain = EmbedderConfig("tiny_test", None, ("penultimate",), preprocessing, device="cpu")
    half = replace(plain, autocast="bf16")
    single = get_embedder(plain)(batch)["penultimate"]
    assert single.dtype == np.float32
    np.testing.assert_array_equal(get_embedder(plain)(batch.clone())["penultimate"], single)
    bf16 = get_embedder(half)(batch)["penultimate"]
    assert bf16.dtype == np.float32  # computed in bfloat16, returned as float32
    assert not np.array_equal(bf16, single)
    np.testing.assert_allclose(bf16, single, rtol=0.05, atol=0.02)
    np.testing.assert_array_equal(get_embedder(half)(batch.clone())["penultimate"], bf16)
    with pytest.raises(TransferPipeError, match="fp16 needs a CUDA device"):
        get_embedder(replace(plain, autocast="fp16"))


def test_a_shard_mixing_reused_new_and_bad_rows_puts_each_in_its_row(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", classes=2, per_class=3, bad=False)
    config = _config(tmp_path, shard_size=20)
    first = steps.prepare_embedding(config)
    run_shard(first.tasks[0])
    # The same images plus new ones and a bad file, all in one shard: reused rows sit
    # between embedded and failed ones, so every row must land at its own offset.
    shutil.copytree(tmp_path / "data", tmp_path / "grown")
    make_dataset(tmp_path / "grown", classes=2, per_class=2, bad=False, start=3)
    (tmp_path / "grown" / "class0" / "broken.png").write_bytes(b"not an image")
    grown = steps.prepare_embedding(replace(config, source=str(tmp_path / "grown")))
    [task] = grown.tasks
    result = run_shard(task)
    assert (result.reused, result.embedded, result.failed) == (6, 4, 1)

    store = open_store(config.store)
    table = store.row_table(grown.spec.key)
    # Mutation: dropping .placed(offsets) in the shard writes new rows over reused ones.
    assert table.loc[table["failure"] != "", "sample_id"].tolist() == ["class0/broken.png"]
    loaded = store.load(grown.spec.key)
    spec = get_backbone("tiny_test")
    tap = LayerTap(spec.build(), ["penultimate"])
    uris = dict(zip(table["sample_id"], table["uri"], strict=True))
    batch = torch.stack([spec.preprocessing(read_image(uris[s])) for s in loaded.sample_ids])
    with torch.inference_mode():
        direct = tap(batch)["penultimate"].numpy()
    np.testing.assert_allclose(loaded.features, direct, rtol=1e-5, atol=1e-6)


def test_no_object_is_written_by_two_shard_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every object a shard task writes is its own lineage shard's: of a cold run and of
    an increment, no two tasks write the same object (a Zarr shard written by two would
    be a read-modify-write race), and the driver writes none of them."""
    # Mutation seen failing: write_shard writing its record into the previous shard's
    # object (shard s - 1's record written by two tasks).
    import zarr.storage

    writes: list[tuple[int | None, str]] = []
    current: list[int | None] = [None]
    real_set = zarr.storage.LocalStore.set

    async def recording_set(self: zarr.storage.LocalStore, key: str, value: object) -> None:
        writes.append((current[0], key))
        await real_set(self, key, value)  # type: ignore[arg-type]

    monkeypatch.setattr(zarr.storage.LocalStore, "set", recording_set)
    make_dataset(tmp_path / "data", classes=3, per_class=5, bad=False)  # 15: 3 shards
    for grow in (False, True):
        if grow:  # an increment: 4 new images, some sorting among the known ones
            make_dataset(tmp_path / "data", classes=2, per_class=2, bad=False, start=5)
        plan = steps.prepare_embedding(_config(tmp_path, shard_size=5))
        for task in plan.tasks:
            current[0] = task.shard
            run_shard(task)
        current[0] = None
        steps.finalize_embedding(plan, [])
    shard_writes = [(shard, key) for shard, key in writes if shard is not None]
    owners: dict[str, int] = {}
    for shard, key in shard_writes:
        assert shard is not None
        assert owners.setdefault(key, shard) == shard, f"{key} written by two shard tasks"
        assert key.split("/c/")[1].split("/")[0] == str(shard), f"{key} is not shard {shard}'s"
    assert len({s for s, _ in shard_writes}) == 4  # 3 cold shards, 1 appended
    driver = {key for shard, key in writes if shard is None}
    assert not driver & set(owners), "the driver wrote a shard task's object"


def test_decoders_reach_every_shard_task_and_change_no_feature(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", classes=2, per_class=4, bad=False)
    loaded = []
    for decoders in (1, 3):
        config = _config(tmp_path, decoders=decoders, store=str(tmp_path / f"store-{decoders}"))
        plan = steps.prepare_embedding(config)
        # Mutation seen to fail here: the option not passed on to the shard tasks.
        assert {task.decoders for task in plan.tasks} == {decoders}
        for task in plan.tasks:
            run_shard(task)
        steps.finalize_embedding(plan, [])
        loaded.append(open_store(config.store).load(plan.spec.key).features)
    assert np.array_equal(loaded[0], loaded[1])  # threads decode; the bits stay
