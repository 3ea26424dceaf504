"""Linear classifiers with an L2 penalty, fitted by full-batch L-BFGS in torch.

``loss="log"`` is multinomial logistic regression: the same model and the same meaning of
``C`` as scikit-learn's ``LogisticRegression(solver="lbfgs")`` (both minimize
``C * sum(loss) + ||W||^2 / 2``; a test checks that they agree). ``loss="squared_hinge"`` is
the one-vs-rest L2-SVM of scikit-learn's ``LinearSVC`` (its default loss), smooth enough
for L-BFGS.

Why not scikit-learn's solvers: these run float32 and BLAS-bound, several times faster on
a CPU for a 54,000 x 1,280 probe, on a GPU when there is one; liblinear took minutes per
large ``C`` on standardized features. And the warm start keeps optimizing at every new
``C``, where scikit-learn's scaled tolerance stops after zero iterations once ``C`` is large.

Two things make a fit cheap (``benchmarks/probe_walk.py`` measures them):
- logits are computed class-major, ``[classes, rows]``: a softmax over 10 values per row
  is slow row by row, fast across rows;
- L-BFGS runs on ``V`` with ``W = M V``, where ``M = (s * cov + lambda * I)^(-1/2)``
  approximates the inverse square root of the objective's curvature (``cov`` the feature
  covariance of a row sample, ``s`` a softmax curvature scale, ``lambda`` the penalty).
  The optimum in ``W`` is the same; ill-conditioned problems (small penalties, correlated
  features) converge in a fraction of the iterations. The eigendecomposition behind
  ``M`` is computed once per training set and reused by every ``C`` of a warm-started walk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._available_if import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from transfer_pipe.cluster import resolve_device

Loss = Literal["log", "squared_hinge"]

_PRECONDITIONER_ROWS = 4096  # rows whose covariance shapes the preconditioner
_CURVATURE_SCALE = 0.25  # the largest curvature of the softmax loss per unit of variance


def _data_loss(loss: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the multinomial log loss, or of the summed one-vs-rest squared
    hinge losses (LinearSVC's); ``logits`` is class-major, ``[classes, rows]``."""
    picked = targets[None, :]
    if loss == "log":
        return -torch.log_softmax(logits, dim=0).gather(0, picked).mean()
    signs = -torch.ones_like(logits)
    signs.scatter_(0, picked, 1.0)
    return F.relu(1.0 - signs * logits).square().sum(dim=0).mean()


