"""A heads run's plan: the feature set and layer checked, the task and split options, the
heads to fit (and the draws of few-shot and label-fraction runs), and each head's id;
the rows read only when a head is fitted.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from transfer_pipe.config import AUTO_LAYER, TrainConfig
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.heads.options import SELECTION_RULE, ProtocolOptions
from transfer_pipe.heads.tasks import (
    SplitOptions,
    Task,
    TaskData,
    load_task,
    parse_task,
    split_layers,
)
from transfer_pipe.steps.layer_choice import LayerChoice, choose_layer
from transfer_pipe.store import FeatureSetSpec, StorageOptions, open_store
from transfer_pipe.store.keys import content_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadRun:
    """One head to fit; ``shot_seed`` is set for each repeat of a few-shot or
    label-fraction run (the seed of its draw of training rows)."""

    head: str
    shot_seed: int | None = None


@dataclass(frozen=True)
class TrainPlan:
    config: TrainConfig
    feature_set: str
    task: Task
    layer: str
    splits: SplitOptions
    runs: tuple[HeadRun, ...]
    feature_set_spec: FeatureSetSpec
    layer_choice: LayerChoice | None = None  # how ``layer`` was chosen (None: given)

    def without_rows(self) -> TrainPlan:
        """The plan without the rows it may have read (what a Dask task carries: the
        worker reads them from the store by key)."""
        return replace(self)

    @functools.cached_property
    def data(self) -> TaskData:
        """The task's rows, labelled and split: read the first time a head is fitted,
        never by a run whose heads the store holds."""
        data = load_task(
            open_store(self.config.store, self.config.storage_options),
            self.feature_set,
            self.task,
            self.layer,
            self.splits,
        )
        logger.info(
            "task %s on feature set %s, layer %s: %d classes, splits %s (%s)",
            data.task.name,
            self.feature_set,
            data.layer,
            len(data.classes),
            data.sizes(),
            data.split_origin,
        )
        return data


def prepare_training(config: TrainConfig, feature_set: str) -> TrainPlan:
    """Resolve the feature set, layer, task and split options, so that a mistake fails
    before the first (possibly long) fit. The rows are read when a head needs them."""
    spec, _ = check_features(config.store, feature_set, config.layer, config.storage_options)
    splits = SplitOptions(config.val_fraction, config.test_fraction, config.split_seed)
    runs = tuple(HeadRun(head, seed) for head in config.heads for seed in _draw_seeds(config))
    task = parse_task(config.task)
    choice = choose_layer(
        config, feature_set, spec, task, splits, ProtocolOptions.from_config(config)
    )
    if choice.how != "given":
        logger.info("layer %s (%s): %s", choice.layer, choice.how, choice.reason)
    plan = TrainPlan(config, feature_set, task, choice.layer, splits, runs, spec, choice)
    if config.shots is not None:
        plan.data.few_shot(config.shots, 0)  # fails now, not after the first head, when too few
    logger.info(
        "task %s on feature set %s, layer %s: heads %s",
        plan.task.name,
        feature_set,
        plan.layer,
        ", ".join(config.heads),
    )
    return plan


def _draw_seeds(config: TrainConfig) -> Sequence[int | None]:
    """The seeds of the training-row draws each head is fitted on: one per repeat for
    few-shot and label-fraction runs, a single one for fraction 1 (every seed keeps every
    row, so repeats would fit the same model), none (all rows) otherwise."""
    if config.label_fraction == 1:
        return [0]
    if config.shots is not None or config.label_fraction is not None:
        return range(config.shot_seeds)
    return [None]


def check_features(
    store_url: str,
    feature_set: str,
    layer: str | None,
    storage_options: StorageOptions = None,
) -> tuple[FeatureSetSpec, str]:
    """The spec of a complete feature set and the layer to read (``a+b``: side by side;
    None: its first), or an error that says what to run or pass instead."""
    store = open_store(store_url, storage_options)
    status = store.status(feature_set)
    if status != "complete":
        raise TransferPipeError(
            f"feature set {feature_set} is {status} in {store_url}; "
            + (
                "run `transfer-pipe embed` again to finish it."
                if status == "incomplete"
                else f"`transfer-pipe ls --store {store_url}` lists the feature sets."
            )
        )
    spec = store.spec(feature_set)
    if layer in (None, AUTO_LAYER):
        return spec, AUTO_LAYER  # chosen by steps.layer_choice, among the layers it holds
    assert layer is not None
    missing = [name for name in split_layers(layer) if name not in spec.layers]
    if missing:
        raise TransferPipeError(
            f"feature set {feature_set} has no layer {missing[0]!r}; it holds "
            f"{list(spec.layers)} (join several with '+')."
        )
    return spec, layer


def head_id(plan: TrainPlan, run: HeadRun) -> str:
    """Deterministic: the same head on the same features, task, split and options gets the
    same id (and a rerun replaces it). Known without reading the features."""
    fraction = plan.config.label_fraction
    identity: dict[str, Any] = {
        "feature_set": plan.feature_set,
        "layer": plan.layer,
        "task": plan.task.digest,
        "split": [plan.config.val_fraction, plan.config.test_fraction, plan.config.split_seed],
        "shots": [plan.config.shots, run.shot_seed],
        "head": run.head,
        "options": asdict(ProtocolOptions.from_config(plan.config)),
        # A head chosen by an earlier rule is refitted, not reused (heads.options).
        "selection": SELECTION_RULE,
    }
    if fraction is not None:  # only then: every head id of a run without it stays the same
        identity["label_fraction"] = fraction
    if run.shot_seed is not None:  # drawn rows refit alone (earlier cards: with validation)
        identity["refit"] = "drawn rows"
    digest = content_id(identity, 10)
    task = re.sub(r"[^a-z0-9]+", "-", plan.task.name.lower()).strip("-") or "task"
    if run.shot_seed is None:
        draw = ""
    elif fraction is not None:
        draw = f"-{fraction * 100:g}pct-s{run.shot_seed}"
    else:
        draw = f"-{plan.config.shots}shot-s{run.shot_seed}"
    return f"{task}-{run.head}{draw}-{digest}"
