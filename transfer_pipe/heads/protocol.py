"""The evaluation protocol every head follows, and the heads it knows.

1. standardize features with statistics of the rows being fitted only;
2. choose hyperparameters on held-out rows: walk a grid (the logistic probe: 45 values
   of ``C`` from 1e-6 to 1e5, warm-started along the grid) or, for the torch heads, stop
   early on the validation loss. The held-out rows are the validation rows when every
   class has ``few_val_rows_per_class`` (20) of them; with fewer, a single split cannot
   rank the values (6 validation rows tie every C), and stratified k-fold cross-validation
   over train + validation decides instead: the validation rows are too few to decide
   alone and too precious to leave out of the folds. The torch heads always stop on the
   validation rows, and say how many there were. The best value is the one with the
   highest held-out accuracy; among values tied on it, the one with the lowest held-out
   log loss of the probabilities the head reports (the most regularized of tied values
   would flatten them toward uniform), then the most regularized. On a validation split
   "tied" means equal, the standard linear-evaluation choice; under cross-validation it
   means within one standard error of the best accuracy (``tie_margin``): on 100 labelled
   rows one row is a percent, accuracies a few rows apart are noise, and choosing among
   them by accuracy alone swung C over three decades between draws and kept the near-
   uniform probabilities of the most regularized values (ECE 0.56). The linear heads'
   walk, from the most regularized value up, stops once ``c_patience`` values in a row
   scored below the best while the held-out loss rose at each: past the loss minimum,
   less regularization only overfits more, and the values left are the slowest to fit.
   The choice is the one the whole walk makes (tested on real features);
3. refit on training + validation rows with what was chosen;
4. evaluate once on the test rows, and warn when they are too few for the 95 % interval
   of the accuracy to mean anything (``scores.MIN_TEST_ROWS``).

Test rows reach step 4 only: changing them changes nothing before it (tested).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from scipy.linalg import LinAlgWarning
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import RidgeClassifier
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from transfer_pipe.cluster import threads_per_task
from transfer_pipe.config import HEAD_NAMES, HeadName
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.heads.card import HeadSelection
from transfer_pipe.heads.linear import LBFGSLinearClassifier
from transfer_pipe.heads.metrics import evaluate, log_loss, softmax
from transfer_pipe.heads.options import ProtocolOptions
from transfer_pipe.heads.tasks import SplitRows, TaskData
from transfer_pipe.heads.torch_heads import TorchLinearClassifier, TorchMLPClassifier
from transfer_pipe.scores import Metrics, interval_warning

logger = logging.getLogger(__name__)

Selection = Literal["grid", "early-stopping"]


@dataclass(frozen=True)
class HeadKind:
    """One kind of head: how to build it and how its hyperparameters are chosen."""

    name: HeadName
    build: Callable[[ProtocolOptions], BaseEstimator]
    grid: Callable[[ProtocolOptions, int], list[dict[str, Any]]]  # (options, train rows)
    selection: Selection = "grid"
    refit_params: Callable[[ProtocolOptions], dict[str, Any]] = lambda _: {}
    # The grid runs from most to least regularized and the estimator has ``data_loss``:
    # the walk may stop past the peak (see the module docstring).
    stops_past_peak: bool = False


def _knn_grid(_: ProtocolOptions, train_rows: int) -> list[dict[str, Any]]:
    return [{"n_neighbors": k} for k in (1, 3, 5, 10, 20, 50) if k <= train_rows]


_KINDS = {
    kind.name: kind
    for kind in (
        HeadKind(
            "logreg",
            lambda o: LBFGSLinearClassifier(max_iter=o.max_iter, warm_start=True, device=o.device),
            lambda o, _: [{"C": c} for c in o.c_grid()],
            refit_params=lambda o: {"max_iter": o.refit_max_iter, "warm_start": False},
            stops_past_peak=True,
        ),
        HeadKind(
            "svm",
            lambda o: LBFGSLinearClassifier(
                loss="squared_hinge", max_iter=o.max_iter, warm_start=True, device=o.device
            ),
            # Decades only: on standardized features the best C sits far below 1, and every
            # larger C costs a full budget of L-BFGS iterations.
            lambda _o, _n: [{"C": float(c)} for c in np.logspace(-6, 0, 7)],
            refit_params=lambda o: {"max_iter": o.refit_max_iter, "warm_start": False},
            stops_past_peak=True,
        ),
        HeadKind(
            "knn",
            lambda _: KNeighborsClassifier(metric="cosine", algorithm="brute", weights="distance"),
            _knn_grid,
        ),
        HeadKind(
            "ridge",
            lambda _: RidgeClassifier(),
            lambda _o, _n: [{"alpha": float(a)} for a in np.logspace(-2, 5, 8)],
        ),
        HeadKind(
            "torch-linear",
            lambda o: TorchLinearClassifier(device=o.device, random_state=o.seed),
            lambda _o, _n: [{}],
            selection="early-stopping",
        ),
        HeadKind(
            "mlp",
            lambda o: TorchMLPClassifier(device=o.device, random_state=o.seed),
            lambda _o, _n: [{}],
            selection="early-stopping",
        ),
    )
}

# In the order of ``config.HEAD_NAMES``, the one list of head names (which the checks and
# the CLI offer): a name there without a kind here fails on import, a kind named
# otherwise fails the type check.
HEAD_KINDS: dict[str, HeadKind] = {name: _KINDS[name] for name in HEAD_NAMES}


def head_kind(name: str) -> HeadKind:
    if name not in HEAD_KINDS:
        raise TransferPipeError(f"unknown head {name!r}; choose from {', '.join(HEAD_KINDS)}.")
    return HEAD_KINDS[name]


@dataclass
class FittedHead:
    """A head refitted on train + validation (a drawn share of the labels: on its drawn
    rows), with what was chosen and its test metrics."""

    head: str
    model: Pipeline  # StandardScaler -> estimator
    chosen: dict[str, Any]
    # One entry per candidate: its params and held-out scores (validation or CV).
    validation: list[dict[str, Any]]
    metrics: Metrics
    selection: HeadSelection  # how ``chosen`` was chosen, and on how many rows
    seconds: dict[str, float] = field(default_factory=dict)
    # The sample ids of the rows the model was refitted on, in order: a head that keeps
    # its training rows (kNN) references them in the store instead of a copy.
    fit_ids: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. too few test rows to trust


def fit_head(name: str, data: TaskData, options: ProtocolOptions) -> FittedHead:
    """Run the whole protocol for head ``name`` on ``data``; see the module docstring."""
    kind = head_kind(name)
    with _task_threads():
        started = time.perf_counter()
        selected_by = _select(kind, data, options)
        selected = time.perf_counter()
        # A drawn share of the labels (few-shot, a learning curve's point) is refitted
        # on its drawn rows alone: with the validation rows, 1 % of 54,000 labels would
        # train on 540 + 6,000 of them. Validation still chooses the hyperparameters.
        drawn = data.shots is not None or data.label_fraction is not None
        logger.info(
            "%s: chose %s by %s; refitting on %s",
            name,
            _format_params(selected_by.chosen),
            selected_by.selection.describe(),
            "the drawn training rows" if drawn else "train + validation",
        )
        model = _chosen_pipeline(kind, options, selected_by.chosen)
        both = data.train if drawn else SplitRows.concat(data.train, data.val)
        # The chosen solution on the (fold's) training rows starts the refit: the same
        # C on a few more rows, scaled by nearly the same statistics, lies close by.
        solution = selected_by.solution
        start = {} if solution is None else {"head__init": solution}
        model.fit(both.features, both.labels, **start)
        refitted = time.perf_counter()
        metrics = evaluate(
            data.test.labels,
            class_probabilities(model, data.test.features, data.classes),
            data.classes,
            bootstrap=options.bootstrap,
            seed=options.seed,
        )
    seconds = {"select": selected - started, "refit": refitted - selected}
    seconds["evaluate"] = time.perf_counter() - refitted
    warned = interval_warning(metrics)
    if warned is not None:
        logger.warning("%s: %s", name, warned)
    return FittedHead(
        name,
        model,
        selected_by.chosen,
        selected_by.curve,
        metrics,
        selected_by.selection,
        seconds,
        both.sample_ids,
        [] if warned is None else [warned],
    )


def validation_accuracy(name: str, data: TaskData, options: ProtocolOptions) -> float:
    """Step 2 alone for head ``name``: the held-out accuracy (validation rows, or the
    cross-validation that replaces them when they are few) at the value it chooses. What
    ranks candidate layers (``steps.layer_choice``): no refit, no test rows."""
    with _task_threads():
        selected = _select(head_kind(name), data, options)
    point = next(
        p for p in selected.curve if all(p.get(k) == v for k, v in selected.chosen.items())
    )
    return float(point["val_accuracy"])


@contextmanager
def _task_threads() -> Iterator[None]:
    """Torch and the BLAS pools limited to this task's share of the cores."""
    threads = threads_per_task()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(previous_threads)


