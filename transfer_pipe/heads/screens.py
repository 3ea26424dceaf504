"""Transferability screens: cheap scores, computed from cached features alone, that rank
layers (or backbones) for a task without fitting the full probe.

- ``logme``: LogME (You et al., 2021), the log marginal likelihood of a Bayesian linear
  model from features to each one-hot class column, maximised over its two precisions by
  the paper's fixed-point iteration on one SVD of the features; the mean over classes,
  per example. Higher is better.
- ``knn_accuracy``: accuracy of a cosine k-nearest-neighbour vote of the training rows on
  the validation rows. Higher is better.

Both are deterministic and take seconds on tens of thousands of rows.
"""

from __future__ import annotations

import math

import numpy as np

LOGME_ITERATIONS = 100
LOGME_TOLERANCE = 1e-3  # relative change of both precisions at which the iteration stops


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME evidence of ``features`` [N, D] for class ``labels`` [N], per example."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    targets = (np.asarray(labels)[:, None] == np.unique(labels)[None, :]).astype(np.float64)
    if n > d:  # the d x d Gram matrix: one pass over the rows, then a small eigenproblem
        s2, v = np.linalg.eigh(f.T @ f)
        s2 = np.clip(s2, 0.0, None)
        kept = s2 > s2.max() * 1e-12
        s2, v = s2[kept], v[:, kept]
        # Projections on the left singular vectors u = f v / s, without forming u.
        projections = (v.T @ (f.T @ targets)) / np.sqrt(s2)[:, None]
    else:
        u, s, _ = np.linalg.svd(f, full_matrices=False)
        s2, projections = s**2, u.T @ targets
    evidences = [
        _evidence(projections[:, k], float(targets[:, k] @ targets[:, k]), s2, n, d)
        for k in range(targets.shape[1])
    ]
    return float(np.mean(evidences)) / n


def _evidence(x: np.ndarray, tt: float, s2: np.ndarray, n: int, d: int) -> float:
    """The log evidence of one target column ``t`` whose projections on the features'
    left singular vectors are ``x`` (``tt`` = t·t), at the precisions (alpha on the
    weights, beta on the noise) the fixed-point iteration converges to."""
    x2 = x**2
    outside = max(tt - float(x2.sum()), 0.0)  # the part of t no feature direction holds
    alpha, beta = 1.0, 1.0
    for _ in range(LOGME_ITERATIONS):
        shrink = alpha + beta * s2
        gamma = float((beta * s2 / shrink).sum())  # effective number of parameters
        m2 = float((beta**2 * s2 * x2 / shrink**2).sum())  # |m|^2, the posterior mean
        residual = float((alpha**2 * x2 / shrink**2).sum()) + outside  # |t - F m|^2
        new_alpha = gamma / max(m2, 1e-12)
        new_beta = (n - gamma) / max(residual, 1e-12)
        converged = (
            abs(new_alpha - alpha) <= LOGME_TOLERANCE * alpha
            and abs(new_beta - beta) <= LOGME_TOLERANCE * beta
        )
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    shrink = alpha + beta * s2
    m2 = float((beta**2 * s2 * x2 / shrink**2).sum())
    residual = float((alpha**2 * x2 / shrink**2).sum()) + outside
    # log|A| over all d weight directions: those without a singular value have alpha.
    log_det = float(np.log(shrink).sum()) + (d - len(s2)) * math.log(alpha)
    return (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - alpha / 2 * m2
        - beta / 2 * residual
        - log_det / 2
        - n / 2 * math.log(2 * math.pi)
    )


def knn_accuracy(
    train: np.ndarray,
    train_labels: np.ndarray,
    val: np.ndarray,
    val_labels: np.ndarray,
    k: int = 10,
    chunk: int = 2048,
) -> float:
    """Accuracy of a cosine k-nearest-neighbour majority vote (ties: the nearest of the
    tied classes) of the training rows on the validation rows."""
    a = _unit(train)
    b = _unit(val)
    classes, codes = np.unique(np.asarray(train_labels), return_inverse=True)
    k = min(k, len(a))
    right = 0
    for start in range(0, len(b), chunk):
        similarity = b[start : start + chunk] @ a.T
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(similarity, nearest, axis=1).argsort(axis=1)[:, ::-1]
        nearest = np.take_along_axis(nearest, order, axis=1)  # nearest first
        for row, neighbours in enumerate(nearest):
            votes = np.bincount(codes[neighbours], minlength=len(classes))
            tied = np.flatnonzero(votes == votes.max())
            # Among tied classes, the one whose neighbour is nearest.
            winner = next(c for c in codes[neighbours] if c in tied)
            right += classes[winner] == np.asarray(val_labels)[start + row]
    return right / len(b)


def _unit(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return values / np.maximum(norms, 1e-12)
