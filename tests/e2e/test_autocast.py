"""``--autocast bf16`` on a CPU as a user runs it: a bfloat16 forward pass (fast on CPUs
with AVX-512 BF16 or AMX) writes a feature set of its own, never mixed with or taken for
float32 features; heads learn from it, and ``predict`` embeds new files the same way.
``--autocast fp16`` without CUDA fails before anything is written."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.cli import run
from tests.support.images import beyond_luck, fashion_mnist_folder, make_fashion_mnist
from transfer_pipe.app.cli import main
from transfer_pipe.store import open_store

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.usefixtures("prefect_api"),
    pytest.mark.skipif(
        fashion_mnist_folder() is None,
        reason="Fashion-MNIST's IDX files are not installed (`make data` installs them)",
    ),
]


def test_bf16_features_are_their_own_set_and_heads_and_predict_use_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, store = tmp_path / "images", tmp_path / "store"
    files = make_fashion_mnist(images, per_class=30)
    common = ("--store", str(store), "--backbone", "tiny_test", "--workers", "1")
    single = run(capsys, "embed", str(images), *common)
    half = run(capsys, "embed", str(images), *common, "--autocast", "bf16")
    # Mutation: autocast left out of the key makes this run reuse the float32 set whole.
    assert half["feature_set"] != single["feature_set"]
    assert (half["embedded"], half["reused"]) == (300, 0)
    features = open_store(str(store))
    bf16 = features.load(str(half["feature_set"]))
    f32 = features.load(str(single["feature_set"]), sample_ids=list(bf16.sample_ids))
    # Mutation: an embedder that runs float32 on a CPU whatever autocast says makes these
    # equal. bfloat16 keeps 8 bits of mantissa: close, not equal.
    assert not np.array_equal(bf16.features, f32.features)
    error = np.linalg.norm(bf16.features - f32.features) / np.linalg.norm(f32.features)
    assert error < 0.05, error
    again = run(capsys, "embed", str(images), *common, "--autocast", "bf16")
    assert (again["feature_set"], again["embedded"]) == (half["feature_set"], 0)

    key = str(half["feature_set"])
    trained = run(capsys, "train", key, "--store", str(store), "--heads", "logreg")
    splits, heads = trained["splits"], trained["heads"]
    assert isinstance(splits, dict) and isinstance(heads, dict)
    assert heads["logreg"]["accuracy"] >= beyond_luck(splits["test"], 1 / 10)

    # predict: a file the store holds comes from the bf16 set; a new one is embedded in
    # bf16. Mutation: a card without the set's autocast fails the embedding-key check.
    new = tmp_path / "new.png"
    Image.open(files[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(new)
    out = tmp_path / "predictions.csv"
    head_id = heads["logreg"]["head_ids"][0]
    predict = ["predict", str(files[1]), str(new), "--store", str(store), "--head", head_id]
    assert main([*predict, "--out", str(out)]) == 0
    with out.open() as table:
        rows = list(csv.DictReader(table))
    assert [(r["cached"], r["error"]) for r in rows] == [("True", ""), ("False", "")]


def test_fp16_without_cuda_fails_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, store = tmp_path / "images", tmp_path / "store"
    make_fashion_mnist(images, per_class=2)
    args = ["embed", str(images), "--store", str(store), "--backbone", "tiny_test"]
    # Mutation seen failing: dropping _check_device_here from check_embed_inputs leaves
    # an incomplete version behind (versions/<key>).
    assert main([*args, "--autocast", "fp16", "--device", "cpu"]) == 2
    assert "--autocast fp16 needs a CUDA device" in capsys.readouterr().err
    assert not store.exists() or not list((store / "versions").glob("*"))
