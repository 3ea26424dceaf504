"""LBFGSLinearClassifier: scikit-learn contract, agreement with scikit-learn's own solvers
(same model, same meaning of C), warm starts along a C grid, and predict_proba availability."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from transfer_pipe.heads.linear import LBFGSLinearClassifier


def _standardized_problem(
    n: int = 300, n_features: int = 10, n_classes: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A small multiclass problem with overlapping classes (so C matters), standardized."""
    X, y = make_classification(
        n_samples=n,
        n_features=n_features,
        n_informative=6,
        n_classes=n_classes,
        class_sep=1.0,
        random_state=seed,
    )
    return StandardScaler().fit_transform(X).astype(np.float32), y


@parametrize_with_checks(
    [
        LBFGSLinearClassifier(loss="log", device="cpu"),
        LBFGSLinearClassifier(loss="squared_hinge", device="cpu"),
    ]
)
def test_sklearn_estimator_checks(estimator: LBFGSLinearClassifier, check: object) -> None:
    check(estimator)  # type: ignore[operator]


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_log_loss_matches_sklearn_logistic_regression(C: float) -> None:
    X, y = _standardized_problem()
    ours = LBFGSLinearClassifier(C=C, loss="log", max_iter=2000, tol=1e-7, device="cpu").fit(X, y)
    reference = LogisticRegression(C=C, max_iter=5000, tol=1e-10).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), reference.predict_proba(X), atol=1e-3)
    np.testing.assert_array_equal(ours.predict(X), reference.predict(X))
    np.testing.assert_allclose(ours.coef_, reference.coef_, atol=1e-2)
    np.testing.assert_allclose(ours.intercept_, reference.intercept_, atol=1e-2)


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_squared_hinge_matches_sklearn_linear_svc(C: float) -> None:
    X, y = _standardized_problem()
    ours = LBFGSLinearClassifier(
        C=C, loss="squared_hinge", max_iter=2000, tol=1e-7, device="cpu"
    ).fit(X, y)
    # LinearSVC (liblinear) treats the intercept as one more weight on a constant feature of
    # value ``intercept_scaling`` and so penalizes it; ours does not. A large scaling makes
    # that penalty nearly vanish, but the two problems are still not identical, so the
    # contract is agreement of predictions on almost every row, not equal coefficients.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reference = LinearSVC(
            C=C, loss="squared_hinge", intercept_scaling=1000.0, tol=1e-8, max_iter=100_000
        ).fit(X, y)
    agreement = float(np.mean(ours.predict(X) == reference.predict(X)))
    assert agreement >= 0.98
    # The one-vs-rest margins themselves should be close too (same loss, same C).
    scores, reference_scores = ours.decision_function(X), reference.decision_function(X)
    assert np.corrcoef(scores.ravel(), reference_scores.ravel())[0, 1] > 0.99


def test_warm_start_along_grid_reaches_the_cold_solution() -> None:
    X, y = _standardized_problem(seed=1)
    grid = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    warm = LBFGSLinearClassifier(loss="log", max_iter=500, tol=1e-6, warm_start=True, device="cpu")
    for C in grid:
        warm.set_params(C=C).fit(X, y)
    cold = LBFGSLinearClassifier(C=grid[-1], loss="log", max_iter=500, tol=1e-6, device="cpu")
    cold.fit(X, y)
    np.testing.assert_allclose(warm.coef_, cold.coef_, atol=5e-3)
    np.testing.assert_allclose(warm.intercept_, cold.intercept_, atol=5e-3)
    np.testing.assert_allclose(warm.predict_proba(X), cold.predict_proba(X), atol=1e-3)

    # A refit at the same C starts at the optimum: next to no iterations, same solution (to
    # float32 precision along the problem's flattest direction: a few 1e-4).
    converged_coef = warm.coef_.copy()
    warm.fit(X, y)
    assert warm.n_iter_ <= 3 < cold.n_iter_
    np.testing.assert_allclose(warm.coef_, converged_coef, atol=1e-3)


def test_warm_start_off_starts_from_zero() -> None:
    X, y = _standardized_problem(seed=2)
    model = LBFGSLinearClassifier(C=1.0, max_iter=500, tol=1e-6, device="cpu").fit(X, y)
    first_iterations = model.n_iter_
    model.fit(X, y)
    # Without warm_start the second fit redoes the whole path from zero weights.
    assert model.n_iter_ == first_iterations > 2


def test_predict_proba_only_for_log_loss() -> None:
    X, y = _standardized_problem(n=60)
    svm = LBFGSLinearClassifier(loss="squared_hinge", device="cpu").fit(X, y)
    assert not hasattr(svm, "predict_proba")
    assert not hasattr(LBFGSLinearClassifier(loss="squared_hinge"), "predict_proba")
    logreg = LBFGSLinearClassifier(loss="log", device="cpu").fit(X, y)
    assert hasattr(logreg, "predict_proba")
    proba = logreg.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(logreg.classes_[proba.argmax(axis=1)], logreg.predict(X))


def test_unknown_loss_is_refused() -> None:
    X, y = _standardized_problem(n=30)
    with pytest.raises(ValueError, match="loss"):
        LBFGSLinearClassifier(loss="hinge", device="cpu").fit(X, y)  # type: ignore[arg-type]


def test_a_fit_started_from_a_nearby_solution_reaches_the_same_optimum_sooner() -> None:
    """The protocol's refit (train + validation) starts from the solution the walk chose
    on the training rows: fewer iterations, the same optimum as a start from zero."""
    X, y = _standardized_problem(n=600, seed=3)
    train = slice(0, 540)  # the walk's rows; the refit adds the last tenth
    nearby = LBFGSLinearClassifier(C=10.0, max_iter=1000, tol=1e-6, device="cpu")
    nearby.fit(X[train], y[train])
    cold = LBFGSLinearClassifier(C=10.0, max_iter=1000, tol=1e-6, device="cpu").fit(X, y)
    started = LBFGSLinearClassifier(C=10.0, max_iter=1000, tol=1e-6, device="cpu")
    started.fit(X, y, init=(nearby.coef_, nearby.intercept_))
    # Mutation: `init` left out of the candidate starts: as many iterations as from zero.
    assert started.n_iter_ < cold.n_iter_
    np.testing.assert_allclose(started.predict_proba(X), cold.predict_proba(X), atol=2e-3)
    # A start of the wrong shape (another task's classes) is ignored, not an error.
    other = LBFGSLinearClassifier(C=10.0, max_iter=1000, tol=1e-6, device="cpu")
    other.fit(X, y, init=(np.ones((5, 10), np.float32), np.ones(5, np.float32)))
    np.testing.assert_allclose(other.predict_proba(X), cold.predict_proba(X), atol=2e-3)


def test_a_covariance_lapack_cannot_decompose_costs_speed_not_the_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real features once made LAPACK's eigh give up on the preconditioner's covariance
    (error 1567904, in the warm-rerun test): the fit must still reach the same optimum."""
    X, y = _standardized_problem(seed=5)
    reference = LBFGSLinearClassifier(C=1.0, max_iter=1000, tol=1e-6, device="cpu").fit(X, y)

    def refusing(*_: object, **__: object) -> None:
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", refusing)
    # Mutation: no fallback in _spectrum (the error propagates) fails here.
    model = LBFGSLinearClassifier(C=1.0, max_iter=1000, tol=1e-6, device="cpu").fit(X, y)
    np.testing.assert_allclose(model.predict_proba(X), reference.predict_proba(X), atol=2e-3)
