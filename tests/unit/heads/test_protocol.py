"""The probe protocol: selection on validation rows only, refit on train + validation,
test rows used for nothing but the test metrics; every head kind; class probabilities."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.preprocessing import StandardScaler

from tests.support.synthetic import CLASSES, blobs, task_data
from transfer_pipe.config import HEAD_NAMES, TrainConfig
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.heads import protocol
from transfer_pipe.heads.card import HeadSelection
from transfer_pipe.heads.linear import LBFGSLinearClassifier
from transfer_pipe.heads.protocol import (
    HEAD_KINDS,
    ProtocolOptions,
    class_probabilities,
    fit_head,
    head_kind,
)
from transfer_pipe.heads.tasks import SplitRows, TaskData

FAST = ProtocolOptions(c_values=9, max_iter=50, refit_max_iter=200, device="cpu", bootstrap=20)


def _overlapping_problem(seed: int = 0, dim: int = 8) -> TaskData:
    """Three classes that overlap enough that the choice of C matters."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=0.8, size=(3, dim))
    return task_data(
        blobs(rng, centers, 60, prefix="tr"),
        blobs(rng, centers, 30, prefix="va"),
        blobs(rng, centers, 30, prefix="te"),
    )


def _separable_problem(seed: int = 0, dim: int = 8) -> TaskData:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(3, dim))
    return task_data(
        blobs(rng, centers, 80, prefix="tr"),
        blobs(rng, centers, 20, prefix="va"),
        blobs(rng, centers, 40, prefix="te"),
    )


def _with_other_test_rows(data: TaskData, seed: int = 99) -> TaskData:
    """The same task with its test rows replaced: other features, permuted labels."""
    rng = np.random.default_rng(seed)
    test = data.test
    other = SplitRows(
        (rng.normal(loc=5.0, scale=4.0, size=test.features.shape)).astype(np.float32),
        rng.permutation(test.labels),
        np.array([f"other{i}" for i in range(len(test))]),
    )
    assert not np.array_equal(other.labels, test.labels)
    return replace(data, test=other)


def _best_of(curve: list[dict[str, Any]]) -> int:
    """The rule written out again: the best accuracy, then the lowest log loss."""
    best = max(point["val_accuracy"] for point in curve)
    tied = [point for point in curve if point["val_accuracy"] == best]
    return curve.index(sorted(tied, key=lambda point: point["val_log_loss"])[0])


# -- no test leakage ---------------------------------------------------------------------


def test_logreg_test_rows_influence_only_the_test_metrics() -> None:
    data = _overlapping_problem()
    swapped = _with_other_test_rows(data)
    first = fit_head("logreg", data, FAST)
    second = fit_head("logreg", swapped, FAST)

    assert first.chosen == second.chosen
    assert first.validation == second.validation
    head, other_head = first.model.named_steps["head"], second.model.named_steps["head"]
    np.testing.assert_array_equal(head.coef_, other_head.coef_)
    np.testing.assert_array_equal(head.intercept_, other_head.intercept_)
    scaler, other_scaler = first.model.named_steps["scale"], second.model.named_steps["scale"]
    np.testing.assert_array_equal(scaler.mean_, other_scaler.mean_)
    np.testing.assert_array_equal(scaler.scale_, other_scaler.scale_)
    # ... while the test metrics do follow the test rows.
    assert first.metrics.accuracy != second.metrics.accuracy
    predicted = first.model.predict(data.test.features)
    assert first.metrics.accuracy == pytest.approx(np.mean(predicted == data.test.labels))

    # The grid is the one asked for, and the chosen C is its best validation value (ties
    # on accuracy: the lowest log loss), chosen on the 90 validation rows.
    grid = [point["C"] for point in first.validation]
    np.testing.assert_allclose(grid, np.logspace(-6, 5, 9))
    accuracies = [point["val_accuracy"] for point in first.validation]
    assert len(set(accuracies)) > 1  # the problem is hard enough for C to matter
    assert first.chosen == {"C": grid[_best_of(first.validation)]}
    assert first.selection == HeadSelection("validation", 90, 30)


