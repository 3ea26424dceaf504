"""Rows are copied between lineages only when their embedding would be the same.

A grown dataset (the 8 images of a first feature set and 2 new ones) in another folder,
so another lineage, embedded into the same store: with the same backbone, weights,
preprocessing and dtype the 8 known images are copied from the first lineage by content
hash and only the 2 new ones go through the backbone; with another image size, dtype or
weights file every row is embedded again, since a copied row would be wrong.
Runs the library's embed step (Dask, real files) without Prefect: the flow calls it.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.images import make_dataset
from transfer_pipe.backbones.tiny import TinyNet
from transfer_pipe.config import EmbedConfig
from transfer_pipe.steps import embed
from transfer_pipe.store import open_store

KNOWN, NEW = 8, 2


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A store holding one feature set of 8 images (default settings, tiny backbone);
    returns (the images, the store, its key). Tests copy both, so each starts alike."""
    root = tmp_path_factory.mktemp("reuse")
    make_dataset(root / "images", classes=2, per_class=KNOWN // 2, bad=False)
    summary = embed(base_config(root / "images", root / "store"))
    assert (summary.rows, summary.embedded) == (KNOWN, KNOWN)
    return root / "images", root / "store", summary.feature_set


def base_config(data: Path, store: Path) -> EmbedConfig:
    return EmbedConfig(source=str(data), store=str(store), backbone="tiny_test", workers=1)


def grown(tmp_path: Path, first: tuple[Path, Path, str]) -> tuple[EmbedConfig, str]:
    """A copy of the first store, and the first 8 images plus 2 new ones; returns the
    default embed config for them and the first feature set's key."""
    images, store, key = first
    shutil.copytree(store, tmp_path / "store")
    shutil.copytree(images, tmp_path / "images")
    make_dataset(tmp_path / "images", classes=2, per_class=NEW // 2, bad=False, start=KNOWN)
    return base_config(tmp_path / "images", tmp_path / "store"), key


def perturbed_weights(path: Path) -> str:
    """A state dict of the tiny backbone with every weight moved: other features."""
    state = TinyNet().state_dict()
    torch.save({name: tensor * 1.5 + 0.01 for name, tensor in state.items()}, path)
    return str(path)


def test_the_same_settings_copy_every_known_row(
    tmp_path: Path, first: tuple[Path, Path, str]
) -> None:
    config, first_key = grown(tmp_path, first)
    summary = embed(config)
    store = open_store(config.store)
    # Mutation seen failing: a reusable_rows that returns no donors (steps/embed/reuse.py)
    # embeds all 10.
    assert summary.feature_set != first_key and summary.rows == KNOWN + NEW
    assert store.spec(summary.feature_set).lineage != store.spec(first_key).lineage
    assert summary.embedded == NEW
    assert int(store.shard_stats(summary.feature_set)["reused"].sum()) == KNOWN
    old = store.load(first_key)
    copied = store.load(summary.feature_set, sample_ids=list(old.sample_ids))
    np.testing.assert_array_equal(copied.features, old.features)


@pytest.mark.parametrize(
    "change",
    ["image_size", "dtype", "weights_file"],
)
def test_another_image_size_dtype_or_weights_file_copies_nothing(
    tmp_path: Path, first: tuple[Path, Path, str], change: str
) -> None:
    config, first_key = grown(tmp_path, first)
    changed = {
        "image_size": {"image_size": 48},
        "dtype": {"dtype": "float16"},
        "weights_file": {"weights_file": perturbed_weights(tmp_path / "tiny.pt")},
    }[change]
    summary = embed(replace(config, **changed))  # type: ignore[arg-type]
    store = open_store(config.store)
    # Mutation: an embedding key (steps/embed/identity.py) that leaves out the preprocessing, the
    # dtype or the weights digest lets rows of the first feature set be copied here.
    assert summary.rows == KNOWN + NEW
    assert summary.embedded == KNOWN + NEW, summary
    assert int(store.shard_stats(summary.feature_set)["reused"].sum()) == 0
    old = store.load(first_key)
    new = store.load(summary.feature_set, sample_ids=list(old.sample_ids))
    assert new.features.dtype == (np.float16 if change == "dtype" else np.float32)
    if change != "dtype":  # other pixels or other weights: other features
        assert np.abs(new.features - old.features).max() > 1e-3
