"""The heads flow end to end: a real Prefect server, feature sets written by the embed flow."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)

from flows.embed import run_embed
from flows.train import run_train, train_flow
from tests.support.images import make_dataset
from transfer_pipe.config import EmbedConfig, TrainConfig, run_values
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.heads.card import head_url, list_cards
from transfer_pipe.heads.persist import load_head
from transfer_pipe.steps import embed
from transfer_pipe.steps.predict import predict
from transfer_pipe.steps.train import prepare_training, train
from transfer_pipe.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_api")
HEADS = ("logreg", "knn", "torch-linear")


def embed_config(data: Path, store: Path) -> EmbedConfig:
    return EmbedConfig(
        source=str(data), store=str(store), backbone="tiny_test", shard_size=8, workers=1
    )


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A folder dataset (4 bad files included) embedded once; returns (data, store, key)."""
    root = tmp_path_factory.mktemp("train-flow")
    data, store = root / "images", root / "store"
    make_dataset(data, classes=3, per_class=12)
    summary = run_embed(embed_config(data, store))
    assert summary.status == "complete" and summary.failed == 4
    return data, store, summary.feature_set


def shard_stats(store: Path, key: str) -> pd.DataFrame:
    return open_store(str(store)).shard_stats(key)


def test_two_tasks_on_one_feature_set_compute_no_embedding(
    embedded: tuple[Path, Path, str], tmp_path: Path
) -> None:
    _, store, key = embedded
    before = shard_stats(store, key)
    labels = tmp_path / "odd-even.csv"
    rows = open_store(str(store)).load(key)
    with labels.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sample_id", "label"])
        # Written in reverse: labels must join by sample id, not by row order.
        for sample_id in reversed(rows.sample_ids.tolist()):
            writer.writerow([sample_id, "odd" if int(sample_id[-5]) % 2 else "even"])

    first_run = train_flow(
        **run_values(TrainConfig(feature_set=key, store=str(store), heads=HEADS)),
        return_state=True,
    )
    first = first_run.result()
    second = run_train(
        TrainConfig(feature_set=key, store=str(store), heads=HEADS, task=str(labels))
    )

    for summary, classes in ((first, ["class0", "class1", "class2"]), (second, ["even", "odd"])):
        assert summary.embedded == 0
        assert summary.classes == classes
        assert set(summary.heads) == set(HEADS)
        for head in summary.heads.values():
            assert 0.0 <= head.accuracy <= 1.0 and 0.0 <= head.macro_f1 <= 1.0
        splits = summary.splits.sizes
        assert splits["train"] + splits["val"] + splits["test"] == 36  # every good image
    pd.testing.assert_frame_equal(shard_stats(store, key), before)  # nothing re-embedded
    assert len(open_store(str(store)).list_keys()) == 1

    cards = list_cards(str(store))
    assert {(c.task.name, c.result.head) for c in cards} == {
        (task, head) for task in ("source", "odd-even") for head in HEADS
    }
    for card in cards:
        assert card.feature_set == key and card.backbone == "tiny_test"
        assert card.libraries["scikit-learn"] != "not installed"
        folder = store / "heads" / card.result.head_id
        assert {"card.json", "confusion.png", "per_class.png", "report.md"} <= {
            p.name for p in folder.iterdir()
        }
        assert (folder / "confusion.png").read_bytes().startswith(b"\x89PNG")

    # The first run's own table: the server is shared by every test of the session.
    # Mutation: flows/train.py's table artifact left out makes this fail.
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(like_="heads-metrics-%"),
                flow_run_id=ArtifactFilterFlowRunId(any_=[first_run.state_details.flow_run_id]),
            )
        )
    first_ids = {i for head in first.heads.values() for i in head.head_ids}
    [table] = [json.loads(a.data) if isinstance(a.data, str) else a.data for a in artifacts]
    assert {row["head_id"] for row in table} == first_ids