@pytest.mark.parametrize("name", [n for n in HEAD_KINDS if n != "logreg"])
def test_other_heads_ignore_test_rows_too(name: str) -> None:
    data = _overlapping_problem(seed=1)
    first = fit_head(name, data, FAST)
    second = fit_head(name, _with_other_test_rows(data), FAST)
    assert first.chosen == second.chosen
    assert first.validation == second.validation
    probe = np.random.default_rng(5).normal(size=(50, 8)).astype(np.float32)
    np.testing.assert_array_equal(
        class_probabilities(first.model, probe, CLASSES),
        class_probabilities(second.model, probe, CLASSES),
    )


# -- selection uses the validation rows --------------------------------------------------


def test_selection_follows_the_validation_rows() -> None:
    """Same training rows, two validation sets. Training is 3:1 imbalanced, so the most
    regularized C (weights ~0, intercepts = log priors) predicts the majority class "a"
    everywhere. Validation A holds minority-looking rows labelled "a": only that
    degenerate model gets them right, so the smallest C must win. Validation B is clean
    and balanced: it needs real weights, so a much larger C must win. (Validation A has
    no "b" row, which would send the choice to cross-validation: this test is about the
    validation rows deciding, so they always do here.)"""
    rng = np.random.default_rng(3)
    centers = np.array([[-1.5] * 4, [1.5] * 4])
    train = blobs(rng, centers, [150, 50], ("a", "b"), "tr")
    test = blobs(rng, centers, [40, 40], ("a", "b"), "te")
    minority_like = blobs(rng, centers[1:], 40, ("a",), "vA")
    clean = blobs(rng, centers, [40, 40], ("a", "b"), "vB")

    on_validation = replace(FAST, few_val_rows_per_class=0)
    prefers_strong = fit_head(
        "logreg", task_data(train, minority_like, test, ("a", "b")), on_validation
    )
    prefers_weak = fit_head("logreg", task_data(train, clean, test, ("a", "b")), on_validation)

    grid = np.logspace(-6, 5, 9)
    assert prefers_strong.chosen["C"] == pytest.approx(grid[0])
    assert prefers_strong.validation[0]["val_accuracy"] == 1.0
    assert prefers_strong.validation[-1]["val_accuracy"] < 0.5
    assert prefers_weak.chosen["C"] > 1e-3  # past the degenerate, all-"a" end of the grid
    assert prefers_weak.validation[0]["val_accuracy"] == 0.5
    assert max(p["val_accuracy"] for p in prefers_weak.validation) > 0.9


# -- standardization ---------------------------------------------------------------------


