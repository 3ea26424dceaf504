"""A heads run's summary: per head kind its test metrics (the mean and spread over seeds
for few-shot and label-fraction runs), the task's split, and the metrics table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from transfer_pipe.heads.card import HeadResult, read_card
from transfer_pipe.report import metrics_rows
from transfer_pipe.steps.results import HeadSummary, TrainSummary
from transfer_pipe.steps.train.plan import TrainPlan
from transfer_pipe.store.cards import SplitSizes


def finalize_training(
    plan: TrainPlan, results: Sequence[HeadResult], embedded: int = 0
) -> TrainSummary:
    """The run's summary: per head its test metrics (the mean over seeds for few-shot and
    label-fraction runs), the metrics table rows, and ``embedded`` (forward passes this run
    paid for)."""
    heads = {}
    for name in plan.config.heads:
        mine = [r for r in results if r.head == name]
        if mine:
            heads[name] = _head_summary(mine)
    classes, splits, notes = _rows_summary(plan, results)
    return TrainSummary(
        feature_set=plan.feature_set,
        store=plan.config.store,
        task=plan.task.name,
        layer=plan.layer,
        classes=list(classes),
        splits=splits,
        shots=plan.config.shots,
        notes=list(notes),
        embedded=embedded,
        heads_fitted=sum(not r.reused for r in results),
        heads_reused=sum(r.reused for r in results),
        heads=heads,
        table=metrics_rows(results),
        label_fraction=plan.config.label_fraction,
        layer_choice=plan.layer_choice,
    )


def _rows_summary(
    plan: TrainPlan, results: Sequence[HeadResult]
) -> tuple[Sequence[str], SplitSizes, Sequence[str]]:
    """The task's classes, split sizes (and origin) and notes. When every head was
    reused, from a saved head's card: the same features, task and split options mean the
    same rows, and a rerun then reads no features. (Not for a few-shot or label-fraction
    run: its cards hold the size of a draw, and the summary reports the full split.)"""
    drawn = plan.config.shots is not None or plan.config.label_fraction is not None
    if results and all(r.reused for r in results) and not drawn:
        card = read_card(plan.config.store, results[0].head_id, plan.config.storage_options)
        if card is not None:
            return card.classes, card.splits, card.notes
    data = plan.data
    return data.classes, data.split_sizes(), data.notes


def _head_summary(results: Sequence[HeadResult]) -> HeadSummary:
    """One head kind's results (several for few-shot or label-fraction seeds): mean
    metrics, their spread (with several seeds), and the CI and chosen hyperparameters of a
    single head."""
    metrics = [r.metrics for r in results]
    accuracy, accuracy_std = _spread([m.accuracy for m in metrics])
    macro_f1, macro_f1_std = _spread([m.macro_f1 for m in metrics])
    balanced, balanced_std = _spread([m.balanced_accuracy for m in metrics])
    ece, ece_std = _spread([m.ece for m in metrics])
    top5 = [m.top5_accuracy for m in metrics if m.top5_accuracy is not None]
    top5_accuracy, top5_std = _spread(top5) if top5 else (None, None)
    single = results[0] if len(results) == 1 else None
    return HeadSummary(
        accuracy=accuracy,
        macro_f1=macro_f1,
        balanced_accuracy=balanced,
        ece=ece,
        top5_accuracy=top5_accuracy,
        accuracy_std=accuracy_std,
        macro_f1_std=macro_f1_std,
        balanced_accuracy_std=balanced_std,
        top5_accuracy_std=top5_std,
        ece_std=ece_std,
        accuracy_ci95=list(single.metrics.accuracy_ci95) if single else None,
        chosen=single.chosen if single else None,
        head_ids=[r.head_id for r in results],
        fit_seconds=float(sum(sum(r.seconds.values()) for r in results)),
    )


def _spread(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean of ``values`` and, when there are several, their standard deviation."""
    return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else None