def _spectrum(features: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors of the feature covariance of a seeded row sample.

    LAPACK's divide-and-conquer solver gives up on some covariances of real features
    (many repeated, near-zero eigenvalues); a jittered diagonal usually gets through, and
    failing that the identity (no preconditioning) is a correct, merely slower, choice."""
    n = len(features)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(n, generator=generator)[: min(n, _PRECONDITIONER_ROWS)]
    sample = features[rows.to(features.device)].double()
    covariance = sample.T @ sample / len(sample)
    scale = float(covariance.diagonal().mean().clamp_min(1e-12))
    for jitter in (0.0, 1e-6, 1e-3):
        shifted = covariance + jitter * scale * torch.eye(len(covariance), device=sample.device)
        try:
            values, vectors = torch.linalg.eigh(shifted)
        except torch.linalg.LinAlgError:
            continue
        if bool(torch.isfinite(values).all()):
            return values.clamp_min(0.0), vectors
    width = len(covariance)
    device = covariance.device
    ones = torch.ones(width, dtype=torch.float64, device=device)
    return ones, torch.eye(width, dtype=torch.float64, device=device)


def _preconditioner(
    spectrum: tuple[torch.Tensor, torch.Tensor], penalty: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``M = (s * cov + penalty * I)^(-1/2)`` and its inverse, float32."""
    values, vectors = spectrum
    scaled = _CURVATURE_SCALE * values + max(penalty, 1e-12)
    root = (vectors * scaled.sqrt()) @ vectors.T
    inverse_root = (vectors * scaled.rsqrt()) @ vectors.T
    return inverse_root.float(), root.float()


@dataclass
class _Walk:
    """What a warm-started walk over ``C`` keeps between fits on the same rows."""

    rows: tuple[Any, ...]  # a fingerprint of the training rows
    classes: np.ndarray
    spectrum: tuple[torch.Tensor, torch.Tensor]
    path: list[tuple[float, np.ndarray, np.ndarray]] = field(default_factory=list)


class LBFGSLinearClassifier(ClassifierMixin, BaseEstimator):
    """A linear classifier with an L2 penalty on the weights (not the intercept).

    ``max_iter`` caps L-BFGS iterations per fit; ``tol`` is the largest absolute gradient
    entry of the mean loss at which a fit counts as converged. With ``warm_start`` a refit
    starts from the previous solution: the probe protocol walks its ``C`` grid that way.
    """

    classes_: np.ndarray
    coef_: np.ndarray
    intercept_: np.ndarray

    def __init__(
        self,
        C: float = 1.0,
        *,
        loss: Loss = "log",
        max_iter: int = 100,
        tol: float = 1e-4,
        warm_start: bool = False,
        device: str = "auto",
    ) -> None:
        self.C = C
        self.loss = loss
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.device = device

    def fit(
        self, X: Any, y: Any, init: tuple[np.ndarray, np.ndarray] | None = None
    ) -> LBFGSLinearClassifier:
        """Fit on (X, y). ``init``, a solution ``(coef [classes, dim], intercept)`` of a
        nearby problem (the same C on the training rows alone, for the protocol's refit),
        is a starting point; the fit starts wherever the objective is lowest."""
        if self.loss not in ("log", "squared_hinge"):
            raise ValueError(f"loss must be 'log' or 'squared_hinge', not {self.loss!r}")
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        classes, codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"need 2+ classes to fit; y has only one class: {classes.tolist()}")
        device = resolve_device(self.device)
        n, dim = X.shape
        features = torch.from_numpy(np.ascontiguousarray(X)).to(device)
        targets = torch.from_numpy(codes.astype(np.int64)).to(device)
        penalty = 1.0 / (float(self.C) * n)
        walk = self._walk_on(X, features, classes)
        precondition, unprecondition = _preconditioner(walk.spectrum, penalty)

        def objective(coef: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            """The penalized mean loss; ``coef`` is ``[classes, dim]``."""
            logits = torch.addmm(bias[:, None], coef, features.T)  # [classes, rows]
            loss = _data_loss(self.loss, logits, targets)
            return loss + 0.5 * penalty * (coef * coef).sum()

        with torch.no_grad():
            starts = [
                (torch.from_numpy(w).to(device), torch.from_numpy(b).to(device))
                for w, b in self._starts(walk, classes, dim, init)
            ]
            start_w, start_b = min(starts, key=lambda start: float(objective(*start)))
        # coef = weights @ precondition (both roots are symmetric). Row-major on purpose: a
        # transposed coef makes autograd form its gradient as features.T @ grad.T, which
        # some BLAS builds run 10x slower than grad @ features (benchmarks/probe_walk.py).
        weights = (start_w @ unprecondition).requires_grad_(True)
        bias = start_b.clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [weights, bias],
            lr=1.0,
            max_iter=self.max_iter,
            tolerance_grad=self.tol,
            tolerance_change=1e-10,
            history_size=10,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = objective(weights @ precondition, bias)
            loss.backward()
            return loss

        optimizer.step(closure)
        self.classes_ = classes
        self.coef_ = (weights @ precondition).detach().cpu().numpy().copy()
        self.intercept_ = bias.detach().cpu().numpy().copy()
        self.n_iter_ = int(optimizer.state[weights].get("n_iter", 0))
        walk.path = [*walk.path, (math.log(float(self.C)), self.coef_, self.intercept_)][-2:]
        return self

    def _walk_on(self, X: np.ndarray, features: torch.Tensor, classes: np.ndarray) -> _Walk:
        """What the previous fits on these same rows left (a warm-started walk over C),
        or a fresh record. Only a fit's speed depends on it, never its optimum, so a cheap
        fingerprint of the rows is enough to tell them apart."""
        rows = (X.shape, float(X[:: max(1, len(X) // 64)].sum(dtype=np.float64)))
        walk: _Walk | None = getattr(self, "_walk", None)
        if walk is None or walk.rows != rows or not np.array_equal(walk.classes, classes):
            walk = _Walk(rows, classes, _spectrum(features))
            self._walk = walk
        return walk

    def _starts(
        self,
        walk: _Walk,
        classes: np.ndarray,
        dim: int,
        init: tuple[np.ndarray, np.ndarray] | None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Candidate starting points, ``(coef [classes, dim], intercept)``: zeros, a given
        ``init`` of the right shape, or with ``warm_start`` the previous solution and, when
        the two previous fits were on the same rows, their secant extrapolated in log C (the
        solution path is smooth in log C: this start often lies within a few iterations of
        the new optimum)."""
        zeros = np.zeros((len(classes), dim), np.float32), np.zeros(len(classes), np.float32)
        starts = [zeros]
        if init is not None and np.shape(init[0]) == zeros[0].shape:
            starts.append((np.asarray(init[0], np.float32), np.asarray(init[1], np.float32)))
        if not (self.warm_start and self._fitted_to(classes, dim)):
            return starts
        starts = [(self.coef_, self.intercept_)]
        if len(walk.path) == 2:
            (c0, w0, b0), (c1, w1, b1) = walk.path
            if c1 != c0:
                step = (math.log(float(self.C)) - c1) / (c1 - c0)
                starts.append((w1 + step * (w1 - w0), b1 + step * (b1 - b0)))
        return starts

    def _fitted_to(self, classes: np.ndarray, dim: int) -> bool:
        """Whether a previous fit solved a problem of the same classes and width."""
        return hasattr(self, "coef_") and (
            np.array_equal(self.classes_, classes) and self.coef_.shape == (len(classes), dim)
        )

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits [n, n_classes]; for two classes the margin of the second, shape [n]."""
        logits = self._logits(X)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def _logits(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        return np.ascontiguousarray(X @ self.coef_.T + self.intercept_)

    def data_loss(self, X: Any, y: Any) -> float:
        """The fitted model's mean loss on (X, y), without the penalty: the validation
        loss the probe protocol watches along its ``C`` walk."""
        y = np.asarray(y)
        seen = np.isin(y, self.classes_)  # a class absent from training has no logit
        logits = torch.from_numpy(self._logits(X)[seen]).T
        targets = torch.from_numpy(np.searchsorted(self.classes_, y[seen]))
        return float(_data_loss(self.loss, logits, targets))

    def _is_probabilistic(self) -> bool:
        return self.loss == "log"

    @available_if(_is_probabilistic)
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (log loss only: hinge margins are not probabilities)."""
        return torch.softmax(torch.from_numpy(self._logits(X)).double(), dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "coef_")  # before classes_ is read: NotFittedError
        return self.classes_[self._logits(X).argmax(axis=1)]

    def head_tensors(self) -> dict[str, torch.Tensor]:
        check_is_fitted(self, "coef_")
        return {
            "coef": torch.from_numpy(self.coef_),
            "intercept": torch.from_numpy(self.intercept_),
        }

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], params: dict[str, Any], classes: list[Any]
    ) -> LBFGSLinearClassifier:
        """A fitted estimator rebuilt from :meth:`head_tensors`, its params and classes."""
        model = cls(**params)
        model.classes_ = np.asarray(classes)
        model.coef_ = tensors["coef"].numpy()
        model.intercept_ = tensors["intercept"].numpy()
        model.n_features_in_ = model.coef_.shape[1]
        return model
