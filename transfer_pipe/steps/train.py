"""The heads pipeline: cached features in, fitted heads, model cards and reports out.

    plan = prepare_training(config, feature_set)     # task labels and splits, checked
    results = [train_head(plan, run) for run in plan.runs]
    summary = finalize_training(plan, results, embedded=0)

Nothing here computes an embedding: features are read from the store by key. A run whose
heads the store already holds reads their cards and nothing else: not the features, and
not the head code (torch, scikit-learn), which is imported when a head is fitted.
"""

from __future__ import annotations

import functools
import json
import logging
import posixpath
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transfer_pipe.config import AUTO_LAYER, TrainConfig
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.heads.card import HeadCard, HeadResult, head_url, read_card
from transfer_pipe.heads.options import SELECTION_RULE, ProtocolOptions
from transfer_pipe.heads.tasks import (
    SplitOptions,
    Task,
    TaskData,
    load_task,
    parse_task,
    split_layers,
)
from transfer_pipe.report import (
    markdown_report,
    metrics_rows,
    png_data_uri,
    save_result_plots,
)
from transfer_pipe.steps.embed import embed, library_versions
from transfer_pipe.steps.failures import StepFailed
from transfer_pipe.steps.jobs import claimed_job, here_or_on_cluster
from transfer_pipe.steps.layer_choice import LayerChoice, choose_layer
from transfer_pipe.steps.results import HeadSummary, TrainSummary
from transfer_pipe.steps.target import embed_first
from transfer_pipe.store import FeatureSetSpec, StorageOptions, open_store
from transfer_pipe.store.cards import CARD, SplitSizes, TaskRef, store_fs
from transfer_pipe.store.keys import content_id

if TYPE_CHECKING:
    from transfer_pipe.heads.protocol import FittedHead

logger = logging.getLogger(__name__)
_LIBRARIES = ("transfer-pipe", "torch", "scikit-learn", "numpy", "skops", "safetensors")


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


def train_head(plan: TrainPlan, run: HeadRun, *, plots: bool = True) -> HeadResult:
    """Fit one head by the protocol, save it with its card, report files and plots; returns
    its result (ids, chosen hyperparameters, metrics, seconds, where it lives). A head the
    store already holds under the same id (same features, task, split and options) is
    reused, unless the config asks to refit. ``plots=False`` saves it without the
    confusion and per-class pictures (a second or more each on a CPU: the sweep fits dozens
    of probes and draws its own curves)."""
    identity = head_id(plan, run)
    config = plan.config
    key = f"head-{identity}"

    def saved() -> HeadCard | None:
        return None if config.refit else read_card(config.store, identity, config.storage_options)

    def reuse(card: HeadCard) -> HeadResult:
        logger.info("head %s: reused (the store holds it for these features and options)", identity)
        return card.reused(head_url(config.store, identity))

    def failed(exc: Exception) -> StepFailed:
        return StepFailed(
            f"head {run.head} ({identity}) on feature set {plan.feature_set} failed: "
            f"{type(exc).__name__}: {exc}. Heads already saved are kept; run again to "
            "fit the rest."
        )

    return claimed_job(
        config,
        key,
        busy=f"head {identity} is being fitted",
        saved=saved,
        reuse=reuse,
        run=lambda: here_or_on_cluster(config, key, _fit_and_save, plan, run, identity, plots),
        failed=failed,
    )


