"""The flows on images that carry their class: accuracy that luck cannot explain.

The other end-to-end sets are random patterns, on which any head scores chance. Here the
heads flow must find Fashion-MNIST's classes in the tiny test backbone's frozen features,
and the fine-tuning flow must beat its linear probe on drawn shapes, where the frozen
random features are weak and training the top of the backbone is what helps. Each bound
is the accuracy that luck reaches on that many test rows with probability 1e-3
(``beyond_luck``), never a number tuned to what a run happened to score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.finetune import run_finetune
from flows.train import run_train
from tests.support.images import (
    SHAPES,
    beyond_luck,
    fashion_mnist_folder,
    make_fashion_mnist,
    make_shapes,
)
from transfer_pipe.config import EmbedConfig, FinetuneConfig, TrainConfig
from transfer_pipe.store import open_store

pytestmark = [pytest.mark.real_data, pytest.mark.usefixtures("prefect_api")]


def embed_config(data: Path, store: Path) -> EmbedConfig:
    return EmbedConfig(source=str(data), store=str(store), backbone="tiny_test", workers=1)


def test_heads_find_fashion_mnist_classes_and_not_shuffled_labels(tmp_path: Path) -> None:
    """Every head scores beyond luck on real images of ten classes; the same heads on the
    same features with the labels shuffled over the images do not."""
    if fashion_mnist_folder() is None:
        pytest.skip("Fashion-MNIST's IDX files are not installed (`make data` installs them)")
    make_fashion_mnist(tmp_path / "images", per_class=30)  # 300 PNG files
    store = tmp_path / "store"
    heads = ("logreg", "knn")
    config = TrainConfig(
        embed=embed_config(tmp_path / "images", store), store=str(store), heads=heads
    )
    summary = run_train(config)
    assert len(summary.classes) == 10 and summary.splits.sizes["test"] == 60
    luck = beyond_luck(summary.splits.sizes["test"], 1 / len(summary.classes))
    # Mutation: writing a shard's features in reversed row order (features/shard.py)
    # pairs each image's features with another image's label: every head falls below.
    for head in heads:
        assert summary.heads[head].accuracy >= luck, (head, summary.heads[head], luck)

    # The control: heads that can only guess stay under the bound on these test rows.
    rows = open_store(str(store)).load(summary.feature_set)
    shuffled = tmp_path / "shuffled.csv"
    labels = np.random.default_rng(0).permutation(rows.labels)
    pd.DataFrame({"sample_id": rows.sample_ids, "label": labels}).to_csv(shuffled, index=False)
    control = run_train(
        TrainConfig(
            feature_set=summary.feature_set, store=str(store), heads=heads, task=str(shuffled)
        )
    )
    assert control.splits.sizes == summary.splits.sizes and control.embedded == 0
    for head in heads:
        assert control.heads[head].accuracy < luck, (head, control.heads[head], luck)


def test_training_the_top_stages_beats_the_probe_on_drawn_shapes(tmp_path: Path) -> None:
    """Circles, squares and triangles of random size, place and grey levels: the frozen
    random stages blur outline into brightness (the probe scores about 0.55, chance 0.33),
    while training the top two stages learns the outlines within 20 epochs."""
    make_shapes(tmp_path / "images", per_class=100)
    store = tmp_path / "store"
    config = FinetuneConfig(
        embed=embed_config(tmp_path / "images", store),
        store=str(store),
        policy="top-2",
        lp_ft=False,  # a new head, as this test was calibrated (LP-FT is the default)
        epochs=20,
        patience=20,
        lr=3e-3,
        batch_size=16,
        augment="none",
        loader_workers=0,
        test_fraction=0.3,  # 90 test images: a bound with room between probe and luck
    )
    summary = run_finetune(config)
    assert summary.classes == sorted(SHAPES) and summary.splits.test == 90
    assert summary.embedded == 300 and summary.skipped_images == 0
    rows = summary.splits.test
    # Both scores are on the same 90 test images: fine-tuning must beat what a model as
    # good as the probe would reach by luck, and so also chance.
    # Mutation: a top-N policy that unfreezes no stage (finetune/surgery.py) trains the
    # head alone on the frozen features, and stays at the probe's accuracy.
    assert summary.accuracy >= beyond_luck(rows, summary.probe_accuracy), summary
    assert summary.accuracy >= beyond_luck(rows, 1 / len(SHAPES)), summary