def test_scaler_fits_train_for_selection_and_train_plus_val_for_refit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _overlapping_problem(seed=2)
    shifted = SplitRows(data.test.features + 100.0, data.test.labels, data.test.sample_ids)
    data = replace(data, test=shifted)
    fitted_on: list[np.ndarray] = []

    class RecordingScaler(StandardScaler):
        def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> RecordingScaler:
            fitted_on.append(np.array(X, copy=True))
            super().fit(X, y, sample_weight)
            return self

    monkeypatch.setattr(protocol, "StandardScaler", RecordingScaler)
    fitted = fit_head("logreg", data, FAST)

    assert len(fitted_on) == 2
    np.testing.assert_array_equal(fitted_on[0], data.train.features)
    both = np.concatenate([data.train.features, data.val.features])
    np.testing.assert_array_equal(fitted_on[1], both)

    scaler = fitted.model.named_steps["scale"]
    np.testing.assert_allclose(scaler.mean_, both.astype(np.float64).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(scaler.scale_, both.astype(np.float64).std(axis=0), rtol=1e-5)
    with_test = np.concatenate([both, data.test.features]).mean(axis=0)
    assert np.all(np.abs(scaler.mean_ - with_test) > 10)


@pytest.mark.parametrize("draw", ["few_shot", "label_subset"])
def test_a_drawn_share_of_the_labels_is_refitted_on_its_drawn_rows_alone(draw: str) -> None:
    """A learning curve's 1 % point trains on 1 % of the labels, not on them plus every
    validation row (validation only chooses C)."""
    data = _overlapping_problem(seed=3)
    drawn = data.few_shot(4, seed=0) if draw == "few_shot" else data.label_subset(0.1, seed=0)
    fitted = fit_head("logreg", drawn, FAST)
    # Mutation: refitting every drawn run on train + validation (the former protocol) makes
    # the scaler see the validation rows too.
    assert fitted.model.named_steps["scale"].n_samples_seen_ == len(drawn.train)
    whole = fit_head("logreg", data, FAST)
    assert whole.model.named_steps["scale"].n_samples_seen_ == len(data.train) + len(data.val)


# -- every head --------------------------------------------------------------------------


_CHOSEN_KEYS = {
    "logreg": {"C"},
    "svm": {"C"},
    "knn": {"n_neighbors"},
    "ridge": {"alpha"},
    "torch-linear": {"max_epochs", "early_stopping"},
    "mlp": {"max_epochs", "early_stopping"},
}


def test_every_head_kind_is_covered_here() -> None:
    assert set(HEAD_KINDS) == set(_CHOSEN_KEYS)


@pytest.mark.parametrize("name", list(HEAD_KINDS))
def test_every_head_learns_a_three_class_problem(name: str) -> None:
    data = _separable_problem()
    fitted = fit_head(name, data, replace(FAST, c_values=12))

    assert fitted.head == name
    assert set(fitted.chosen) == _CHOSEN_KEYS[name]
    assert fitted.validation
    assert fitted.metrics.accuracy > 0.8
    assert 0.0 <= fitted.metrics.macro_f1 <= 1.0 and fitted.metrics.macro_f1 > 0.8
    assert fitted.metrics.n == len(data.test)
    assert set(fitted.seconds) == {"select", "refit", "evaluate"}
    assert all(s >= 0 for s in fitted.seconds.values())
    assert list(fitted.model.named_steps) == ["scale", "head"]
    head = fitted.model.named_steps["head"]
    assert set(head.get_params()) >= set(fitted.chosen)
    assert {k: head.get_params()[k] for k in fitted.chosen} == fitted.chosen
    predicted = fitted.model.predict(data.test.features)
    assert set(predicted) <= set(CLASSES)
    assert fitted.metrics.accuracy == pytest.approx(np.mean(predicted == data.test.labels))


def test_torch_heads_refit_for_the_chosen_number_of_epochs() -> None:
    fitted = fit_head("torch-linear", _separable_problem(seed=4), FAST)
    best = fitted.chosen["max_epochs"]
    assert fitted.chosen["early_stopping"] is False
    assert 1 <= best <= len(fitted.validation)
    assert [p["epoch"] for p in fitted.validation] == list(range(1, len(fitted.validation) + 1))
    assert fitted.model.named_steps["head"].n_epochs_ == best


def test_linear_heads_refit_with_the_refit_iteration_budget() -> None:
    fitted = fit_head("svm", _separable_problem(seed=5), FAST)
    head = fitted.model.named_steps["head"]
    assert (head.max_iter, head.warm_start, head.loss) == (200, False, "squared_hinge")
    np.testing.assert_allclose([p["C"] for p in fitted.validation], np.logspace(-6, 0, 7))


def test_the_default_c_grid_is_45_log_spaced_values_from_1e_6_to_1e5() -> None:
    """The documented probe (docs/pages/heads.md): C from 45 log-spaced values between 1e-6
    and 1e5, as a heads run gets them by default, and walked in full, in ascending order, by
    the logreg head."""
    # Mutation: a default of 44 values, or c_max 1e4, in TrainConfig fails the first loop;
    # the same in ProtocolOptions fails it too; a grid walked in reverse fails the last line.
    for grid in (
        ProtocolOptions.from_config(TrainConfig(feature_set="any")).c_grid(),
        ProtocolOptions().c_grid(),
    ):
        assert len(grid) == 45
        assert grid[0] == pytest.approx(1e-6, rel=1e-9) and grid[-1] == pytest.approx(1e5, rel=1e-9)
        steps = np.diff(np.log10(grid))
        np.testing.assert_allclose(steps, 11 / 44)  # 11 decades in 44 equal steps
    quick = ProtocolOptions(max_iter=2, refit_max_iter=5, device="cpu", bootstrap=2)
    fitted = fit_head("logreg", _separable_problem(), quick)
    assert [point["C"] for point in fitted.validation] == list(ProtocolOptions().c_grid())


# -- class probabilities and head lookup -------------------------------------------------


def test_class_probabilities_follow_the_task_class_order() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3.0, size=(3, 5))
    rows = blobs(rng, centers, 30)
    model = LogisticRegression().fit(rows.features, rows.labels)  # classes_ ant, bee, cat
    order = ("cat", "ant", "bee")
    out = class_probabilities(model, rows.features, order)
    expected = model.predict_proba(rows.features)
    for column, label in enumerate(order):
        np.testing.assert_array_equal(
            out[:, column], expected[:, list(model.classes_).index(label)]
        )


