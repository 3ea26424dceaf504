"""Train a planned run (or resume it, or reuse it finished), here or on the Dask cluster,
once however many runs ask; test it and save the model with its card and reports.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer_pipe.cluster import resolve_device, threads_per_task
from transfer_pipe.finetune.card import (
    FinetuneCard,
    FinetuneResult,
    ProbeScore,
    RunScore,
    SkippedImage,
    best_val_accuracy,
    probe_verdict,
)
from transfer_pipe.finetune.data import ImageRows, choose_augmentation, loader_threads
from transfer_pipe.finetune.loop import BEST, LAST, EpochCallback, Trainer, TrainOptions, TrainState
from transfer_pipe.finetune.persist import list_cards, read_card, run_url, save_finetuned
from transfer_pipe.heads.card import HeadCard
from transfer_pipe.heads.metrics import evaluate
from transfer_pipe.report import finetune_report, save_learning_curves, save_result_plots
from transfer_pipe.schema import TEST, TRAIN, VAL
from transfer_pipe.scores import Metrics
from transfer_pipe.steps.embed import library_versions
from transfer_pipe.steps.finetune.plan import (
    PROBE_LAYER,
    FinetunePlan,
    checkpoints_of,
    run_head_name,
)
from transfer_pipe.steps.finetune.probe import build_model, probe_val_accuracy
from transfer_pipe.steps.jobs import claimed_job, here_or_on_cluster
from transfer_pipe.steps.train import task_ref

_LIBRARIES = ("transfer-pipe", "torch", "torchvision", "numpy", "pillow", "safetensors")


def _rows(plan: FinetunePlan, split: str, augmentation: str) -> ImageRows:
    images = plan.splits[split]
    threads = loader_threads(plan.config.loader_threads)
    return ImageRows(
        images.uris, images.targets, plan.preprocessing, augmentation, plan.config.seed, threads
    )


def trainer(plan: FinetunePlan) -> Trainer:
    """A trainer for the plan, not yet started (``fit`` resumes from its checkpoints)."""
    config = plan.config
    device = resolve_device(config.device)
    if device.type == "cpu":
        torch.set_num_threads(threads_per_task())
    augmentation = choose_augmentation(plan.splits[TRAIN].uris, config.augment)
    options = TrainOptions.from_config(config)
    checkpoints = checkpoints_of(config, plan.run_id)
    # A resumed run loads its weights from the checkpoint: no LP-FT head to fit first.
    fresh = not checkpoints.exists(LAST)
    return Trainer(
        build_model(plan, lp_ft_head=fresh),
        _rows(plan, TRAIN, augmentation),
        _rows(plan, VAL, "none"),
        options,
        checkpoints.url,
        device,
        storage_options=checkpoints.storage_options,
    )


def run_finetune(
    plan: FinetunePlan, probe_card: HeadCard, on_epoch: EpochCallback | None = None
) -> FinetuneResult:
    """Train (or resume, or reuse a finished run), evaluate on test, save the model with
    its card and reports, here or as one task on the run's Dask cluster (a GPU worker when
    the run asks for CUDA; checkpoints go to the store, so a rerun resumes on any worker);
    returns the result. ``on_epoch`` sees each epoch as it ends (on a worker: sent as a
    worker event), and any it missed from the result's history at the end."""
    config = plan.config
    key = f"finetune-{plan.run_id}"

    def saved() -> FinetuneCard | None:
        return read_card(config.store, plan.run_id, config.storage_options)

    def train() -> FinetuneResult:
        if on_epoch is None:
            return here_or_on_cluster(config, key, _train_and_save, plan, probe_card)
        seen = [0]  # the last epoch passed on

        def forward(row: dict[str, Any]) -> None:
            seen[0] = max(seen[0], int(row["epoch"]))
            on_epoch(row)

        result = here_or_on_cluster(
            config, key, _train_and_save, plan, probe_card, on_event=forward
        )
        for row in result.history:
            if row["epoch"] > seen[0]:  # a lost event is not lost
                on_epoch(row)
        return result

    return claimed_job(
        config,
        key,
        busy=f"fine-tuning run {plan.run_id} is being trained",
        saved=saved,
        reuse=lambda card: _reused(plan, card),
        run=train,
    )


def _reused(plan: FinetunePlan, done: FinetuneCard) -> FinetuneResult:
    # A run with the other init may have finished since this one: show it too.
    compared = done.result.compared or compared_run(plan)
    url = run_url(plan.config.store, plan.run_id)
    return replace(done.result, url=url, reused=True, compared=compared)


