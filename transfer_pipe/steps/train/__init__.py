"""The heads pipeline: cached features in, fitted heads, model cards and reports out.

    plan = prepare_training(config, feature_set)     # task labels and splits, checked
    results = [train_head(plan, run) for run in plan.runs]
    summary = finalize_training(plan, results, embedded=0)

Nothing here computes an embedding: features are read from the store by key. A run whose
heads the store already holds reads their cards and nothing else: not the features, and
not the head code (torch, scikit-learn), which is imported when a head is fitted.

One module per phase: ``plan`` (checks, heads to fit, head ids), ``fit`` (a head fitted
once, here or on the cluster, and saved with its card) and ``summary``.
"""

from __future__ import annotations

from collections.abc import Sequence

from transfer_pipe.config import TrainConfig
from transfer_pipe.steps.embed import embed
from transfer_pipe.steps.results import TrainSummary
from transfer_pipe.steps.target import embed_first
from transfer_pipe.steps.train.fit import head_report, task_ref, train_head
from transfer_pipe.steps.train.plan import (
    HeadRun,
    TrainPlan,
    check_features,
    head_id,
    prepare_training,
)
from transfer_pipe.steps.train.summary import finalize_training


def train(config: TrainConfig) -> TrainSummary:
    """The whole heads pipeline without an orchestrator (notebooks, tests): embeds first
    when ``config.embed`` is given (a no-op for a cached feature set)."""
    feature_set, embedded = embed_first(config, embed)
    plan = prepare_training(config, feature_set)
    results = [train_head(plan, run) for run in plan.runs]
    return finalize_training(plan, results, embedded)


__all__: Sequence[str] = (
    "HeadRun",
    "TrainPlan",
    "check_features",
    "finalize_training",
    "head_id",
    "head_report",
    "prepare_training",
    "task_ref",
    "train",
    "train_head",
)
