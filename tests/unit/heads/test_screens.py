"""The screens against independent computations: LogME against the Gaussian marginal
likelihood maximised by a generic optimiser, the k-NN screen against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal
from sklearn.neighbors import KNeighborsClassifier

from transfer_pipe.heads.screens import knn_accuracy, logme


def _direct_evidence(features: np.ndarray, target: np.ndarray) -> float:
    """max over the precisions (alpha on the weights, beta on the noise) of
    log N(t | 0, I/beta + F F^T / alpha), by Nelder-Mead on their logarithms."""
    gram = features @ features.T
    n = len(target)

    def negative(log_precisions: np.ndarray) -> float:
        alpha, beta = np.exp(log_precisions)
        cov = np.eye(n) / beta + gram / alpha
        return -float(multivariate_normal(np.zeros(n), cov).logpdf(target))

    best = minimize(
        negative,
        np.zeros(2),
        method="Nelder-Mead",
        options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000},
    )
    return -float(best.fun)


@pytest.mark.parametrize("dims", [5, 60])  # fewer features than rows, and more
def test_logme_is_the_maximised_marginal_likelihood(dims: int) -> None:
    rng = np.random.default_rng(dims)
    labels = rng.integers(0, 3, 40)
    features = rng.normal(size=(40, dims)) + labels[:, None] * rng.normal(size=dims)
    expected = (
        np.mean([_direct_evidence(features, (labels == c).astype(float)) for c in range(3)]) / 40
    )
    # Mutations seen to fail here: the log-determinant without the directions that have
    # no singular value; the residual without the part of t outside the features' span.
    assert logme(features, labels) == pytest.approx(expected, abs=2e-3)


def test_logme_and_knn_rank_features_that_carry_the_label_above_noise() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 600)
    centres = rng.normal(size=(4, 32)) * 2
    informative = centres[labels] + rng.normal(size=(600, 32))
    noise = rng.normal(size=(600, 32))
    assert logme(informative, labels) > logme(noise, labels)
    good = knn_accuracy(informative[:500], labels[:500], informative[500:], labels[500:])
    chance = knn_accuracy(noise[:500], labels[:500], noise[500:], labels[500:])
    assert good > 0.9 and chance < 0.45


def test_knn_accuracy_matches_scikit_learn_without_ties() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    features = rng.normal(size=(300, 16)) + labels[:, None] * 0.6
    ours = knn_accuracy(features[:200], labels[:200], features[200:], labels[200:], k=7, chunk=33)
    reference = KNeighborsClassifier(7, metric="cosine").fit(features[:200], labels[:200])
    assert ours == pytest.approx(reference.score(features[200:], labels[200:]))
