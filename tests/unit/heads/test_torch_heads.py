"""The torch heads: scikit-learn contract, learning, early stopping, determinism, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from sklearn.utils.estimator_checks import parametrize_with_checks

from transfer_pipe.heads.torch_heads import (
    TorchLinearClassifier,
    TorchMLPClassifier,
    _TorchHead,
)

HEADS = [TorchLinearClassifier, TorchMLPClassifier]


def _small(cls: type[_TorchHead], **params: object) -> _TorchHead:
    """A head sized for tests: CPU, small batches, a higher rate so few epochs suffice."""
    defaults: dict[str, object] = {"device": "cpu", "lr": 0.05, "batch_size": 32, "max_epochs": 20}
    if cls is TorchMLPClassifier:
        defaults["hidden"] = 16
    return cls(**{**defaults, **params})  # type: ignore[arg-type]


def _string_problem(
    n: int = 600, n_features: int = 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated classes with string labels."""
    X, y = make_classification(
        n_samples=n,
        n_features=n_features,
        n_informative=5,
        n_classes=3,
        class_sep=2.0,
        random_state=seed,
    )
    return X.astype(np.float32), np.array(["cat", "dog", "emu"])[y]


@parametrize_with_checks(
    [
        _small(TorchLinearClassifier, max_epochs=10),
        _small(TorchMLPClassifier, max_epochs=10, early_stopping=False),
    ]
)
def test_sklearn_estimator_checks(estimator: _TorchHead, check: object) -> None:
    check(estimator)  # type: ignore[operator]


@pytest.mark.parametrize("cls", HEADS)
def test_learns_a_separable_problem_with_string_labels(cls: type[_TorchHead]) -> None:
    X, y = _string_problem()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    head = _small(cls).fit(X_tr, y_tr)
    assert list(head.classes_) == ["cat", "dog", "emu"]
    assert head.score(X_te, y_te) > 0.9
    proba = head.predict_proba(X_te)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert set(head.predict(X_te)) <= set(head.classes_)


def test_early_stopping_uses_the_given_validation_split_and_restores_the_best_epoch() -> None:
    # Few samples, many noisy features and a wide MLP: it overfits, so validation loss turns up.
    X, y = make_classification(
        n_samples=160, n_features=100, n_informative=3, flip_y=0.2, random_state=1
    )
    X_tr, X_val, y_tr, y_val = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)
    head = _small(TorchMLPClassifier, hidden=256, max_epochs=200, patience=5, lr=1e-2)
    head.fit(X_tr, y_tr, X_val=X_val, y_val=y_val)

    assert head.n_epochs_ < 200
    assert head.n_epochs_ == head.best_epoch_ + 5 == len(head.history_)
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(head.history_[0])
    best = head.history_[head.best_epoch_ - 1]
    assert best["val_loss"] == min(h["val_loss"] for h in head.history_)
    # The restored weights are the best epoch's, scored on exactly the X_val/y_val we passed.
    assert log_loss(y_val, head.predict_proba(X_val)) == pytest.approx(best["val_loss"], rel=1e-4)
    assert head.score(X_val, y_val) == pytest.approx(best["val_accuracy"])


@pytest.mark.parametrize("cls", HEADS)
def test_without_early_stopping_runs_exactly_max_epochs(cls: type[_TorchHead]) -> None:
    X, y = _string_problem(n=200)
    head = _small(cls, early_stopping=False, max_epochs=7).fit(X, y)
    assert head.n_epochs_ == head.best_epoch_ == len(head.history_) == 7
    assert "val_loss" not in head.history_[0]


def test_validation_fraction_split_is_used_when_no_validation_data_is_given() -> None:
    X, y = _string_problem(n=200)
    head = _small(TorchLinearClassifier, max_epochs=3).fit(X, y)
    assert "val_loss" in head.history_[0] and 1 <= head.best_epoch_ <= head.n_epochs_ <= 3


def test_unknown_validation_labels_are_rejected() -> None:
    X, y = _string_problem(n=100)
    with pytest.raises(ValueError, match="not seen"):
        _small(TorchLinearClassifier).fit(X, y, X_val=X[:3], y_val=["cat", "dog", "yak"])


@pytest.mark.parametrize("cls", HEADS)
def test_fit_is_deterministic_and_leaves_the_global_rng_alone(cls: type[_TorchHead]) -> None:
    X, y = _string_problem(n=200)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = _small(cls, max_epochs=5).fit(X, y).predict_proba(X)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(456)  # a different global seed must not matter
    second = _small(cls, max_epochs=5).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, second)
    other = _small(cls, max_epochs=5, random_state=1).fit(X, y).predict_proba(X)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("cls", HEADS)
def test_rebuilt_from_tensors_predicts_identically(cls: type[_TorchHead]) -> None:
    """What ``heads.persist`` stores (tensors, params, classes) rebuilds the same head."""
    X, y = _string_problem(n=200)
    head = _small(cls, max_epochs=5).fit(X, y)
    tensors = {k: v.clone() for k, v in head.head_tensors().items()}
    loaded = cls.from_tensors(tensors, head.get_params(), head.classes_.tolist())
    assert type(loaded) is cls
    assert loaded.get_params() == head.get_params()
    np.testing.assert_array_equal(loaded.classes_, head.classes_)
    np.testing.assert_array_equal(loaded.predict_proba(X), head.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), head.predict(X))
