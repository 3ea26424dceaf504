"""Saved heads: every head kind round-trips through the store with its card; unfinished
heads are not listed and read as None; a re-save leaves nothing stale; untrusted skops
content is refused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tests.support.stores import TINY_PREPROCESSING
from tests.support.synthetic import CLASSES, blobs, task_data
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.heads.card import HeadCard, HeadResult, list_cards, read_card
from transfer_pipe.heads.persist import load_head, save_head
from transfer_pipe.heads.protocol import (
    HEAD_KINDS,
    FittedHead,
    ProtocolOptions,
    class_probabilities,
    fit_head,
)
from transfer_pipe.heads.tasks import TaskData
from transfer_pipe.store.cards import SplitSizes, TaskRef

FAST = ProtocolOptions(c_values=6, max_iter=30, refit_max_iter=100, device="cpu", bootstrap=10)
MODEL_FILE = {
    "logreg": "model.safetensors",
    "svm": "model.safetensors",
    "torch-linear": "model.safetensors",
    "mlp": "model.safetensors",
    "knn": "model.skops",
    "ridge": "model.skops",
}


def _data(seed: int = 0) -> TaskData:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(3, 6))
    return task_data(
        blobs(rng, centers, 40, prefix="tr"),
        blobs(rng, centers, 10, prefix="va"),
        blobs(rng, centers, 20, prefix="te"),
    )


def _fit(name: str) -> FittedHead:
    return fit_head(name, _data(), FAST)


def _probe(seed: int = 1) -> np.ndarray:
    """Rows the head never saw, spread wider than the training data."""
    return np.random.default_rng(seed).normal(scale=3.0, size=(60, 6)).astype(np.float32)


def _extra_file(tmp_path: Path, name: str = "report.md", text: str = "# report\n") -> Path:
    path = tmp_path / "extra" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def _store(tmp_path: Path) -> str:
    return str(tmp_path / "store")


def _card(head_id: str, fitted: FittedHead, created: str = "2025-01-01T00:00:00+00:00") -> HeadCard:
    """A card as the heads pipeline writes it, for a head fitted on ``_data()``."""
    return HeadCard(
        feature_set="0123456789abcdef", store="unused", source="synthetic",
        backbone="tiny_test", weights_digest="d" * 64, preprocessing=TINY_PREPROCESSING,
        embedding_key="e" * 16, dtype="float32",
        task=TaskRef(name="source", digest="t" * 64), classes=list(CLASSES),
        splits=SplitSizes(train=120, val=30, test=60, origin="test fixture"),
        estimator="x", params={}, validation_curve=fitted.validation,
        result=HeadResult(
            head_id=head_id, head=fitted.head, task="source", layer="penultimate", shots=None,
            shot_seed=None, chosen=fitted.chosen, metrics=fitted.metrics, seconds=fitted.seconds,
        ),
        libraries={"numpy": "2"}, created=created,
    )  # fmt: skip


@pytest.mark.parametrize("name", list(HEAD_KINDS))
def test_every_head_kind_round_trips(name: str, tmp_path: Path) -> None:
    fitted = _fit(name)
    store = _store(tmp_path)
    card = _card(f"h-{name}", fitted)
    report = _extra_file(tmp_path, text=f"# {name}\n")
    url = save_head(store, card, fitted.model, [report])

    folder = Path(store) / "heads" / f"h-{name}"
    assert Path(url) == folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["card.json", MODEL_FILE[name], "report.md"]
    )
    assert (folder / "report.md").read_text() == f"# {name}\n"

    model, loaded_card = load_head(store, f"h-{name}")
    # Every field comes back as written, nested types included.
    assert loaded_card == replace(card, model_file=MODEL_FILE[name])
    assert read_card(store, f"h-{name}") == loaded_card
    assert type(model.named_steps["head"]) is type(fitted.model.named_steps["head"])
    assert model.named_steps["head"].get_params() == fitted.model.named_steps["head"].get_params()
    for X in (_probe(), _data().test.features):
        np.testing.assert_array_equal(model.predict(X), fitted.model.predict(X))
        np.testing.assert_allclose(
            class_probabilities(model, X, CLASSES),
            class_probabilities(fitted.model, X, CLASSES),
            rtol=1e-12,
            atol=1e-12,
        )


def test_list_cards_skips_heads_without_a_card(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert list_cards(store) == []
    fitted = _fit("ridge")
    # Listed oldest first, whatever the ids' alphabetical order.
    save_head(store, _card("a-later", fitted, "2025-02-01"), fitted.model)
    save_head(store, _card("b-earlier", fitted, "2025-01-01"), fitted.model)
    unfinished = Path(store) / "heads" / "unfinished"
    unfinished.mkdir()
    (unfinished / "model.skops").write_bytes(b"half-written")

    assert [card.result.head_id for card in list_cards(store)] == ["b-earlier", "a-later"]
    (Path(store) / "heads" / "a-later" / "card.json").unlink()  # as if the save was cut short
    assert [card.result.head_id for card in list_cards(store)] == ["b-earlier"]
    assert read_card(store, "a-later") is None  # unfinished reads as missing
    with pytest.raises(TransferPipeError, match="heads ls"):
        load_head(store, "a-later")


def test_resaving_a_head_id_leaves_no_stale_files(tmp_path: Path) -> None:
    store = _store(tmp_path)
    old = _fit("knn")
    save_head(store, _card("h", old), old.model, [_extra_file(tmp_path, "old.md")])
    folder = Path(store) / "heads" / "h"
    assert {p.name for p in folder.iterdir()} == {"card.json", "model.skops", "old.md"}

    new = _fit("logreg")
    save_head(store, _card("h", new), new.model)
    assert {p.name for p in folder.iterdir()} == {"card.json", "model.safetensors"}
    model, card = load_head(store, "h")
    assert card.result.head == "logreg" and card.model_file == "model.safetensors"
    np.testing.assert_array_equal(model.predict(_probe()), new.model.predict(_probe()))
    assert [c.result.head_id for c in list_cards(store)] == ["h"]


def test_unknown_head_id_reads_as_none_and_loading_it_points_to_heads_ls(tmp_path: Path) -> None:
    store = _store(tmp_path)
    # Mutation: raising in read_card (its old behaviour) makes this fail.
    assert read_card(store, "missing-head") is None
    with pytest.raises(TransferPipeError) as caught:
        load_head(store, "missing-head")
    assert "missing-head" in str(caught.value) and "heads ls" in str(caught.value)


class SneakyClassifier(LogisticRegression):
    """A type outside sklearn / numpy / builtins: loading it would run this module's code."""


def test_skops_file_with_an_untrusted_type_is_refused(tmp_path: Path) -> None:
    data = _data()
    model = Pipeline([("scale", StandardScaler()), ("head", SneakyClassifier())])
    model.fit(data.train.features, data.train.labels)
    store = _store(tmp_path)
    save_head(store, _card("sneaky", _fit("knn")), model)
    card = read_card(store, "sneaky")
    assert card is not None and card.model_file == "model.skops"
    with pytest.raises(TransferPipeError, match="SneakyClassifier"):
        load_head(store, "sneaky")


def test_hand_written_skops_file_with_an_untrusted_type_is_refused(tmp_path: Path) -> None:
    data = _data()
    model = Pipeline([("scale", StandardScaler()), ("head", SneakyClassifier())])
    model.fit(data.train.features, data.train.labels)
    folder = tmp_path / "store" / "heads" / "planted"
    folder.mkdir(parents=True)
    skops.io.dump(model, folder / "model.skops")
    card = replace(_card("planted", _fit("knn")), model_file="model.skops")
    (folder / "card.json").write_text(json.dumps(card.to_dict()))
    with pytest.raises(TransferPipeError, match="does not load"):
        load_head(_store(tmp_path), "planted")
