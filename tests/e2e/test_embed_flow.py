"""The embed flow end to end: Prefect server, Dask LocalCluster, real image files."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import numpy as np
import pytest

from flows.embed import embed_flow, run_embed
from tests.support.images import make_dataset
from transfer_pipe.config import EmbedConfig, run_values
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

    first = run_embed(config)
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

    rerun = run_embed(config)
    assert rerun.feature_set == key
    # Reuse counted against the first run's forward passes, not restated from the summary.
    assert (rerun.embedded, rerun.reused, rerun.shards_computed) == (0, first.embedded, 0)

    make_dataset(data, classes=3, per_class=2, bad=False, start=6)  # 6 new images
    grown = run_embed(config)
    assert grown.feature_set != key
    assert (grown.rows, grown.embedded, grown.reused, grown.failed) == (28, 6, first.embedded, 4)
    # The new version shares the first one's rows (the 4 bad files' too: the same bytes
    # fail the same way), copies none, and appends only the 6 new images' rows.
    # Mutation seen failing: _plan_rows sharing good rows only (10 appended, 4 re-decoded).
    assert int(store.shard_stats(grown.feature_set)["reused"].sum()) == 0
    assert store.spec(grown.feature_set).appended == 6
    assert store.spec(grown.feature_set).parent == key
    old = store.load(key, layer="penultimate")
    new = store.load(grown.feature_set, layer="penultimate", sample_ids=list(old.sample_ids))
    np.testing.assert_array_equal(new.features, old.features)
    assert [info.status for info in store.catalog()] == ["complete", "complete"]


def test_relabelled_copy_reuses_every_embedding(tmp_path: Path) -> None:
    """Reuse is by content hash: the same images under other names cost no forward pass."""
    make_dataset(tmp_path / "a", classes=2, per_class=4, bad=False)
    first = run_embed(config_for(tmp_path / "a", tmp_path / "store", layers=()))
    (tmp_path / "a").rename(tmp_path / "b")
    (tmp_path / "b" / "class0").rename(tmp_path / "b" / "shoes")
    second = run_embed(config_for(tmp_path / "b", tmp_path / "store", layers=()))
    assert second.feature_set != first.feature_set
    store = open_store(str(tmp_path / "store"))
    # Mutations seen to fail it: _copy_reused in features/shard.py copying nothing (the
    # rows stay NaN); the shard stats recording 0 reused rows.
    assert (first.embedded, second.embedded, second.reused) == (8, 0, first.embedded)
    assert int(store.shard_stats(second.feature_set)["reused"].sum()) == first.embedded
    assert "shoes" in set(store.load(second.feature_set).labels)
    before, after = store.load(first.feature_set), store.load(second.feature_set)
    renamed = [s.replace("shoes/", "class0/") for s in after.sample_ids.tolist()]
    row_of = {sample_id: row for row, sample_id in enumerate(renamed)}
    order = [row_of[sample_id] for sample_id in before.sample_ids.tolist()]
    np.testing.assert_array_equal(after.features[order], before.features)


def progress_of_run(flow_run_id: UUID) -> list[float]:
    """The progress artifacts of one flow run (the server is shared by the whole session)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                type=ArtifactFilterType(any_=["progress"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    return [float(a.data) for a in artifacts]


def test_progress_artifact_reaches_100_percent_when_every_shard_is_written(
    tmp_path: Path,
) -> None:
    """Mutations seen to fail it: compute_shards leaving one pending shard out
    (``plan.tasks[:-1]``): the artifact reads 50 %, where flows/embed.py used to set 100
    unconditionally; counting only this run's shards (``before = 0`` in flows/embed.py):
    a rerun with nothing to write reads 0 %."""
    make_dataset(tmp_path / "data", classes=2, per_class=5, bad=False)  # 10 images: 2 shards
    config = config_for(tmp_path / "data", tmp_path / "store", layers=())
    first = embed_flow(**run_values(config), return_state=True)
    assert progress_of_run(first.state_details.flow_run_id) == [100.0]
    assert (first.result().shards, first.result().shards_computed) == (2, 2)
    again = embed_flow(
        **run_values(config), return_state=True
    )  # nothing left to write: 100 % already
    assert progress_of_run(again.state_details.flow_run_id) == [100.0]
    assert again.result().shards_computed == 0


@pytest.mark.cluster
def test_shards_run_on_an_existing_scheduler(tmp_path: Path) -> None:
    from distributed import LocalCluster

    make_dataset(tmp_path / "data", classes=2, per_class=5, bad=False)
    with LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster:
        config = config_for(
            tmp_path / "data", tmp_path / "store", dask_address=cluster.scheduler_address
        )
        summary = run_embed(config)
        shard_tasks = cluster.scheduler.task_prefixes.get("shard")
    assert (summary.rows, summary.embedded) == (10, 10)
    # Our scheduler, not a LocalCluster of the flow's own, finished both shard tasks.
    assert shard_tasks is not None and shard_tasks.state_counts["memory"] == 2


def test_each_version_opens_with_xarray_and_pandas_alone(tmp_path: Path) -> None:
    """What a user outside this library reads (the recipe in docs/pages/store.md): a version's row
    table with pandas, and its features by layer from its lineage with xarray, picked by
    the table's ``row`` column; both versions of a lineage read back what the library
    loads, the older one unchanged by the newer."""
    import warnings

    import pandas as pd
    import xarray
    import zarr

    data, root = tmp_path / "data", tmp_path / "store"
    make_dataset(data, classes=2, per_class=6)  # and 4 bad files: 16 rows
    config = config_for(data, root)
    first = run_embed(config).feature_set
    make_dataset(data, classes=2, per_class=2, bad=False, start=6)  # 4 more: 20 rows
    second = run_embed(config).feature_set
    store = open_store(str(root))
    for key, rows in ((first, 16), (second, 20)):
        version = root / "versions" / key
        lineage = (
            root / "lineages" / zarr.open_group(str(version), mode="r").attrs["spec"]["lineage"]
        )
        table = pd.read_parquet(version / "table" / "rows.parquet")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            by_row = xarray.open_zarr(str(lineage), consolidated=False, zarr_format=3)
            # Mutation seen failing: one "feature" dimension name for every layer
            # (xarray's "conflicting sizes for dimension 'feature'").
            layers = xarray.open_zarr(
                str(lineage), group="features", consolidated=False, zarr_format=3
            )
        table["failure"] = by_row["failure"].isel(row=table["row"].to_numpy()).values
        assert len(table) == rows and (table["failure"] != "").sum() == 4
        assert set(layers.data_vars) == set(store.spec(key).layers)
        good = table[table["failure"] == ""]
        picked = layers["penultimate"].isel(row=good["row"].to_numpy()).values
        loaded = store.load(key, layer="penultimate", sample_ids=good["sample_id"].tolist())
        np.testing.assert_array_equal(picked, loaded.features)
        assert good["label"].isin(["class0", "class1"]).all()
