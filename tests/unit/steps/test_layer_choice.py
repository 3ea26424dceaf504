"""``--layer auto`` (``steps.layer_choice``): a sweep's advice when the store holds one for
this source, embedding and task; otherwise the best candidate on validation (each layer,
and all side by side), kept in the store's cache. A real Zarr store with three layers:
one carries the classes, one a weaker copy of them, one noise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.task_feature_set import KEY, build_feature_set
from transfer_pipe.config import TrainConfig
from transfer_pipe.heads.options import ProtocolOptions
from transfer_pipe.heads.tasks import SplitOptions, parse_task
from transfer_pipe.steps import layer_choice
from transfer_pipe.steps.layer_choice import choose_layer
from transfer_pipe.store import ZarrFeatureStore, open_store

CLASSES = ("ant", "bee", "cat")
SIGNAL, WEAK, NOISE = "stages.6", "stages.5", "penultimate"


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    from transfer_pipe.heads import protocol

    monkeypatch.setattr(protocol, "threads_per_task", lambda: 1)


@pytest.fixture
def store(tmp_path: Path) -> str:
    """60 training, 25 validation and 10 test rows per class."""
    url = str(tmp_path / "store")
    per_split = {"train": 60, "val": 25, "test": 10}
    labels = [c for split, n in per_split.items() for c in CLASSES for _ in range(n)]
    splits = [split for split, n in per_split.items() for _ in CLASSES for _ in range(n)]
    rng = np.random.default_rng(0)
    codes = np.array([CLASSES.index(label) for label in labels])
    signal = np.eye(3)[codes] * 2.0 + rng.normal(size=(len(labels), 3))
    weak = np.eye(3)[codes] * 0.8 + rng.normal(size=(len(labels), 3))
    build_feature_set(
        ZarrFeatureStore(url), labels, splits, dim=8,
        features=rng.normal(size=(len(labels), 8)),
        more_layers={SIGNAL: signal, WEAK: weak},
    )  # fmt: skip
    return url


def _choose(store: str, **options: Any) -> layer_choice.LayerChoice:
    config = TrainConfig(feature_set=KEY, store=store, c_values=8, **options)
    spec = open_store(store).spec(KEY)
    splits = SplitOptions(config.val_fraction, config.test_fraction, config.split_seed)
    options = ProtocolOptions.from_config(config)
    return choose_layer(config, KEY, spec, parse_task(config.task), splits, options)


def _sweep(store: str, layer: str, task: str = "source", created: str = "2026-12-01") -> None:
    """A sweep record as ``steps.sweep`` writes it, whose pretrained features are ``KEY``."""
    folder = Path(store) / layer_choice.SWEEPS_DIR / f"sweep-{layer}-{task}"
    folder.mkdir(parents=True)
    record = {
        "sweep_id": f"sweep-{layer}",
        "feature_sets": {"pretrained": KEY, "random": "elsewhere"},
        "task": task,
        "created": created,
        "recommendation": {"layer": layer},
        "depth": [{"init": "pretrained", "layer": layer, "val_accuracy": 0.9}],
    }
    (folder / layer_choice.SWEEP_RECORD).write_text(json.dumps(record))


def test_auto_picks_the_layer_that_carries_the_classes_on_validation(store: str) -> None:
    choice = _choose(store)
    # Every layer alone, then all side by side; the noise layer sits near chance.
    # Mutation: choosing the first candidate instead of the best fails here.
    assert list(choice.candidates) == [NOISE, SIGNAL, WEAK, f"{NOISE}+{SIGNAL}+{WEAK}"]
    assert choice.how == "validation" and choice.layer == SIGNAL
    assert choice.candidates[NOISE] < 0.5 < choice.candidates[WEAK] < choice.candidates[SIGNAL]
    assert f"{SIGNAL} {choice.candidates[SIGNAL]:.4f}" in choice.reason
    # A given layer is taken as it is.
    given = _choose(store, layer=WEAK)
    assert (given.layer, given.how) == (WEAK, "given")


def test_a_choice_is_made_once_and_read_from_the_cache(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _choose(store)

    def no_reads(*args: object) -> None:
        raise AssertionError("the features were read again")

    # Mutation: _validated without its cache lookup fails here.
    monkeypatch.setattr(layer_choice, "load_task", no_reads)
    assert _choose(store) == first
    with pytest.raises(AssertionError, match="read again"):
        _choose(store, split_seed=1)  # another split is another choice


def test_the_newest_sweep_of_this_source_and_task_decides(store: str) -> None:
    _sweep(store, WEAK, created="2026-12-01")
    _sweep(store, NOISE, task="fashion-mnist-groups", created="2026-12-03")  # another task
    choice = _choose(store)
    # Mutation: sweep_advice ignoring the record's task takes the newer sweep's NOISE.
    assert (choice.layer, choice.how) == (WEAK, "sweep")
    assert "sweep-stages.5" in choice.reason and "0.9000" in choice.reason
    _sweep(store, NOISE, created="2026-12-02")
    assert _choose(store).layer == NOISE  # the newest one


def test_a_sweep_layer_the_feature_set_lacks_falls_back_to_validation_and_says_so(
    store: str,
) -> None:
    _sweep(store, "stages.3")
    choice = _choose(store)
    assert choice.how == "validation" and choice.layer == SIGNAL
    assert "recommends stages.3, which this feature set lacks" in choice.reason
    assert "--layer stages.3" in choice.reason
