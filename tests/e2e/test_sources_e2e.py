"""Every kind of source end to end: a CSV manifest through the embed flow, a Parquet
manifest named by a ``file://`` URL through the CLI, and a folder on an fsspec
``memory://`` filesystem through the embed flow. The same images, whichever source names
them, give the features a plain local folder gives, with the manifest's labels and splits
and the same failures for the same bad files."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

from flows.embed import run_embed
from tests.support.images import make_dataset
from transfer_pipe.app.cli import main
from transfer_pipe.config import EmbedConfig
from transfer_pipe.steps import embed
from transfer_pipe.store import LoadedFeatures, open_store

pytestmark = [pytest.mark.usefixtures("prefect_api")]
GOOD, BAD = 8, 4  # make_dataset(classes=2, per_class=4): 8 good images and 4 bad files


def config(source: str, store: Path) -> EmbedConfig:
    return EmbedConfig(source=source, store=str(store), backbone="tiny_test", workers=1)


@dataclass(frozen=True)
class Reference:
    """The images as a local folder, embedded without Prefect."""

    images: Path
    rows: LoadedFeatures  # the good rows
    failed: set[str]  # sample ids of the bad files


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    root = tmp_path_factory.mktemp("sources")
    make_dataset(root / "images", classes=2, per_class=GOOD // 2)
    summary = embed(config(str(root / "images"), root / "store"))
    assert (summary.rows, summary.failed) == (GOOD + BAD, BAD)
    store = open_store(str(root / "store"))
    failed = set(store.failures(summary.feature_set)["sample_id"])
    return Reference(root / "images", store.load(summary.feature_set), failed)


def manifest(images: Path) -> pd.DataFrame:
    """Every file of the folder with the folder's sample ids, labels of the manifest's own
    (not the folder names) and a split: the first half of each class train, the rest test."""
    files = sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file())
    table = pd.DataFrame({"sample_id": files, "label": [f"kind-{f[5]}" for f in files]})
    table["split"] = np.where(table.groupby("label").cumcount() % 2 == 0, "train", "test")
    return table


def assert_same_rows(
    store: Path, key: str, reference: Reference, table: pd.DataFrame | None = None
) -> None:
    """The feature set holds the reference's features, failures and, given the manifest
    ``table``, its labels and splits, all joined by sample id."""
    catalog = open_store(str(store))
    loaded = catalog.load(key, sample_ids=list(reference.rows.sample_ids))
    np.testing.assert_allclose(loaded.features, reference.rows.features, rtol=1e-5, atol=1e-6)
    failed = set(catalog.failures(key)["sample_id"])
    assert failed == reference.failed and len(failed) == BAD
    if table is not None:
        labels = dict(zip(table["sample_id"], table["label"], strict=True))
        assert list(loaded.labels) == [labels[s] for s in loaded.sample_ids]
        test = catalog.load(key, split="test")
        expected = table[(table["split"] == "test") & ~table["sample_id"].isin(failed)]
        assert sorted(test.sample_ids) == sorted(expected["sample_id"])


def test_csv_manifest_with_relative_paths_through_the_embed_flow(
    reference: Reference, tmp_path: Path
) -> None:
    images = reference.images
    table = manifest(images)
    csv = tmp_path / "meta" / "manifest.csv"
    csv.parent.mkdir()
    # Paths relative to the manifest's own folder ("../../<folder>/images/..."): they
    # resolve against it, not against the working directory.
    paths = [os.path.relpath(images / s, csv.parent) for s in table["sample_id"]]
    assert all(p.startswith("..") for p in paths)
    table.assign(path=paths).to_csv(csv, index=False)

    summary = run_embed(config(str(csv), tmp_path / "store"))
    # Mutation: dropping the `split` column when reading a manifest (data/sources.py)
    # leaves every row without a split, and the test split comes back empty; resolving
    # relative paths against the working directory instead of the manifest's folder
    # fails the run.
    assert (summary.rows, summary.failed, summary.embedded) == (GOOD + BAD, BAD, GOOD)
    assert summary.source.startswith("csv:")
    assert_same_rows(tmp_path / "store", summary.feature_set, reference, table)


def test_parquet_manifest_named_by_a_file_url_through_the_cli(
    reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = reference.images
    table = manifest(images)
    table["uri"] = [f"file://{images / s}" for s in table["sample_id"]]
    parquet = tmp_path / "manifest.parquet"
    table.to_parquet(parquet)
    store = tmp_path / "store"

    args = ["embed", f"file://{parquet}", "--store", str(store), "--backbone", "tiny_test"]
    assert main([*args, "--workers", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Mutation: reading a Parquet manifest as CSV (data/sources.py) fails the run.
    assert (summary["rows"], summary["failed"], summary["embedded"]) == (GOOD + BAD, BAD, GOOD)
    assert summary["source"] == f"parquet:file://{parquet}"
    assert_same_rows(store, summary["feature_set"], reference, table)


@pytest.fixture
def memory_copy(reference: Reference) -> Iterator[str]:
    """The reference images copied onto fsspec's in-memory filesystem; yields its URL."""
    fs = fsspec.filesystem("memory")
    root = f"/sources-{uuid.uuid4().hex}"
    images = reference.images
    for path in images.rglob("*"):
        if path.is_file():
            fs.pipe(f"{root}/{path.relative_to(images).as_posix()}", path.read_bytes())
    yield f"memory://{root}"
    fs.rm(root, recursive=True)


def test_folder_on_an_fsspec_memory_filesystem_through_the_embed_flow(
    reference: Reference, memory_copy: str, tmp_path: Path
) -> None:
    summary = run_embed(config(memory_copy, tmp_path / "store"))
    # Mutation: opening images with a plain open() instead of fsspec (data/read.py)
    # records every memory:// row as a failure.
    assert (summary.rows, summary.failed, summary.embedded) == (GOOD + BAD, BAD, GOOD)
    assert summary.source == f"folder:{memory_copy}"
    uris = open_store(str(tmp_path / "store")).row_table(summary.feature_set, columns=("uri",))
    assert all(str(uri).startswith("memory://") for uri in uris["uri"])
    assert_same_rows(tmp_path / "store", summary.feature_set, reference)
