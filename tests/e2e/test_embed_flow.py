"""The embed flow end to end: Prefect server, Dask LocalCluster, real image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flows.embed import embed_flow
from tests.images import make_dataset
from transfer_pipe.config import EmbedConfig
from transfer_pipe.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_api")


def config_for(data: Path, store: Path, **overrides: object) -> EmbedConfig:
    values: dict[str, object] = {
        "source": str(data),
        "store": str(store),
        "backbone": "tiny_test",
        "layers": ("penultimate", "stages"),
        "shard_size": 5,
        "batch_size": 4,
        "workers": 2,
    }
    values.update(overrides)
    return EmbedConfig(**values)  # type: ignore[arg-type]


def test_embed_rerun_and_added_images(tmp_path: Path) -> None:
    data = tmp_path / "images"
    make_dataset(data, classes=3, per_class=6)  # 18 good images of every kind, 4 bad files
    config = config_for(data, tmp_path / "store")

    first = embed_flow(config)
    assert first.status == "complete"
    assert (first.rows, first.failed, first.embedded, first.reused) == (22, 4, 18, 0)
    store = open_store(str(tmp_path / "store"))
    key = first.feature_set
    reasons = dict(zip(*store.failures(key)[["sample_id", "reason"]].T.values, strict=True))
    assert set(reasons) == {
        "class0/empty.png",
        "class0/notes.png",
        "class1/truncated.jpg",
        "class2/bomb.png",
    }
    assert reasons["class0/empty.png"].startswith("empty")
    assert reasons["class0/notes.png"].startswith("not-an-image")
    assert reasons["class1/truncated.jpg"].startswith("truncated")
    assert reasons["class2/bomb.png"].startswith("decompression-bomb")
    spec = store.spec(key)
    assert len(spec.layers) > 2  # penultimate plus every stage, from one forward pass
    for layer in spec.layers:
        loaded = store.load(key, layer=layer)
        assert loaded.features.shape == (18, spec.layer_dims[layer])
        assert np.isfinite(loaded.features).all()
    assert sorted(set(store.load(key).labels)) == ["class0", "class1", "class2"]

    rerun = embed_flow(config)
    assert rerun.feature_set == key
    assert (rerun.embedded, rerun.reused, rerun.shards_computed) == (0, 18, 0)

    make_dataset(data, classes=3, per_class=2, bad=False, start=6)  # 6 new images
    grown = embed_flow(config)
    assert grown.feature_set != key
    assert (grown.rows, grown.embedded, grown.reused, grown.failed) == (28, 6, 18, 4)
    old = store.load(key, layer="penultimate")
    new = store.load(grown.feature_set, layer="penultimate", sample_ids=list(old.sample_ids))
    np.testing.assert_array_equal(new.features, old.features)
    assert [info.status for info in store.catalog()] == ["complete", "complete"]


def test_relabelled_copy_reuses_every_embedding(tmp_path: Path) -> None:
    """Reuse is by content hash: the same images under other names cost no forward pass."""
    make_dataset(tmp_path / "a", classes=2, per_class=4, bad=False)
    first = embed_flow(config_for(tmp_path / "a", tmp_path / "store", layers=()))
    (tmp_path / "a").rename(tmp_path / "b")
    (tmp_path / "b" / "class0").rename(tmp_path / "b" / "shoes")
    second = embed_flow(config_for(tmp_path / "b", tmp_path / "store", layers=()))
    assert second.feature_set != first.feature_set
    assert (second.embedded, second.reused) == (0, 8)
    assert "shoes" in set(open_store(str(tmp_path / "store")).load(second.feature_set).labels)


def test_progress_artifact_reaches_100_percent(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    make_dataset(tmp_path / "data", classes=2, per_class=5, bad=False)
    summary = embed_flow(config_for(tmp_path / "data", tmp_path / "store", layers=()))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"]))
        )
    ours = [a for a in artifacts if summary.feature_set in (a.description or "")]
    assert ours and all(a.data == 100.0 for a in ours)


def test_shards_run_on_an_existing_scheduler(tmp_path: Path) -> None:
    from distributed import LocalCluster

    make_dataset(tmp_path / "data", classes=2, per_class=5, bad=False)
    with LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster:
        config = config_for(
            tmp_path / "data", tmp_path / "store", dask_address=cluster.scheduler_address
        )
        summary = embed_flow(config)
        shard_tasks = cluster.scheduler.task_prefixes.get("shard")
    assert (summary.rows, summary.embedded) == (10, 10)
    # Our scheduler, not a LocalCluster of the flow's own, finished both shard tasks.
    assert shard_tasks is not None and shard_tasks.state_counts["memory"] == 2