def _format_params(params: dict[str, Any]) -> str:
    """``{"C": 0.1, "penalty": "l2"}`` -> ``C=0.1, penalty=l2`` (for the logs)."""
    text = ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
    return text or "the defaults"


def _chosen_pipeline(kind: HeadKind, options: ProtocolOptions, chosen: dict[str, Any]) -> Pipeline:
    head = kind.build(options).set_params(**chosen, **kind.refit_params(options))
    return Pipeline([("scale", StandardScaler()), ("head", head)])


def fit_on_train(
    name: str, data: TaskData, chosen: dict[str, Any], options: ProtocolOptions
) -> Pipeline:
    """Head ``name`` with hyperparameters the protocol chose, fitted on the training rows
    only: for uses whose own model selection needs the validation rows unseen (LP-FT)."""
    model = _chosen_pipeline(head_kind(name), options, chosen)
    return model.fit(data.train.features, data.train.labels)


@dataclass(frozen=True)
class _Selected:
    """What step 2 chose, the held-out curve behind it, how and on how many rows, and for
    the linear heads the solution at the chosen value (the refit's starting point)."""

    chosen: dict[str, Any]
    curve: list[dict[str, Any]]
    selection: HeadSelection
    solution: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True)
class _Fold:
    """Rows to fit on and held-out rows to score, both standardized with the statistics
    of the rows fitted."""

    fit: np.ndarray
    fit_labels: np.ndarray
    held: np.ndarray
    held_labels: np.ndarray

    @classmethod
    def scaled(cls, fit: SplitRows, held: SplitRows) -> _Fold:
        scaler = StandardScaler().fit(fit.features)
        transform = scaler.transform
        return cls(transform(fit.features), fit.labels, transform(held.features), held.labels)


