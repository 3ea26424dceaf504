"""The evaluation protocol every head follows, and the heads it knows.

1. standardize features with statistics of the training rows only;
2. choose hyperparameters on the validation rows: walk a grid (the logistic probe: 45
   values of ``C`` from 1e-6 to 1e5, warm-started along the grid) or, for the torch heads,
   stop early on the validation loss. The linear heads' walk, from the most regularized
   value up, stops once ``c_patience`` values in a row scored below the best while the
   validation loss rose at each: past the loss minimum, less regularization only overfits
   more, and the values left are the slowest to fit. The choice is the one the whole walk
   makes (tested on real features);
3. refit on training + validation rows with what was chosen;
4. evaluate once on the test rows.

Test rows reach step 4 only: changing them changes nothing before it (tested).
"""

from __future__ import annotations

import itertools
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy.linalg import LinAlgWarning
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import RidgeClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from transfer_pipe.cluster import threads_per_task
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.heads.linear import LBFGSLinearClassifier
from transfer_pipe.heads.metrics import evaluate, softmax
from transfer_pipe.heads.options import ProtocolOptions
from transfer_pipe.heads.tasks import SplitRows, TaskData
from transfer_pipe.heads.torch_heads import TorchLinearClassifier, TorchMLPClassifier
from transfer_pipe.scores import Metrics

logger = logging.getLogger(__name__)

Selection = Literal["grid", "early-stopping"]


@dataclass(frozen=True)
class HeadKind:
    """One kind of head: how to build it and how its hyperparameters are chosen."""

    name: str
    build: Callable[[ProtocolOptions], BaseEstimator]
    grid: Callable[[ProtocolOptions, int], list[dict[str, Any]]]  # (options, train rows)
    selection: Selection = "grid"
    refit_params: Callable[[ProtocolOptions], dict[str, Any]] = lambda _: {}
    # The grid runs from most to least regularized and the estimator has ``data_loss``:
    # the walk may stop past the peak (see the module docstring).
    stops_past_peak: bool = False


def _knn_grid(_: ProtocolOptions, train_rows: int) -> list[dict[str, Any]]:
    return [{"n_neighbors": k} for k in (1, 3, 5, 10, 20, 50) if k <= train_rows]


HEAD_KINDS: dict[str, HeadKind] = {
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
    validation: list[dict[str, Any]]  # one entry per candidate: its params and val accuracy
    metrics: Metrics
    seconds: dict[str, float] = field(default_factory=dict)
    # The sample ids of the rows the model was refitted on, in order: a head that keeps
    # its training rows (kNN) references them in the store instead of a copy.
    fit_ids: np.ndarray | None = None


def fit_head(name: str, data: TaskData, options: ProtocolOptions) -> FittedHead:
    """Run the whole protocol for head ``name`` on ``data``; see the module docstring."""
    kind = head_kind(name)
    threads = threads_per_task()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            started = time.perf_counter()
            chosen, curve, solution = _select(kind, data, options)
            selected = time.perf_counter()
            # A drawn share of the labels (few-shot, a learning curve's point) is refitted
            # on its drawn rows alone: with the validation rows, 1 % of 54,000 labels would
            # train on 540 + 6,000 of them. Validation still chooses the hyperparameters.
            drawn = data.shots is not None or data.label_fraction is not None
            logger.info(
                "%s: chose %s on the %d validation rows; refitting on %s",
                name,
                _format_params(chosen),
                len(data.val),
                "the drawn training rows" if drawn else "train + validation",
            )
            model = _chosen_pipeline(kind, options, chosen)
            both = data.train if drawn else SplitRows.concat(data.train, data.val)
            # The chosen solution on the training rows starts the refit: the same C on
            # 10 % more rows, scaled by nearly the same statistics, lies close by.
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
    finally:
        torch.set_num_threads(previous_threads)
    seconds = {"select": selected - started, "refit": refitted - selected}
    seconds["evaluate"] = time.perf_counter() - refitted
    return FittedHead(name, model, chosen, curve, metrics, seconds, both.sample_ids)


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


def _select(
    kind: HeadKind, data: TaskData, options: ProtocolOptions
) -> tuple[dict[str, Any], list[dict[str, Any]], tuple[np.ndarray, np.ndarray] | None]:
    """Hyperparameters chosen on the validation rows, the validation curve, and for the
    linear heads the solution at the chosen value (the refit's starting point)."""
    scaler = StandardScaler().fit(data.train.features)
    train = scaler.transform(data.train.features)
    val = scaler.transform(data.val.features)
    estimator = kind.build(options)
    if kind.selection == "early-stopping":
        estimator.fit(train, data.train.labels, X_val=val, y_val=data.val.labels)
        best = int(estimator.best_epoch_)
        curve = [{"epoch": i + 1, **h} for i, h in enumerate(estimator.history_)]
        return {"max_epochs": best, "early_stopping": False}, curve, None
    curve = []
    solutions = []
    for params in kind.grid(options, len(data.train)):
        estimator.set_params(**params)
        with warnings.catch_warnings():
            # The grid's extremes are ill-conditioned or slow to converge by design; the
            # validation curve (kept in the model card) is what judges them.
            warnings.simplefilter("ignore", (ConvergenceWarning, LinAlgWarning))
            estimator.fit(train, data.train.labels)
        accuracy = float(np.mean(estimator.predict(val) == data.val.labels))
        point = {**params, "val_accuracy": accuracy}
        if kind.stops_past_peak:
            point["val_loss"] = estimator.data_loss(val, data.val.labels)
            solutions.append((estimator.coef_.copy(), estimator.intercept_.copy()))
        curve.append(point)
        if kind.stops_past_peak and past_the_peak(curve, options.c_patience):
            break
    # The first best: on an ascending C grid, the most regularized of equally good values.
    best = int(np.argmax([point["val_accuracy"] for point in curve]))
    chosen = {k: v for k, v in curve[best].items() if k not in _SCORES}
    return chosen, curve, solutions[best] if solutions else None


_SCORES = ("val_accuracy", "val_loss")


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
