"""Model cards already in users' stores keep reading, and cards written now keep every
key and value of the shape written before they became types (heads and fine-tuning); a
fine-tuning run saves and reads back, and an unfinished one reads as None."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from transfer_pipe.backbones import get_backbone
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.finetune.card import FinetuneCard, FinetuneListing, RunScore
from transfer_pipe.finetune.persist import list_cards, read_card, save_finetuned
from transfer_pipe.finetune.surgery import build_finetune_model
from transfer_pipe.heads.card import HeadCard, HeadListing
from transfer_pipe.scores import Metrics

# Test metrics as evaluate() wrote them into card.json while they were a plain dict, with
# five classes or fewer (no top-5 key) and with more (the key present, after the CI).
METRICS: dict[str, Any] = {
    "n": 4,
    "classes": ["a", "b"],
    "accuracy": 0.75,
    "accuracy_ci95": [0.25, 1.0],
    "macro_f1": 0.7333333333333334,
    "balanced_accuracy": 0.75,
    "ece": 0.30000000000000004,
    "ece_bins": 15,
    "per_class": [
        {"class": "a", "precision": 1.0, "recall": 0.5, "f1": 0.6666666666666666, "support": 2},
        {"class": "b", "precision": 0.6666666666666666, "recall": 1.0, "f1": 0.8, "support": 2},
    ],
    "confusion_matrix": [[1, 1], [0, 2]],
}
METRICS_6: dict[str, Any] = {
    "n": 3, "classes": ["c0", "c1", "c2", "c3", "c4", "c5"], "accuracy": 0.6666666666666666,
    "accuracy_ci95": [0.0, 1.0], "top5_accuracy": 0.6666666666666666,
    "macro_f1": 0.27777777777777773, "balanced_accuracy": 0.6666666666666666,
    "ece": 0.16666666666666666, "ece_bins": 15,
    "per_class": [
        {"class": f"c{i}", "precision": p, "recall": r, "f1": f, "support": n}
        for i, (p, r, f, n) in enumerate([(0.5, 1.0, 0.6666666666666666, 1), (1.0, 1.0, 1.0, 1),
                                          (0.0, 0.0, 0.0, 0), (0.0, 0.0, 0.0, 0),
                                          (0.0, 0.0, 0.0, 0), (0.0, 0.0, 0.0, 1)])
    ],
    "confusion_matrix": [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0],
                         [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]],
}  # fmt: skip
TASK = {"name": "source", "mapping": None, "labels_file": None, "digest": "ab" * 32}
PREPROCESSING = {
    "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "resize": "squash",
    "interpolation": "bilinear",
}  # fmt: skip
# Cards as the dict-building code wrote them (same keys, values shortened).
OLD_FINETUNE_CARD: dict[str, Any] = {
    "feature_set": "0123456789abcdef", "store": "/s", "source": "folder /data",
    "backbone": "tiny_test", "weights_digest": "d" * 64, "preprocessing": PREPROCESSING,
    "task": TASK, "classes": ["a", "b"], "splits": {"train": 8, "val": 2, "test": 4,
                                                     "origin": "source"},
    "policy": "top-1", "lp_ft": True, "probe_head_id": "source-logreg-1",
    "hyperparameters": {"lr": 1e-4, "augment": "affine", "bn": "frozen"},
    "trainable_segments": ["stages.1", "head"], "trainable_parameters": 1234,
    "result": {
        "run_id": "source-top-1-lpft-9", "head_id": "source-top-1-lpft-9",
        "head": "finetune top-1 lp-ft", "task": "source", "layer": "penultimate",
        "policy": "top-1", "lp_ft": True, "epochs": 2, "best_epoch": 2, "stopped": "epochs",
        "history": [{"epoch": 1, "train_loss": 1.0, "val_accuracy": 0.5}],
        "skipped_images": [{"split": "train", "sample_id": "train/3", "reason": "not-an-image"}],
        "device": "cpu", "image_size": 32, "chosen": {"epoch": 2}, "metrics": METRICS,
        "probe": {"head_id": "source-logreg-1", "metrics": {**METRICS_6, "accuracy": 0.5}},
        "seconds": {"train": 3.5}, "checkpoint": "/s/finetune/x/checkpoints/best.pt",
    },
    "libraries": {"torch": "2.5"}, "created": "2025-01-01T00:00:00+00:00",
    "run_id": "source-top-1-lpft-9", "model_file": "model.safetensors",
}  # fmt: skip
OLD_HEAD_CARD: dict[str, Any] = {
    "feature_set": "0123456789abcdef", "store": "/s", "source": "folder /data",
    "backbone": "tiny_test", "weights_digest": "d" * 64, "preprocessing": PREPROCESSING,
    "embedding_key": "e" * 16, "dtype": "float32", "layer": "penultimate", "task": TASK,
    "classes": ["a", "b"], "splits": {"train": 8, "val": 2, "test": 4, "origin": "source",
                                      "dropped": 0},
    "shots": None, "shot_seed": None, "head": "logreg", "estimator": "LBFGSLinearClassifier",
    "params": {"C": 1.0}, "chosen": {"C": 1.0}, "validation_curve": [{"C": 1.0, "val": 0.5}],
    "metrics": METRICS, "seconds": {"select": 1.0, "refit": 0.5},
    "libraries": {"numpy": "2.1"}, "created": "2025-01-01T00:00:00+00:00",
    "head_id": "source-logreg-1", "model_file": "model.safetensors",
}  # fmt: skip


def assert_keeps(old: Mapping[str, Any], new: Mapping[str, Any], where: str = "card") -> None:
    """Every key of ``old`` is in ``new`` with the same value (new keys may be added)."""
    for key, value in old.items():
        assert key in new, f"{where}.{key} is gone"
        if isinstance(value, Mapping):
            assert_keeps(value, new[key], f"{where}.{key}")
        else:
            assert new[key] == value, f"{where}.{key}"


def test_an_old_finetune_card_reads_and_writes_back_every_key() -> None:
    card = FinetuneCard.from_dict(json.loads(json.dumps(OLD_FINETUNE_CARD)))
    assert card.result.probe.metrics.accuracy == 0.5
    assert card.result.probe.metrics.top5_accuracy == METRICS_6["top5_accuracy"]
    assert card.result.metrics.per_class[1].name == "b"
    assert card.result.skipped_images[0].sample_id == "train/3"
    assert card.task.name == "source" and card.splits.test == 4
    # Mutation: dropping head_id from FinetuneResult.to_dict (older readers key the
    # report tables by it) makes this fail.
    assert_keeps(OLD_FINETUNE_CARD, json.loads(json.dumps(card.to_dict())))
    assert FinetuneCard.from_dict(card.to_dict()) == card
    listing = FinetuneListing.of(card)
    assert (listing.accuracy, listing.probe_accuracy, listing.epochs) == (0.75, 0.5, 2)
    # Written before init, the probe's validation accuracy and the verdict: a pretrained
    # run with no verdict (nothing to judge by). Mutation: a new field without a default
    # (e.g. FinetuneCard.init) makes the old card unreadable.
    assert card.init == "pretrained" and card.result.init == "pretrained"
    assert card.result.probe.val_accuracy is None and not card.result.below_probe
    assert card.result.compared is None and card.result.val_accuracy is None  # no epoch 2 row
    assert (listing.init, listing.below_probe) == ("pretrained", False)


def test_a_card_with_a_verdict_and_a_compared_run_round_trips() -> None:
    old = FinetuneCard.from_dict(copy.deepcopy(OLD_FINETUNE_CARD))
    compared = RunScore("source-scratch-full-1", "scratch full", "random", 0.4, old.result.metrics)
    probe = replace(old.result.probe, val_accuracy=0.9)
    result = replace(old.result, probe=probe, below_probe=True, verdict="below", compared=compared)
    card = replace(old, init="pretrained", result=result)
    written = json.loads(json.dumps(card.to_dict()))
    assert written["result"]["compared"]["run_id"] == "source-scratch-full-1"
    # Mutation: FinetuneResult.from_dict leaving ``compared`` a dict fails the equality.
    assert FinetuneCard.from_dict(written) == card


def test_an_old_head_card_reads_and_writes_back_every_key() -> None:
    card = HeadCard.from_dict(json.loads(json.dumps(OLD_HEAD_CARD)))
    assert card.task.digest == "ab" * 32 and card.splits.origin == "source"
    assert_keeps(OLD_HEAD_CARD, json.loads(json.dumps(card.to_dict())))
    assert HeadCard.from_dict(card.to_dict()) == card
    assert HeadListing.of(card).task == "source"


@pytest.mark.parametrize("old", [METRICS, METRICS_6], ids=["2 classes", "6 classes"])
def test_old_metrics_read_back_and_write_the_same_json(old: dict[str, Any]) -> None:
    """The metrics of a card.json written before they were typed read back field by field
    and write back the same JSON text: the same keys, values and order, no key added.
    Mutation: renaming ``Metrics.macro_f1`` (mypy also flags every reader), or writing
    ``top5_accuracy: null`` for five classes or fewer, makes this fail."""
    metrics = Metrics.from_dict(json.loads(json.dumps(old)))
    assert metrics.macro_f1 == old["macro_f1"] and metrics.ece_bins == 15
    assert metrics.accuracy_ci95 == tuple(old["accuracy_ci95"])
    assert [row.name for row in metrics.per_class] == old["classes"]
    assert metrics.per_class[0].support == old["per_class"][0]["support"]
    assert json.dumps(metrics.to_dict()) == json.dumps(old)
    assert Metrics.from_dict(metrics.to_dict()) == metrics


def test_old_card_metrics_round_trip_through_the_cards() -> None:
    """A whole old card's ``metrics`` (a head's, a run's and its probe's) comes back as
    the same JSON after reading the card and writing it again."""
    head = HeadCard.from_dict(json.loads(json.dumps(OLD_HEAD_CARD)))
    # Mutation: a card's from_dict that leaves its metrics a dict fails these equalities.
    assert head.result.metrics == Metrics.from_dict(METRICS)
    assert json.dumps(head.to_dict()["metrics"]) == json.dumps(METRICS)
    run = FinetuneCard.from_dict(json.loads(json.dumps(OLD_FINETUNE_CARD)))
    assert run.result.metrics == Metrics.from_dict(METRICS)
    assert run.result.probe.metrics == Metrics.from_dict({**METRICS_6, "accuracy": 0.5})
    written = run.to_dict()["result"]
    assert json.dumps(written["metrics"]) == json.dumps(METRICS)
    assert written["probe"]["metrics"] == {**METRICS_6, "accuracy": 0.5}


def test_metrics_missing_a_field_names_it() -> None:
    broken = {k: v for k, v in METRICS.items() if k != "ece"}
    with pytest.raises(TransferPipeError, match=r"metrics.*'ece'"):
        Metrics.from_dict(broken)


def test_a_card_missing_a_field_names_the_card_and_the_field() -> None:
    broken = copy.deepcopy(OLD_FINETUNE_CARD)
    del broken["result"]["best_epoch"]
    with pytest.raises(TransferPipeError, match=r"source-top-1-lpft-9.*best_epoch"):
        FinetuneCard.from_dict(broken)


def test_a_saved_run_reads_back_and_an_unfinished_one_reads_as_none(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    card = FinetuneCard.from_dict(OLD_FINETUNE_CARD)
    model = build_finetune_model(get_backbone("tiny_test"), 2, "top-1", 32)
    assert read_card(store, card.run_id) is None  # never started
    folder = Path(save_finetuned(store, card, model))
    assert read_card(store, card.run_id) == card and list_cards(store) == [card]
    with safe_open(str(folder / card.model_file), framework="pt") as f:
        assert json.loads(f.metadata()["classes"]) == card.classes
        assert set(f.keys()) == set(model.state_dict())
    # Mutation: a read_card that raises on a missing card (the heads' old behaviour) fails.
    (folder / "card.json").unlink()  # as if the save was cut short
    assert read_card(store, card.run_id) is None and list_cards(store) == []