def _select(kind: HeadKind, data: TaskData, options: ProtocolOptions) -> _Selected:
    """Step 2 of the protocol (see the module docstring), on the training and validation
    rows only."""
    if kind.selection == "early-stopping":
        return _stop_early(kind, data, options)
    folds, selection = selection_folds(data, options)
    estimators = [kind.build(options) for _ in folds]
    fit_rows = min(len(fold.fit_labels) for fold in folds)
    curve: list[dict[str, Any]] = []
    solutions = []
    for params in kind.grid(options, fit_rows):
        curve.append({**params, **_held_out_scores(kind, estimators, folds, params, data.classes)})
        if kind.stops_past_peak:
            first = estimators[0]
            solutions.append((first.coef_.copy(), first.intercept_.copy()))
            if past_the_peak(curve, options.c_patience):
                break
    if len(folds) > 1:
        best_accuracy = max(point["val_accuracy"] for point in curve)
        selection = replace(selection, tie_margin=tie_margin(best_accuracy, selection.rows))
    best = best_point(curve, selection.tie_margin)
    chosen = {k: v for k, v in curve[best].items() if k not in _SCORES}
    return _Selected(chosen, curve, selection, solutions[best] if solutions else None)


def _stop_early(kind: HeadKind, data: TaskData, options: ProtocolOptions) -> _Selected:
    """A torch head trained on the training rows until the validation loss stops falling:
    the number of epochs it ran best is what the refit trains for."""
    fold = _Fold.scaled(data.train, data.val)
    estimator = kind.build(options)
    estimator.fit(fold.fit, fold.fit_labels, X_val=fold.held, y_val=fold.held_labels)
    curve = [{"epoch": i + 1, **h} for i, h in enumerate(estimator.history_)]
    chosen = {"max_epochs": int(estimator.best_epoch_), "early_stopping": False}
    rows = _smallest_class(data.val.labels, np.unique(data.train.labels))
    selection = HeadSelection("early stopping on validation", len(data.val), rows)
    return _Selected(chosen, curve, selection)


def selection_folds(data: TaskData, options: ProtocolOptions) -> tuple[list[_Fold], HeadSelection]:
    """The folds whose held-out rows score each candidate: the validation rows alone when
    each class has ``few_val_rows_per_class`` of them; otherwise stratified k-fold over
    train + validation, ``cv_folds`` folds or as many as the smallest class has rows.
    Test rows never."""
    classes = np.unique(np.concatenate([data.train.labels, data.val.labels]))
    fewest_val = _smallest_class(data.val.labels, classes)
    validation = HeadSelection("validation", len(data.val), fewest_val)
    if fewest_val >= options.few_val_rows_per_class:
        return [_Fold.scaled(data.train, data.val)], validation
    # Only here the rows are pooled: on a validation split, a copy of every training row
    # (54,000 x 1,904 floats on Fashion-MNIST's four taps) would serve nothing.
    pool = SplitRows.concat(data.train, data.val)
    fewest = _smallest_class(pool.labels, classes)
    folds = min(options.cv_folds, fewest)
    if folds < 2:
        logger.warning(
            "a class has %d labelled row(s) in train + validation: too few to cross-validate; "
            "choosing on the %d validation rows instead (label more images of it)",
            fewest,
            len(data.val),
        )
        return [_Fold.scaled(data.train, data.val)], validation
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=options.seed)
    split = splitter.split(pool.features, pool.labels)
    cv = [_Fold.scaled(pool.take(fit), pool.take(held)) for fit, held in split]
    return cv, HeadSelection(f"{folds}-fold cv", len(pool), fewest)