def _fit_and_save(plan: TrainPlan, run: HeadRun, identity: str, plots: bool = True) -> HeadResult:
    """Fit head ``run`` by the protocol and save it, its card, report and (``plots``) plots."""
    from transfer_pipe.heads.persist import save_head
    from transfer_pipe.heads.protocol import fit_head

    data = plan.data
    if run.shot_seed is not None and plan.config.shots is not None:
        data = data.few_shot(plan.config.shots, run.shot_seed)
    if run.shot_seed is not None and plan.config.label_fraction is not None:
        data = data.label_subset(plan.config.label_fraction, run.shot_seed)
    fitted = fit_head(run.head, data, ProtocolOptions.from_config(plan.config))
    result = HeadResult(
        head_id=identity,
        head=run.head,
        task=data.task.name,
        layer=data.layer,
        shots=data.shots,
        shot_seed=data.shot_seed,
        chosen=fitted.chosen,
        metrics=fitted.metrics,
        seconds=fitted.seconds,
        label_fraction=data.label_fraction,
        selection=fitted.selection,
        layer_choice=_chosen_layer(plan),
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = _report_files(Path(tmp), result, plots)
        card = _card(plan, data, fitted, result)
        config = plan.config
        url = save_head(
            config.store,
            card,
            fitted.model,
            files.values(),
            config.storage_options,
            fit_ids=None if fitted.fit_ids is None else fitted.fit_ids.tolist(),
        )
    logger.info(
        "head %s: fitted, test accuracy %.4f, macro F1 %.4f; saved to %s",
        identity,
        fitted.metrics.accuracy,
        fitted.metrics.macro_f1,
        url,
    )
    return replace(result, url=url)


def head_report(store: str, result: HeadResult, storage_options: StorageOptions = None) -> str:
    """A saved head's markdown report for a viewer that has no access to the store (the
    Prefect UI): its plots inline as ``data:`` URIs, and where its folder, model file and
    card live (the store read with the run's ``storage_options``)."""
    url = result.url or head_url(store, result.head_id)
    card = read_card(store, result.head_id, storage_options)
    files = {"head folder": url, "card": posixpath.join(url, CARD)}
    if card is not None and card.model_file:
        files["model"] = posixpath.join(url, card.model_file)
    fs, folder = store_fs(url, storage_options)
    images = {}
    for name in _PLOTS:
        path = posixpath.join(folder, f"{name}.png")
        if fs.exists(path):
            images[name] = png_data_uri(fs.cat_file(path))
    return markdown_report(result, images, files, **_why(result))


def _why(result: HeadResult) -> dict[str, str | None]:
    """How the result's hyperparameters and layer were chosen, for its report (None:
    unrecorded, or the layer given)."""
    return {
        "chosen_by": None if result.selection is None else result.selection.describe(),
        "layer_why": None if result.layer_choice is None else result.layer_choice.describe(),
    }


def _chosen_layer(plan: TrainPlan) -> LayerChoice | None:
    """The plan's layer choice, unless the layer was given (nothing to explain)."""
    choice = plan.layer_choice
    return None if choice is None or choice.how == "given" else choice


_PLOTS = ("confusion", "per_class")  # the PNGs ``save_result_plots`` writes


def _report_files(folder: Path, result: HeadResult, plots: bool = True) -> dict[str, Path]:
    files = save_result_plots(folder, result) if plots else {}
    report = folder / "report.md"
    images = {k: p.name for k, p in files.items()}
    report.write_text(markdown_report(result, images, None, **_why(result)))
    return {**files, "report": report}


def _card(plan: TrainPlan, data: TaskData, fitted: FittedHead, result: HeadResult) -> HeadCard:
    """The model card: everything needed to trust, reproduce and reuse the head."""
    spec = plan.feature_set_spec
    estimator = fitted.model.named_steps["head"]
    return HeadCard(
        feature_set=plan.feature_set,
        store=plan.config.store,
        source=spec.source,
        backbone=spec.backbone,
        weights_digest=spec.weights_digest,
        preprocessing=dict(spec.preprocessing),
        embedding_key=spec.embedding_key,
        dtype=spec.dtype,
        autocast=spec.autocast,
        task=task_ref(data),
        classes=list(data.classes),
        splits=data.split_sizes(),
        notes=list(data.notes),
        estimator=type(estimator).__name__,
        params={k: v for k, v in estimator.get_params().items() if _jsonable(v)},
        validation_curve=fitted.validation,
        result=result,
        libraries=library_versions(_LIBRARIES),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        warnings=list(fitted.warnings),
    )


def task_ref(data: TaskData) -> TaskRef:
    """The task as a card records it: its definition and the digest that identifies it."""
    return TaskRef.from_dict({**data.task.to_dict(), "digest": data.task.digest})


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


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


def train(config: TrainConfig) -> TrainSummary:
    """The whole heads pipeline without an orchestrator (notebooks, tests): embeds first
    when ``config.embed`` is given (a no-op for a cached feature set)."""
    feature_set, embedded = embed_first(config, embed)
    plan = prepare_training(config, feature_set)
    results = [train_head(plan, run) for run in plan.runs]
    return finalize_training(plan, results, embedded)