def test_source_target_embeds_first_then_nothing(tmp_path: Path) -> None:
    make_dataset(tmp_path / "images", classes=2, per_class=8, bad=False)
    store = tmp_path / "store"
    config = TrainConfig(
        embed=embed_config(tmp_path / "images", store), store=str(store), heads=("ridge",)
    )
    first = run_train(config)
    again = run_train(config)
    assert (first.embedded, again.embedded) == (16, 0)
    assert again.feature_set == first.feature_set
    assert again.heads["ridge"].head_ids == first.heads["ridge"].head_ids
    # Mutation: ignoring the saved card in train_head refits here (heads_fitted 1).
    assert (first.heads_fitted, again.heads_fitted, again.heads_reused) == (1, 0, 1)
    assert again.heads["ridge"].accuracy == first.heads["ridge"].accuracy
    # --layer auto (the default): the source is embedded at the top taps, and the layer is
    # chosen on validation among each of them and all side by side; the card and report
    # say so, and the rerun takes the same choice (from the store's cache).
    spec = open_store(str(store)).spec(first.feature_set)
    assert spec.layers == ("penultimate", "stages.2", "stages.1", "stages.0")
    choice = first.layer_choice
    assert choice is not None and choice.how == "validation" and len(choice.candidates) == 5
    assert first.layer == choice.layer and again.layer_choice == choice
    (card,) = list_cards(str(store))
    # Mutation: the card built without layer_choice fails here.
    assert card.result.layer_choice == choice and card.result.layer == choice.layer
    report = (Path(head_url(str(store), card.result.head_id)) / "report.md").read_text()
    assert f"- Layer: {choice.layer}, chosen on validation: best validation accuracy" in report
    refit = run_train(replace(config, refit=True))
    assert (refit.heads_fitted, refit.heads_reused) == (1, 0)
    assert len(list_cards(str(store))) == 1  # the refit replaced its head, same id


def test_predict_on_new_and_cached_files_agrees(
    embedded: tuple[Path, Path, str], tmp_path: Path
) -> None:
    data, store, key = embedded
    summary = run_train(TrainConfig(feature_set=key, store=str(store), heads=("logreg",)))
    head_id = summary.heads["logreg"].head_ids[0]
    cached = sorted((data / "class1").glob("*.png"))[:4]
    fresh = []
    for path in cached:  # same pixels, other bytes: not in the store, embedded anew
        copy = tmp_path / "new" / path.name
        copy.parent.mkdir(exist_ok=True)
        Image.open(path).save(copy, format="PNG", compress_level=0, optimize=False)
        assert copy.read_bytes() != path.read_bytes()
        fresh.append(copy)
    broken = tmp_path / "new" / "broken.png"
    broken.write_bytes(b"not an image")

    old = predict(str(store), head_id, [str(p) for p in cached], str(tmp_path / "old.csv"))
    new = predict(
        str(store), head_id, [str(p) for p in [*fresh, broken]], str(tmp_path / "new.parquet")
    )
    assert (old.cached, old.embedded, old.failed) == (4, 0, 0)
    assert (new.cached, new.embedded, new.failed) == (0, 4, 1)
    old_rows = pd.read_csv(tmp_path / "old.csv", keep_default_na=False)
    new_rows = pd.read_parquet(tmp_path / "new.parquet")
    assert old_rows["cached"].all() and not new_rows["cached"].any()
    assert old_rows["class"].tolist() == new_rows["class"].tolist()[:4]
    np.testing.assert_allclose(old_rows["probability"], new_rows["probability"][:4], rtol=1e-4)
    assert new_rows["error"].iloc[4].startswith("not-an-image")
    assert new_rows["class"].iloc[4] == ""

    # The same answer the fitted model gives on the cached features themselves.
    model, card = load_head(str(store), head_id)
    ids = [f"class1/{p.name}" for p in cached]
    loaded = open_store(str(store)).load(key, sample_ids=ids, layer=card.result.layer)
    assert model.predict(loaded.features).tolist() == old_rows["class"].tolist()
    top = [json.loads(t) for t in old_rows["top_k"]]
    assert all(len(t) == len(card.classes) for t in top)  # 3 classes < top-5
    assert all(t[0][0] == c for t, c in zip(top, old_rows["class"], strict=True))


def test_few_shot_repeats_over_seeds(embedded: tuple[Path, Path, str]) -> None:
    _, store, key = embedded
    config = TrainConfig(
        feature_set=key, store=str(store), heads=("logreg",), shots=2, shot_seeds=3
    )
    summary = train(config)
    logreg = summary.heads["logreg"]
    assert len(logreg.head_ids) == len(set(logreg.head_ids)) == 3
    assert logreg.accuracy_std is not None and 0.0 <= logreg.accuracy <= 1.0
    cards = [c for c in list_cards(str(store)) if c.result.head_id in logreg.head_ids]
    assert sorted(c.result.shot_seed for c in cards) == [0, 1, 2]
    for card in cards:
        assert card.result.shots == 2
        assert card.splits.train == 2 * len(card.classes)  # k per class, no more
        assert card.splits.val == summary.splits.sizes["val"]  # judged on the same rows