def _smallest_class(labels: np.ndarray, classes: np.ndarray) -> int:
    """The fewest rows of ``labels`` in one of ``classes`` (0 when one has none)."""
    return int(min(np.sum(labels == label) for label in classes))


def _held_out_scores(
    kind: HeadKind,
    estimators: list[BaseEstimator],
    folds: list[_Fold],
    params: dict[str, Any],
    classes: tuple[str, ...],
) -> dict[str, float]:
    """Each fold's estimator fitted with ``params`` and scored on its held-out rows, pooled
    over the folds (every held-out row counts once): accuracy of the probabilities' argmax
    (as the test metrics count it), their log loss, and for the linear heads the loss
    they minimize (what the walk's stopping rule watches)."""
    correct, log_losses, losses, rows = 0.0, 0.0, 0.0, 0
    for estimator, fold in zip(estimators, folds, strict=True):
        estimator.set_params(**params)
        with warnings.catch_warnings():
            # The grid's extremes are ill-conditioned or slow to converge by design; the
            # held-out curve (kept in the model card) is what judges them.
            warnings.simplefilter("ignore", (ConvergenceWarning, LinAlgWarning))
            estimator.fit(fold.fit, fold.fit_labels)
        proba = class_probabilities(estimator, fold.held, classes)
        n = len(fold.held_labels)
        correct += float(np.sum(np.asarray(classes)[proba.argmax(axis=1)] == fold.held_labels))
        log_losses += n * log_loss(fold.held_labels, proba, classes)
        if kind.stops_past_peak:
            losses += n * estimator.data_loss(fold.held, fold.held_labels)
        rows += n
    scores = {"val_accuracy": correct / rows, "val_log_loss": log_losses / rows}
    if kind.stops_past_peak:
        scores["val_loss"] = losses / rows
    return scores


_SCORES = ("val_accuracy", "val_loss", "val_log_loss")


def best_point(curve: list[dict[str, Any]], margin: float = 0.0) -> int:
    """The index of the best held-out accuracy on ``curve``; among points tied on it
    (within ``margin`` of it), of the lowest held-out log loss (a tie says nothing about
    accuracy, and the most regularized of tied values pushes the probabilities toward
    uniform); among those, the first: on an ascending grid, the most regularized."""
    best = max(point["val_accuracy"] for point in curve)
    tied = [i for i, point in enumerate(curve) if point["val_accuracy"] >= best - margin]
    return min(tied, key=lambda i: curve[i]["val_log_loss"])  # min keeps the first of equals


def tie_margin(accuracy: float, rows: int) -> float:
    """One standard error of an accuracy measured on ``rows`` held-out rows, by the
    Agresti-Coull estimate (two successes and two failures added): never 0, so that a
    perfect score on a few rows still leaves room for a tie."""
    adjusted = (accuracy * rows + 2) / (rows + 4)
    return math.sqrt(adjusted * (1 - adjusted) / (rows + 4))


def past_the_peak(curve: list[dict[str, Any]], patience: int) -> bool:
    """Whether a walk from most to least regularized can stop: each of the last
    ``patience`` points scored below the best validation accuracy so far, and the
    validation loss rose at each of them (0: never stop)."""
    if patience < 1 or len(curve) <= patience:
        return False
    best = max(point["val_accuracy"] for point in curve)
    losses = [point["val_loss"] for point in curve[-patience - 1 :]]
    below = all(point["val_accuracy"] < best for point in curve[-patience:])
    return below and all(later > earlier for earlier, later in itertools.pairwise(losses))


def class_probabilities(model: Any, features: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """[n, len(classes)] probabilities in ``classes`` order. Heads without ``predict_proba``
    (SVM, ridge) get the softmax of their margins: a ranking, not a calibrated probability.
    A class the model never saw in training gets probability 0."""
    if hasattr(model, "predict_proba"):
        scores = model.predict_proba(features)
    else:
        scores = softmax(model.decision_function(features))
    out = np.zeros((len(features), len(classes)))
    columns = [classes.index(str(c)) for c in model.classes_]
    out[:, columns] = scores
    return out