def _train_and_save(
    plan: FinetunePlan, probe_card: HeadCard, on_epoch: EpochCallback | None = None
) -> FinetuneResult:
    """Train (or resume from the store's checkpoints), evaluate on test, save the model
    with its card and reports."""
    job = trainer(plan)
    state = job.fit(on_epoch)
    test_rows = _rows(plan, TEST, "none")
    proba, kept = job.predict(test_rows)
    labels = np.asarray(plan.classes)[test_rows.targets[kept]]
    metrics = evaluate(labels, proba, plan.classes, seed=plan.config.split_seed)
    test_skipped = sorted(set(range(len(test_rows))) - set(kept.tolist()))
    result = _result(plan, job, state, metrics, probe_card, test_skipped)
    with tempfile.TemporaryDirectory() as tmp:
        files = _report_files(Path(tmp), result)
        card = _card(plan, job, result)
        url = save_finetuned(
            plan.config.store, card, job.model, files.values(), plan.config.storage_options
        )
    return replace(result, url=url)


def _result(
    plan: FinetunePlan,
    job: Trainer,
    state: TrainState,
    metrics: Metrics,
    probe_card: HeadCard,
    test_skipped: list[int],
) -> FinetuneResult:
    config = plan.config
    probe = ProbeScore(
        head_id=plan.probe_head_id,
        metrics=probe_card.result.metrics,
        val_accuracy=probe_val_accuracy(probe_card),
    )
    val_accuracy = best_val_accuracy(state.history, state.best_epoch)
    scratch = config.init == "random"
    trained = "the model trained from scratch" if scratch else "the fine-tuned model"
    verdict = probe_verdict(val_accuracy, probe, trained)
    return FinetuneResult(
        run_id=plan.run_id,
        head=run_head_name(config),
        task=plan.probe_plan.data.task.name,
        layer=PROBE_LAYER,
        policy=config.policy,
        lp_ft=config.lp_ft,
        epochs=state.epoch,
        best_epoch=state.best_epoch,
        stopped=state.finished,
        history=state.history,
        skipped_images=_skipped(plan, TRAIN, sorted(state.failed.items()))
        + _skipped(plan, TEST, [(row, "could not be decoded") for row in test_skipped]),
        device=str(job.device),
        image_size=plan.preprocessing.image_size,
        chosen={"epoch": state.best_epoch},
        metrics=metrics,
        probe=probe,
        seconds={"train": state.seconds},
        checkpoint=job.checkpoints.file_url(BEST),
        init=config.init,
        below_probe=bool(verdict),
        verdict=verdict,
        compared=compared_run(plan),
    )


def compared_run(plan: FinetunePlan) -> RunScore | None:
    """The store's finished run with the other init on the same feature set, task and
    split (the same probe): preferring one with the same budget (epochs, time budget),
    then the newest; ``None`` when there is none."""
    config = plan.config
    other = "pretrained" if config.init == "random" else "random"
    found = [
        card
        for card in list_cards(config.store, config.storage_options)
        if card.probe_head_id == plan.probe_head_id
        and card.init == other
        and card.feature_set == plan.feature_set
    ]
    if not found:
        return None
    budget = (config.epochs, config.time_budget_s)

    def preference(card: FinetuneCard) -> tuple[bool, str]:
        options = card.hyperparameters
        return ((options.get("epochs"), options.get("time_budget_s")) == budget, card.created)

    card = max(found, key=preference)
    return RunScore(
        run_id=card.run_id,
        head=card.result.head,
        init=card.init,
        val_accuracy=card.result.val_accuracy,
        metrics=card.result.metrics,
    )


def _skipped(
    plan: FinetunePlan, split: str, failures: Sequence[tuple[int, str]]
) -> list[SkippedImage]:
    """``(row, reason)`` pairs of one split as skipped images named by sample id."""
    ids = plan.splits[split].sample_ids
    return [SkippedImage(split, str(ids[row]), reason) for row, reason in failures]


def _report_files(folder: Path, result: FinetuneResult) -> dict[str, Path]:
    curves = save_learning_curves(
        folder / "curves.png",
        result.history,
        baseline=result.probe.metrics.accuracy,
        title=result.run_id,
    )
    files = {"curves": curves, **save_result_plots(folder, result)}
    report = folder / "report.md"
    report.write_text(finetune_report(result, {k: p.name for k, p in files.items()}))
    return {**files, "report": report}


def _card(plan: FinetunePlan, job: Trainer, result: FinetuneResult) -> FinetuneCard:
    spec, config, data = plan.feature_set_spec, plan.config, plan.probe_plan.data
    return FinetuneCard(
        run_id=plan.run_id,
        feature_set=plan.feature_set,
        store=config.store,
        source=spec.source,
        backbone=plan.backbone.id,
        weights_digest=spec.weights_digest,
        preprocessing=plan.preprocessing,
        task=task_ref(data),
        classes=list(plan.classes),
        splits=data.split_sizes(),  # the probe's split: the same rows
        policy=config.policy,
        lp_ft=config.lp_ft,
        init=config.init,
        probe_head_id=plan.probe_head_id,
        hyperparameters=asdict(job.options)
        | {"augment": job.train_rows.augmentation, "bn": config.bn},
        trainable_segments=[s.name for s in job.model.trainable_segments()],
        trainable_parameters=sum(p.numel() for p in job.model.parameters() if p.requires_grad),
        result=result,
        libraries=library_versions(_LIBRARIES),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
