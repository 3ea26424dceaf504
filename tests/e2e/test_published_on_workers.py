"""Fine-tuning that leaves nothing on the machine: a published backbone on a real Dask
cluster whose worker shares nothing with the driver but the store (another HOME, another
transfer-pipe home), and a run on an S3 store whose checkpoints and published backbone
are in the bucket, used by a new process with another HOME."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from tests.support.dask_processes import DaskProcesses
from tests.support.training import make_data
from transfer_pipe.config import EmbedConfig, FinetuneConfig
from transfer_pipe.finetune.loop import BEST, LAST
from transfer_pipe.finetune.persist import checkpoint_folder
from transfer_pipe.steps.embed import embed
from transfer_pipe.steps.finetune import (
    ensure_probe,
    prepare_finetune,
    publish_config,
    run_finetune,
)
from transfer_pipe.store import open_store

REPO = Path(__file__).resolve().parents[2]


def test_a_published_backbone_embeds_on_a_worker_that_shares_only_the_store(
    tmp_path: Path, shared_cluster: DaskProcesses
) -> None:
    """On the session's cluster, whose workers have a HOME and transfer-pipe home of their
    own (what a worker on another machine has)."""
    # Mutation seen to fail it: the shard's ``EmbedderConfig`` without the run's store in
    # ``stores`` (the worker cannot resolve the id: the shard fails naming the stores it
    # searched).
    make_data(tmp_path / "images")
    store = str(tmp_path / "store")
    base = EmbedConfig(source=str(tmp_path / "images"), store=store, backbone="tiny_test",
                       workers=1, device="cpu")  # fmt: skip
    key = embed(base).feature_set
    config = FinetuneConfig(feature_set=key, store=store, policy="top-1", epochs=1,
                            batch_size=8, loader_workers=0, device="cpu", force=True)  # fmt: skip
    plan = prepare_finetune(config, key)
    run_finetune(plan, ensure_probe(plan))
    published = publish_config(plan)
    assert published.backbone == f"finetuned/{plan.run_id}"

    on_cluster = embed(replace(published, workers=None, dask_address=shared_cluster.address))
    local_store = str(tmp_path / "local-store")
    local = embed(replace(published, store=local_store))  # the driver's own worker

    catalog = open_store(store)
    assert on_cluster.feature_set == local.feature_set != key
    assert catalog.status(on_cluster.feature_set) == "complete"
    assert catalog.spec(on_cluster.feature_set).backbone == published.backbone
    np.testing.assert_array_equal(
        catalog.load(on_cluster.feature_set).features,
        open_store(local_store).load(local.feature_set).features,
    )
    for home in shared_cluster.folder.glob("worker-*/.transfer-pipe"):  # nothing local used
        assert not (home / "backbones.json").exists()


def _embed_in_a_new_process(config: EmbedConfig, home: Path) -> str:
    """Run ``config`` through the embed step in a fresh interpreter with its own HOME and
    transfer-pipe home (another machine); returns the feature set's key."""
    code = (
        "import sys\n"
        "from transfer_pipe.config import EmbedConfig\n"
        "from transfer_pipe.steps.embed import embed\n"
        "config = EmbedConfig(source=sys.argv[1], store=sys.argv[2], backbone=sys.argv[3],\n"
        "                     workers=1, device='cpu')\n"
        "print(embed(config).feature_set)\n"
    )
    env = {**os.environ, "HOME": str(home), "TRANSFER_PIPE_HOME": str(home / ".transfer-pipe")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", code, config.source, config.store, config.backbone],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_a_run_on_s3_keeps_its_checkpoints_and_backbone_in_the_bucket(
    tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation seen to fail it: ``run_backbone`` (steps/embed/identity.py) not passing
    the run's store to ``get_backbone``: the new process cannot resolve the id."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # this machine's: must stay empty
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    make_data(tmp_path / "images")
    store = f"s3://{s3_bucket}/store"
    base = EmbedConfig(source=str(tmp_path / "images"), store=store, backbone="tiny_test",
                       workers=1, device="cpu")  # fmt: skip
    key = embed(base).feature_set
    config = FinetuneConfig(feature_set=key, store=store, policy="top-1", epochs=1,
                            batch_size=8, loader_workers=0, device="cpu", force=True)  # fmt: skip
    plan = prepare_finetune(config, key)
    result = run_finetune(plan, ensure_probe(plan))
    checkpoints = checkpoint_folder(store, plan.run_id)
    assert checkpoints.exists(LAST) and checkpoints.exists(BEST)
    assert result.checkpoint == f"{store}/finetune/{plan.run_id}/checkpoints/best.safetensors"
    home = tmp_path / "home"  # (matplotlib keeps its font cache there: not ours)
    assert not [*home.rglob("*transfer-pipe*"), *home.rglob("*.safetensors")]

    published = publish_config(plan)
    here = embed(published).feature_set
    elsewhere = _embed_in_a_new_process(published, tmp_path / "other-machine")
    assert elsewhere == here != key  # the same weights digest, found in the bucket
    assert open_store(store).status(here) == "complete"


def _digest_on_this_worker(backbone_id: str, store: str) -> str:
    """Run on each worker: resolve ``backbone_id`` from the store alone; its weights'
    digest."""
    from transfer_pipe.backbones import StoreLocation, get_backbone

    return get_backbone(backbone_id, stores=(StoreLocation(store),)).weights_digest()


@pytest.mark.cluster  # a cluster of its own: its workers' variables point at the S3 server
def test_a_model_fine_tuned_on_a_worker_into_s3_resolves_on_every_worker(
    tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store on S3 and two workers, each with its own HOME: fine-tuning runs as a task
    on one of them (its checkpoints into the bucket); published from the bucket's best
    checkpoint, ``finetuned/<run>`` resolves on both workers (the one that did not train it
    too), with the driver's weights digest, and the re-embed runs on them.

    Mutation seen to fail it: publish_config's embed run for a feature-set key built
    without the run's ``dask_address`` (the re-embed ran on the driver's own LocalCluster:
    no shard reached the workers)."""
    from transfer_pipe.backbones import get_backbone

    processes = DaskProcesses(tmp_path / "dask")
    processes.folder.mkdir()
    try:
        with monkeypatch.context() as worker_env:  # the AWS variables: from s3_bucket
            processes.start_scheduler()
            for name in ("worker-a", "worker-b"):
                worker_env.setenv("HOME", str(tmp_path / name))
                worker_env.setenv("TRANSFER_PIPE_HOME", str(tmp_path / name / ".transfer-pipe"))
                processes.start_worker()
        processes.wait_for_workers(2)
        make_data(tmp_path / "images")
        store = f"s3://{s3_bucket}/store"
        base = EmbedConfig(source=str(tmp_path / "images"), store=store, backbone="tiny_test",
                           workers=1, device="cpu")  # fmt: skip
        key = embed(base).feature_set
        config = FinetuneConfig(feature_set=key, store=store, policy="top-1", epochs=1,
                                batch_size=8, loader_workers=0, device="cpu", force=True,
                                dask_address=processes.address)  # fmt: skip
        plan = prepare_finetune(config, key)
        with Client(processes.address) as client:
            client.get_task_stream()
            since = time.time()
            run_finetune(plan, ensure_probe(plan))
            published = publish_config(plan)
            republished = embed(published)
            stream = client.get_task_stream(start=since)
            digests = client.run(_digest_on_this_worker, published.backbone, store)
        where = {str(t["key"]).split("-", 1)[0]: t["worker"] for t in stream}
        assert where["finetune"] in digests  # trained on a worker
        assert {t["worker"] for t in stream if str(t["key"]).startswith("shard-")}
        assert published.backbone == f"finetuned/{plan.run_id}"
        assert list(digests.values()) == [get_backbone(published.backbone).weights_digest()] * 2
        assert republished.status == "complete" and republished.feature_set != key
        assert open_store(store).spec(republished.feature_set).backbone == published.backbone
        for name in ("worker-a", "worker-b"):  # nothing machine-local was used
            assert not (tmp_path / name / ".transfer-pipe" / "backbones.json").exists()
    finally:
        processes.stop()
