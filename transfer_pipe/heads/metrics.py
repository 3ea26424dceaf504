"""Test-set metrics for a classifier head: accuracy with a bootstrap CI, F1, calibration.

:func:`evaluate` returns a typed :class:`~transfer_pipe.scores.Metrics` whose fields are
plain Python numbers, strings and lists; its ``to_dict()`` is the JSON written next to a
saved head or shown as a Prefect artifact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from transfer_pipe.scores import ClassScores, Metrics

ECE_BINS = 15
_TOP_K = 5
# The least probability a log loss charges for: a one-hot guess (1-NN) that is wrong costs
# -log(1e-15) = 34.5 rather than infinity, so it still ranks below a hedged one.
_LEAST_PROBABILITY = 1e-15


def softmax(scores: np.ndarray) -> np.ndarray:
    """Class probabilities from class scores (logits or ``decision_function`` output).

    ``scores`` is ``[n, n_classes]``; or ``[n]`` for a binary margin (positive means
    the second class, as in scikit-learn), which goes through the logistic function.
    Returns a float64 ``[n, n_classes]`` (``[n, 2]`` for binary) array whose rows sum to 1.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        # softmax([0, s]) == [1 - sigmoid(s), sigmoid(s)], without overflow for large |s|.
        scores = np.column_stack([np.zeros_like(scores), scores])
    if scores.ndim != 2:
        raise ValueError(f"softmax expects a [n] or [n, n_classes] array, got shape {scores.shape}")
    # Subtracting the row max keeps exp() from overflowing and does not change the result.
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def evaluate(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
) -> Metrics:
    """Score predicted class probabilities against true labels.

    ``proba`` is ``[n, len(classes)]`` with columns in ``classes`` order; the prediction
    is the argmax. Returns :class:`Metrics`: ``accuracy`` with ``accuracy_ci95`` (a
    percentile bootstrap over ``bootstrap`` resamples), ``top5_accuracy`` (only with more
    than 5 classes), ``macro_f1``, ``balanced_accuracy``, ``ece`` over ``ECE_BINS`` bins,
    ``per_class`` scores in ``classes`` order and the ``confusion_matrix`` (rows = true
    class, columns = predicted).

    Raises ``ValueError`` for labels not in ``classes`` or mismatched shapes.
    """
    classes = [str(c) for c in classes]
    y_idx = _label_indices(y_true, classes)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (len(y_idx), len(classes)):
        raise ValueError(
            f"proba has shape {proba.shape}, expected {(len(y_idx), len(classes))} "
            "(one row per label, one column per class in `classes` order)"
        )
    if bootstrap < 1:
        raise ValueError(f"bootstrap must be at least 1, got {bootstrap}")

    labels = np.arange(len(classes))
    pred = proba.argmax(axis=1)
    correct = pred == y_idx
    precision, recall, f1, support = precision_recall_fscore_support(
        y_idx, pred, labels=labels, zero_division=0
    )
    return Metrics(
        n=len(y_idx),
        classes=classes,
        accuracy=float(correct.mean()),
        accuracy_ci95=_bootstrap_accuracy_ci(correct, bootstrap, seed),
        top5_accuracy=_top_k_accuracy(proba, y_idx, _TOP_K) if len(classes) > _TOP_K else None,
        macro_f1=float(f1_score(y_idx, pred, labels=labels, average="macro", zero_division=0)),
        # Mean recall over the classes present in y_true: sklearn's balanced_accuracy_score,
        # computed from the recalls we already have (sklearn's warns when a class is only
        # predicted).
        balanced_accuracy=float(recall[support > 0].mean()),
        ece=expected_calibration_error(proba.max(axis=1), correct, ECE_BINS),
        ece_bins=ECE_BINS,
        per_class=[
            ClassScores(name=name, precision=float(p), recall=float(r), f1=float(f), support=int(s))
            for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        ],
        confusion_matrix=confusion_matrix(y_idx, pred, labels=labels).tolist(),
    )


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """ECE: sum over equal-width confidence bins of ``|accuracy - confidence| * share of rows``.

    Bins are ``(lo, hi]`` on [0, 1] (a confidence of exactly 0 falls in the first bin).
    Returns a float in [0, 1].
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.digitize(confidence, edges[1:-1], right=True)
    n_correct = np.bincount(which, weights=np.asarray(correct, dtype=np.float64), minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    # |acc_b - conf_b| * n_b / n == |correct_b - conf_sum_b| / n
    return float(np.abs(n_correct - conf_sum).sum() / len(confidence))


def log_loss(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> float:
    """Mean over rows of ``-log`` of the probability given to the true class (``proba`` is
    ``[n, len(classes)]`` in ``classes`` order), each at least ``1e-15``."""
    y_idx = _label_indices(y_true, [str(c) for c in classes])
    picked = np.asarray(proba, dtype=np.float64)[np.arange(len(y_idx)), y_idx]
    return float(-np.log(np.maximum(picked, _LEAST_PROBABILITY)).mean())


def _label_indices(y_true: np.ndarray, classes: list[str]) -> np.ndarray:
    """Column index of each label in ``classes``; raises ``ValueError`` on unknown labels."""
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes contains duplicates: {classes}")
    y = np.asarray(y_true).astype(str)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"y_true must be a non-empty 1-D array of labels, got shape {y.shape}")
    uniques, inverse = np.unique(y, return_inverse=True)
    index = {name: i for i, name in enumerate(classes)}
    unknown = [str(u) for u in uniques if u not in index]
    if unknown:
        raise ValueError(
            f"y_true has labels not in classes: {unknown}; "
            f"pass the head's full class list (known: {classes})"
        )
    return np.array([index[u] for u in uniques], dtype=np.int64)[inverse]


def _top_k_accuracy(proba: np.ndarray, y_idx: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the ``k`` highest-probability classes."""
    top_k = np.argpartition(-proba, k - 1, axis=1)[:, :k]
    return float((top_k == y_idx[:, None]).any(axis=1).mean())


def _bootstrap_accuracy_ci(correct: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``correct``, as ``(low, high)``.

    Resampling n rows with replacement and counting the correct ones is exactly a draw
    from Binomial(n, accuracy), so we draw the counts directly: the same distribution
    as index resampling, in O(resamples) instead of O(resamples * n) time and memory.
    """
    n = len(correct)
    rng = np.random.default_rng(seed)
    accuracies = rng.binomial(n, float(correct.mean()), size=resamples) / n
    low, high = np.percentile(accuracies, [2.5, 97.5])
    return float(low), float(high)
