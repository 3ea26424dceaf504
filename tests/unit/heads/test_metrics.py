"""evaluate() and softmax() against hand-computed cases and independent computations."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from transfer_pipe.heads.metrics import evaluate, expected_calibration_error, softmax
from transfer_pipe.scores import Metrics

CLASSES = ["cat", "dog", "fox"]


def one_hot_proba(pred: list[int], n_classes: int, confidence: float = 0.8) -> np.ndarray:
    """Probabilities whose argmax is ``pred``, with the rest spread evenly."""
    rest = (1.0 - confidence) / (n_classes - 1)
    proba = np.full((len(pred), n_classes), rest)
    proba[np.arange(len(pred)), pred] = confidence
    return proba


@pytest.fixture
def small_case() -> Metrics:
    # true:  cat cat cat dog dog fox
    # pred:  cat cat dog dog fox fox
    y = np.array(["cat", "cat", "cat", "dog", "dog", "fox"])
    proba = one_hot_proba([0, 0, 1, 1, 2, 2], 3)
    return evaluate(y, proba, CLASSES, bootstrap=200)


def test_hand_computed_small_case(small_case: Metrics) -> None:
    m = small_case
    assert m.n == 6
    assert m.classes == CLASSES
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.confusion_matrix == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    by_class = {row.name: row for row in m.per_class}
    assert [row.name for row in m.per_class] == CLASSES
    # cat: tp 2, fp 0, fn 1; dog: tp 1, fp 1, fn 1; fox: tp 1, fp 1, fn 0
    assert by_class["cat"].precision == pytest.approx(1.0)
    assert by_class["cat"].recall == pytest.approx(2 / 3)
    assert by_class["cat"].f1 == pytest.approx(0.8)
    assert by_class["dog"].precision == pytest.approx(0.5)
    assert by_class["dog"].recall == pytest.approx(0.5)
    assert by_class["fox"].precision == pytest.approx(0.5)
    assert by_class["fox"].f1 == pytest.approx(2 / 3)
    assert [row.support for row in m.per_class] == [3, 2, 1]
    assert m.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m.balanced_accuracy == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    # All rows have confidence 0.8 (one bin), accuracy 4/6: ECE = |4/6 - 0.8|.
    assert m.ece == pytest.approx(abs(4 / 6 - 0.8))
    assert m.ece_bins == 15
    assert m.top5_accuracy is None
    assert "top5_accuracy" not in m.to_dict()


def test_result_is_plain_json(small_case: Metrics) -> None:
    def assert_plain(value: object) -> None:
        if isinstance(value, dict):
            for v in value.values():
                assert_plain(v)
        elif isinstance(value, list):
            for v in value:
                assert_plain(v)
        else:
            assert type(value) in (int, float, str), f"{value!r} is {type(value)}"

    as_dict = small_case.to_dict()
    assert_plain(as_dict)
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert Metrics.from_dict(json.loads(json.dumps(as_dict))) == small_case


def test_matches_sklearn_on_random_predictions() -> None:
    rng = np.random.default_rng(1)
    classes = [f"c{i}" for i in range(4)]
    y_idx = rng.integers(0, 4, size=500)
    proba = softmax(rng.normal(size=(500, 4)) + 1.5 * np.eye(4)[y_idx])
    m = evaluate(np.array(classes)[y_idx], proba, classes)
    pred = proba.argmax(axis=1)
    assert m.accuracy == pytest.approx(np.mean(pred == y_idx))
    assert m.macro_f1 == pytest.approx(f1_score(y_idx, pred, average="macro"))
    assert m.balanced_accuracy == pytest.approx(balanced_accuracy_score(y_idx, pred))
    assert np.array(m.confusion_matrix).sum() == 500
    assert np.trace(np.array(m.confusion_matrix)) == np.sum(pred == y_idx)


def test_top5_accuracy_present_only_above_five_classes() -> None:
    five = [f"c{i}" for i in range(5)]
    proba5 = one_hot_proba([0, 1], 5)
    assert evaluate(np.array(["c0", "c2"]), proba5, five).top5_accuracy is None

    six = [*five, "c5"]
    # Row 0: true class ranks 1st; row 1: ranks 5th (in top 5); row 2: ranks 6th (last).
    proba = np.array(
        [
            [0.50, 0.10, 0.10, 0.10, 0.10, 0.10],
            [0.30, 0.25, 0.20, 0.15, 0.07, 0.03],
            [0.30, 0.25, 0.20, 0.15, 0.07, 0.03],
        ]
    )
    m = evaluate(np.array(["c0", "c4", "c5"]), proba, six)
    assert m.top5_accuracy == pytest.approx(2 / 3)
    assert m.accuracy == pytest.approx(1 / 3)


def test_unknown_labels_raise_naming_them() -> None:
    with pytest.raises(ValueError, match=r"wolf") as info:
        evaluate(np.array(["cat", "wolf", "bear"]), one_hot_proba([0, 1, 2], 3), CLASSES)
    assert "bear" in str(info.value)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        evaluate(np.array(["cat", "dog"]), one_hot_proba([0, 1], 4), CLASSES)


def test_ece_near_zero_when_calibrated_and_large_when_overconfident() -> None:
    rng = np.random.default_rng(0)
    n = 50_000
    confidence = rng.uniform(0.5, 1.0, size=n)
    calibrated = rng.uniform(size=n) < confidence  # right with probability = confidence
    assert expected_calibration_error(confidence, calibrated, 15) < 0.01

    # Binary head: always 0.99 sure, right only 60% of the time -> ECE close to 0.39.
    y_idx = (rng.uniform(size=n) < 0.5).astype(int)
    right = rng.uniform(size=n) < 0.6
    pred = np.where(right, y_idx, 1 - y_idx)
    proba = np.where(pred[:, None] == np.arange(2), 0.99, 0.01)
    m = evaluate(np.array(["a", "b"])[y_idx], proba, ["a", "b"], bootstrap=10)
    assert m.ece == pytest.approx(0.99 - m.accuracy, abs=1e-9)
    assert m.ece > 0.3


def test_ece_sums_over_bins_independently() -> None:
    # Two bins: conf 0.95 (2 rows, both right) and conf 0.55 (2 rows, none right).
    confidence = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([True, True, False, False])
    expected = 0.5 * abs(1.0 - 0.95) + 0.5 * abs(0.0 - 0.55)
    assert expected_calibration_error(confidence, correct, 15) == pytest.approx(expected)


def make_accuracy_case(n: int, accuracy: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_idx = rng.integers(0, 2, size=n)
    right = np.arange(n) < round(accuracy * n)
    pred = np.where(right, y_idx, 1 - y_idx)
    return np.array(["a", "b"])[y_idx], one_hot_proba(list(pred), 2)


def test_ci_contains_accuracy_and_narrows_with_more_rows() -> None:
    widths = []
    for n in (200, 5_000):
        y, proba = make_accuracy_case(n, 0.8)
        m = evaluate(y, proba, ["a", "b"])
        low, high = m.accuracy_ci95
        assert low < m.accuracy < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # width ~ 1/sqrt(n): 5x narrower in theory


def test_ci_matches_index_resampling_bootstrap_and_is_seeded() -> None:
    y, proba = make_accuracy_case(400, 0.7)
    correct = proba.argmax(axis=1) == (y == "b")
    rng = np.random.default_rng(123)
    resampled = correct[rng.integers(0, 400, size=(4000, 400))].mean(axis=1)
    reference = np.percentile(resampled, [2.5, 97.5])
    m = evaluate(y, proba, ["a", "b"], bootstrap=4000, seed=5)
    assert m.accuracy_ci95 == pytest.approx(reference, abs=0.01)
    assert evaluate(y, proba, ["a", "b"], bootstrap=4000, seed=5).accuracy_ci95 == m.accuracy_ci95


def test_bootstrap_work_grows_with_resamples_not_with_rows_times_resamples() -> None:
    """The CI stays cheap on large test sets: no [resamples, rows] array is ever built.
    Measured in bytes, not seconds, so a busy machine cannot fail it.
    Mutation: index resampling (``correct[rng.integers(0, n, (resamples, n))]``) in
    _bootstrap_accuracy_ci allocates 80 MB of indices here and fails."""
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(10)]
    y = np.array(classes)[rng.integers(0, 10, size=10_000)]
    proba = softmax(rng.normal(size=(10_000, 10)))
    tracemalloc.start()
    try:
        evaluate(y, proba, classes, bootstrap=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000, f"{peak / 1e6:.1f} MB"  # 1000 x 10,000 indices: 80 MB


def test_softmax_rows_sum_to_one_and_are_stable() -> None:
    scores = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]])
    proba = softmax(scores)
    assert np.allclose(proba.sum(axis=1), 1.0)
    e = np.exp([1.0, 2.0, 3.0])
    assert np.allclose(proba[0], e / e.sum())
    assert np.allclose(proba[1], [0.5, 0.5, 0.0])


def test_softmax_binary_margin_is_logistic() -> None:
    margin = np.array([-800.0, -1.0, 0.0, 2.0, 800.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        proba = softmax(margin)
    assert proba.shape == (5, 2)
    assert np.allclose(proba[:, 1], 1 / (1 + np.exp(-np.clip(margin, -50, 50))))
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert proba[-1, 1] == 1.0 and proba[0, 0] == 1.0