def test_class_absent_from_training_gets_zero_probability() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(scale=3.0, size=(2, 5))
    rows = blobs(rng, centers, 30, ("ant", "cat"))
    model = LogisticRegression().fit(rows.features, rows.labels)
    out = class_probabilities(model, rows.features, CLASSES)
    assert out.shape == (len(rows), 3)
    np.testing.assert_array_equal(out[:, 1], 0.0)  # "bee" was never seen
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    np.testing.assert_array_equal(
        np.array(CLASSES)[out.argmax(axis=1)], model.predict(rows.features)
    )


def test_class_probabilities_of_margin_heads_are_a_softmax() -> None:
    rng = np.random.default_rng(2)
    centers = rng.normal(scale=3.0, size=(3, 5))
    rows = blobs(rng, centers, 30)
    for n_classes in (2, 3):
        keep = np.isin(rows.labels, CLASSES[:n_classes])
        model = RidgeClassifier().fit(rows.features[keep], rows.labels[keep])
        out = class_probabilities(model, rows.features, CLASSES)
        assert out.shape == (len(rows), 3)
        np.testing.assert_allclose(out.sum(axis=1), 1.0)
        assert np.all(out >= 0)
        predicted = np.array(CLASSES)[out.argmax(axis=1)]
        np.testing.assert_array_equal(predicted, model.predict(rows.features))
        if n_classes == 3:
            margins = model.decision_function(rows.features).astype(np.float64)
            exp = np.exp(margins - margins.max(axis=1, keepdims=True))
            np.testing.assert_allclose(out, exp / exp.sum(axis=1, keepdims=True), rtol=1e-12)


def test_fit_head_restores_the_callers_torch_threads() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fit_head("ridge", _separable_problem(), FAST)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_unknown_head_lists_the_heads() -> None:
    with pytest.raises(TransferPipeError) as caught:
        head_kind("nope")
    message = str(caught.value)
    assert "'nope'" in message
    for name in ("logreg", "svm", "knn", "ridge", "torch-linear", "mlp"):
        assert name in message
    with pytest.raises(TransferPipeError):
        fit_head("nope", _separable_problem(), FAST)


def test_the_protocol_builds_exactly_the_heads_the_options_offer() -> None:
    # The CLI, the UI form and the config check take head names from config.HEAD_NAMES;
    # a head added to one and not the other would be offered and then fail, or never
    # be offered. Mutation: adding a kind to HEAD_KINDS alone fails here.
    assert tuple(HEAD_KINDS) == HEAD_NAMES


@pytest.mark.parametrize("name", ["logreg", "svm"])
def test_the_refit_is_offered_the_chosen_solution_as_a_start(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refit on train + validation is offered the solution the walk reached at the
    chosen value on the training rows (`LBFGSLinearClassifier.fit`'s ``init``; a unit test
    in test_linear.py shows what such a start saves)."""
    offered: list[Any] = []
    fit = LBFGSLinearClassifier.fit

    def recording(self: LBFGSLinearClassifier, X: Any, y: Any, init: Any = None) -> Any:
        offered.append(init)
        return fit(self, X, y, init=init)

    monkeypatch.setattr(LBFGSLinearClassifier, "fit", recording)
    data = _overlapping_problem(seed=4, dim=12)
    fitted = fit_head(name, data, FAST)
    # Mutation: the refit without its `head__init` start is offered nothing.
    *walk, refit = offered
    assert all(init is None for init in walk) and refit is not None
    coef, intercept = refit
    assert coef.shape == fitted.model.named_steps["head"].coef_.shape
    assert intercept.shape == (len(data.classes),)