def test_a_learning_curve_fits_each_share_of_the_labels_over_seeds(
    embedded: tuple[Path, Path, str],
) -> None:
    _, store, key = embedded
    heads = ("logreg", "knn")
    config = TrainConfig(
        feature_set=key, store=str(store), heads=heads, label_fraction=0.25, shot_seeds=3
    )
    full = train(TrainConfig(feature_set=key, store=str(store), heads=("ridge",))).splits.sizes
    per_class = Counter(prepare_training(config, key).data.train.labels.tolist())
    quarter = sum(math.ceil(n / 4) for n in per_class.values())  # about a quarter, per class
    assert sum(per_class.values()) == full["train"] and quarter < full["train"] / 2

    summary = run_train(config)  # the flow: its parameters carry the fraction
    assert (summary.label_fraction, summary.splits.sizes) == (0.25, full)
    assert (summary.heads_fitted, summary.heads_reused) == (6, 0)
    cards = {c.result.head_id: c for c in list_cards(str(store))}
    for name in heads:
        head = summary.heads[name]
        assert len(set(head.head_ids)) == 3  # three seeds per head kind
        assert head.accuracy_std is not None and 0.0 <= head.accuracy <= 1.0
        mine = [cards[i] for i in head.head_ids]
        assert head.accuracy == pytest.approx(np.mean([c.result.metrics.accuracy for c in mine]))
        assert sorted(c.result.shot_seed or 0 for c in mine) == [0, 1, 2]
        for card in mine:
            assert card.result.label_fraction == 0.25
            # Mutation: _fit_and_save ignoring label_fraction fits on every row: fails here.
            assert card.splits.train == quarter
            assert (card.splits.val, card.splits.test) == (full["val"], full["test"])

    # Mutation: train_head ignoring the saved card refits 6 heads here.
    again = run_train(config)
    assert (again.heads_fitted, again.heads_reused, again.splits.sizes) == (0, 6, full)
    assert again.heads["logreg"].head_ids == summary.heads["logreg"].head_ids

    half = train(replace(config, label_fraction=0.5))
    assert half.heads_fitted == 6
    assert not set(half.heads["knn"].head_ids) & set(summary.heads["knn"].head_ids)
    # Fraction 1 keeps every row whatever the seed: one head per kind, not three.
    whole = train(replace(config, label_fraction=1.0))
    assert [len(h.head_ids) for h in whole.heads.values()] == [1, 1]
    whole_cards = [c for c in list_cards(str(store)) if c.result.label_fraction == 1.0]
    assert [c.splits.train for c in whole_cards] == [full["train"]] * 2


def test_heads_read_several_layers_side_by_side(tmp_path: Path) -> None:
    make_dataset(tmp_path / "images", classes=2, per_class=6, bad=False)
    store = str(tmp_path / "store")
    config = replace(embed_config(tmp_path / "images", tmp_path / "store"), layers=("stages",))
    key = embed(config).feature_set
    spec = open_store(store).spec(key)
    layer = f"{spec.layers[-1]}+{spec.layers[-2]}"
    summary = train(TrainConfig(feature_set=key, store=store, heads=("logreg",), layer=layer))
    head_id = summary.heads["logreg"].head_ids[0]
    model, card = load_head(store, head_id)
    assert card.result.layer == layer
    assert (
        model.n_features_in_ == spec.layer_dims[spec.layers[-1]] + spec.layer_dims[spec.layers[-2]]
    )

    images = sorted((tmp_path / "images" / "class0").glob("*.png"))[:2]
    copies = []
    for path in images:
        copies.append(tmp_path / f"copy-{path.name}")
        Image.open(path).save(copies[-1], format="PNG", compress_level=0)
    cached = predict(store, head_id, [str(p) for p in images], str(tmp_path / "a.csv"))
    fresh = predict(store, head_id, [str(p) for p in copies], str(tmp_path / "b.csv"))
    assert (cached.cached, fresh.embedded) == (2, 2)
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert a["class"].tolist() == b["class"].tolist()
    np.testing.assert_allclose(a["probability"], b["probability"], rtol=1e-4)

    with pytest.raises(TransferPipeError, match="has no layer 'nope'"):
        train(TrainConfig(feature_set=key, store=store, layer=f"{spec.layers[0]}+nope"))
