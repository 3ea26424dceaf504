"""The fine-tuning pipeline: continue backprop into the backbone for a task, judged
against the linear probe on the same rows, task and split.

    plan = prepare_finetune(config, feature_set)  # task rows, splits, backbone, run id
    probe = ensure_probe(plan)                   # the heads flow's logreg (fitted if missing)
    result = run_finetune(plan, probe)           # train (resuming a killed run), test, save
    summary = finalize_finetune(plan, result)
    publish(plan)                                 # optional: new weights -> new feature set

The rows and splits come from the feature set exactly as the heads flow reads them (images
that failed to decode there are not in it), and each image is decoded again from its URI
by the same decoder.

LP-FT is the default: fine-tuning starts from the probe's head, so it starts where the
probe ends. A run that still ends below the probe on validation says so, recommends the
probe, and is not published without ``force``. ``init="random"`` trains the same
architecture from seeded random weights (``random/<backbone>``), whole and without LP-FT:
the from-scratch baseline, shown beside pretrained fine-tuning on the same feature set,
task and split (when the store holds that run) and the probe on the pretrained features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.pipeline import Pipeline

from transfer_pipe.backbones import (
    BackboneSpec,
    Preprocessing,
    StoreLocation,
    get_backbone,
    publish_backbone,
    random_variant,
)
from transfer_pipe.backbones.registry import Stores
from transfer_pipe.cluster import resolve_device, threads_per_task
from transfer_pipe.config import EmbedConfig, FinetuneConfig
from transfer_pipe.data.sources import source_from_description
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.finetune.card import (
    FinetuneCard,
    FinetuneResult,
    ProbeScore,
    RunScore,
    SkippedImage,
    best_val_accuracy,
    probe_verdict,
)
from transfer_pipe.finetune.checkpoint import CheckpointFolder
from transfer_pipe.finetune.data import (
    ImageRows,
    choose_augmentation,
    loader_threads,
    loader_workers,
)
from transfer_pipe.finetune.loop import (
    BEST,
    LAST,
    EpochCallback,
    Trainer,
    TrainOptions,
    TrainState,
    load_model_weights,
)
from transfer_pipe.finetune.persist import (
    checkpoint_folder,
    export_backbone,
    list_cards,
    read_card,
    run_url,
    save_finetuned,
)
from transfer_pipe.finetune.surgery import (
    FinetuneModel,
    build_finetune_model,
    init_head,
    probe_head,
)
from transfer_pipe.heads.card import HeadCard
from transfer_pipe.heads.card import read_card as read_head_card
from transfer_pipe.heads.metrics import evaluate
from transfer_pipe.heads.protocol import fit_on_train
from transfer_pipe.heads.tasks import SplitRows
from transfer_pipe.report import (
    comparison_rows,
    finetune_report,
    save_learning_curves,
    save_result_plots,
)
from transfer_pipe.schema import SAMPLE_ID, TEST, TRAIN, URI, VAL
from transfer_pipe.scores import Metrics
from transfer_pipe.steps.embed import embed, library_versions
from transfer_pipe.steps.results import EmbedSummary, FinetuneSummary
from transfer_pipe.steps.target import embed_first
from transfer_pipe.steps.train import (
    HeadRun,
    TrainPlan,
    dask_address_of,
    head_id,
    prepare_training,
    protocol_options,
    task_ref,
    train_head,
)
from transfer_pipe.store import FeatureSetSpec, open_store
from transfer_pipe.store.cards import SplitSizes
from transfer_pipe.store.claims import Claim, Holder, every
from transfer_pipe.store.options import store_options

logger = logging.getLogger(__name__)

PROBE_HEAD = "logreg"
PROBE_LAYER = "penultimate"
_LIBRARIES = ("transfer-pipe", "torch", "torchvision", "numpy", "pillow", "safetensors")


@dataclass(frozen=True)
class SplitImages:
    """One split's images: URIs, integer targets (indices into the classes), sample ids."""

    uris: tuple[str, ...]
    targets: np.ndarray
    sample_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.uris)


@dataclass(frozen=True)
class FinetunePlan:
    config: FinetuneConfig
    feature_set: str
    feature_set_spec: FeatureSetSpec
    run_id: str
    backbone: BackboneSpec
    preprocessing: Preprocessing
    classes: tuple[str, ...]
    splits: dict[str, SplitImages]
    probe_plan: TrainPlan  # the heads flow's plan for the probe on the same task and split
    probe_head_id: str


def prepare_finetune(config: FinetuneConfig, feature_set: str) -> FinetunePlan:
    """Resolve the task's rows and splits on the feature set (as the heads flow does), the
    backbone and its weights, and the run id; everything is checked before training. The
    plan holds the options as trained (``FinetuneConfig.as_trained``: random init trains
    the whole network without LP-FT)."""
    config = config.as_trained()
    probe_config = config.heads_config(feature_set, heads=(PROBE_HEAD,), layer=PROBE_LAYER)
    store = open_store(config.store, config.storage_options)
    if store.status(feature_set) == "complete":
        layers = store.spec(feature_set).layers
        if PROBE_LAYER not in layers:
            raise TransferPipeError(
                f"feature set {feature_set} holds {list(layers)}, not '{PROBE_LAYER}': the "
                "fine-tuned head reads the penultimate features, and so must the probe it is "
                "compared with; embed with the default layers."
            )
    probe_plan = prepare_training(probe_config, feature_set)
    spec = probe_plan.feature_set_spec
    # A feature set embedded with a published backbone names it: resolve it in this store.
    stores = (StoreLocation.of(config.store, _storage_options(config)),)
    backbone = _backbone(spec, config, stores)
    preprocessing = Preprocessing.from_dict(spec.preprocessing)
    data = probe_plan.data
    table = store.row_table(feature_set, columns=(SAMPLE_ID, URI))
    uris = dict(zip(table[SAMPLE_ID], table[URI], strict=True))
    index = {label: i for i, label in enumerate(data.classes)}
    splits = {
        name: _images(rows, uris, index)
        for name, rows in ((TRAIN, data.train), (VAL, data.val), (TEST, data.test))
    }
    plan = FinetunePlan(
        config=config,
        feature_set=feature_set,
        feature_set_spec=spec,
        run_id="",
        backbone=backbone,
        preprocessing=preprocessing,
        classes=data.classes,
        splits=splits,
        probe_plan=probe_plan,
        probe_head_id=head_id(probe_plan, HeadRun(PROBE_HEAD)),
    )
    return replace(plan, run_id=run_id(plan))


def _storage_options(config: FinetuneConfig) -> dict[str, Any]:
    """The fsspec options of the run's store: its protocol's defaults under the config's."""
    return store_options(config.store, config.storage_options)


def _checkpoints(config: FinetuneConfig, run: str) -> CheckpointFolder:
    """The run's checkpoints, in its store: a resume on any machine finds them."""
    return checkpoint_folder(config.store, run, _storage_options(config))


def _images(rows: SplitRows, uris: dict[str, str], index: dict[str, int]) -> SplitImages:
    return SplitImages(
        uris=tuple(uris[s] for s in rows.sample_ids),
        targets=np.asarray([index[label] for label in rows.labels], dtype=np.int64),
        sample_ids=rows.sample_ids,
    )


def _backbone(spec: FeatureSetSpec, config: FinetuneConfig, stores: Stores = ()) -> BackboneSpec:
    """The backbone with the very weights the feature set was embedded with (with random
    init: its architecture with seeded random weights, ``random/<id>``); a published one
    is looked up in ``stores``."""
    if config.init == "random":
        return get_backbone(random_variant(spec.backbone), stores=stores)
    candidates: list[str | None] = []
    if config.embed is not None and config.embed.weights_file:
        candidates.append(config.embed.weights_file)
    candidates += [None, spec.weights_file]
    for weights_file in dict.fromkeys(candidates):
        try:
            backbone = get_backbone(spec.backbone, weights_file, stores)
        except TransferPipeError:
            continue
        if backbone.weights_digest() == spec.weights_digest:
            return backbone
    raise TransferPipeError(
        f"cannot find the weights feature set {spec.key} was embedded with "
        f"({spec.backbone}, sha256 {spec.weights_digest[:12]}…); embed the source with "
        "--weights-file pointing at them and fine-tune that feature set."
    )


def run_id(plan: FinetunePlan) -> str:
    """Deterministic: the same data, task, split, policy and options give the same id, so
    a rerun of a killed run finds its checkpoints and resumes."""
    config = plan.config
    identity = {
        "feature_set": plan.feature_set,
        "task": plan.probe_plan.data.task.digest,
        "split": [config.val_fraction, config.test_fraction, config.split_seed],
        "probe": plan.probe_head_id if config.lp_ft else None,
        "policy": config.policy,
        "options": asdict(train_options(config)),
        "augment": config.augment,
        "bn": config.bn,
    }
    if config.init != "pretrained":  # only then: pretrained runs keep the ids they had
        identity["init"] = config.init
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    task = re.sub(r"[^a-z0-9]+", "-", plan.probe_plan.data.task.name.lower()).strip("-")
    lp_ft = "-lpft" if config.lp_ft else ""
    init = "-scratch" if config.init == "random" else ""
    return f"{task or 'task'}{init}-{config.policy}{lp_ft}-{digest}"


def run_head_name(config: FinetuneConfig) -> str:
    """How tables name the run's model, e.g. ``finetune top-2 lp-ft`` or ``scratch full``."""
    if config.init == "random":
        return f"scratch {config.policy}"
    return f"finetune {config.policy}" + (" lp-ft" if config.lp_ft else "")


def train_options(config: FinetuneConfig) -> TrainOptions:
    return TrainOptions(
        epochs=config.epochs,
        batch_size=config.batch_size,
        accumulate=config.accumulate,
        lr=config.lr,
        # A new head starts far from any solution and may move fast; a probe's head is
        # already fitted and moves with the backbone.
        head_lr=config.lr if config.lp_ft else 10 * config.lr,
        lr_decay=config.lr_decay,
        weight_decay=config.weight_decay,
        warmup_epochs=config.warmup_epochs,
        label_smoothing=config.label_smoothing,
        patience=config.patience,
        seed=config.seed,
        autocast=config.autocast,
    )


def ensure_probe(plan: FinetunePlan) -> HeadCard:
    """The probe's card: the heads flow's logreg on the same feature set, task and split,
    fitted now if the store does not hold it yet."""
    store, options = plan.config.store, plan.config.storage_options
    card = read_head_card(store, plan.probe_head_id, options)
    if card is None:
        train_head(plan.probe_plan, HeadRun(PROBE_HEAD))
        card = read_head_card(store, plan.probe_head_id, options)
    assert card is not None, "a head just saved has its card"
    return card


def build_model(plan: FinetunePlan, lp_ft_head: bool = True) -> FinetuneModel:
    """The backbone with a head for the task and the freeze policy applied; with LP-FT (and
    ``lp_ft_head``) the head starts as the probe, its standardization folded into it."""
    config = plan.config
    model = build_finetune_model(
        plan.backbone,
        len(plan.classes),
        config.policy,
        plan.preprocessing.image_size,
        seed=config.seed,
        bn=config.bn,
    )
    if config.lp_ft and lp_ft_head:
        probe = lp_ft_probe(plan)
        tensors = probe.named_steps["head"].head_tensors()
        scaler = probe.named_steps["scale"]
        weight, bias = probe_head(
            tensors["coef"].numpy(), tensors["intercept"].numpy(), scaler.mean_, scaler.scale_
        )
        init_head(model, weight, bias)
    return model


def lp_ft_probe(plan: FinetunePlan) -> Pipeline:
    """LP-FT's starting head: the probe with the C the heads flow chose on validation,
    fitted on the training rows only. (The heads flow's saved probe was refit on train +
    validation; starting from it would let fine-tuning's early stopping, which judges on
    validation, favour the epochs closest to a head that has seen those rows.)"""
    card = ensure_probe(plan)
    if tuple(card.classes) != plan.classes:
        raise TransferPipeError(f"probe {plan.probe_head_id} has other classes than the task")
    options = protocol_options(plan.probe_plan.config)
    return fit_on_train(PROBE_HEAD, plan.probe_plan.data, card.chosen, options)


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
    # Neither says what is computed, only how fast and for how long: not in train_options.
    options = replace(
        train_options(config),
        time_budget_s=config.time_budget_s,
        loader_workers=loader_workers(config.loader_workers),
    )
    checkpoints = _checkpoints(config, plan.run_id)
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
    its card and reports; returns the result."""
    done = read_card(plan.config.store, plan.run_id, plan.config.storage_options)
    if done is not None:
        return _reused(plan, done)
    from transfer_pipe.cluster import in_dask_worker

    if in_dask_worker():  # the driver holds the run's claim
        return _train_and_save(plan, probe_card, on_epoch)
    claim = _claim_run(plan)
    if claim is None:  # another run trained it while this one waited
        done = read_card(plan.config.store, plan.run_id, plan.config.storage_options)
        assert done is not None
        return _reused(plan, done)
    try:
        return _train_and_save(plan, probe_card, on_epoch)
    finally:
        claim.release()


def _reused(plan: FinetunePlan, done: FinetuneCard) -> FinetuneResult:
    # A run with the other init may have finished since this one: show it too.
    compared = done.result.compared or compared_run(plan)
    url = run_url(plan.config.store, plan.run_id)
    return replace(done.result, url=url, reused=True, compared=compared)


def _claim_run(plan: FinetunePlan) -> Claim | None:
    """The claim to train run ``plan.run_id`` (``store.claims``): two runs at once train it
    once (the later one reuses its card); None when the other run finished it meanwhile."""
    config = plan.config

    def finished() -> bool:
        return read_card(config.store, plan.run_id, config.storage_options) is not None

    def waiting(holder: Holder) -> None:
        logger.warning(
            "fine-tuning run %s is being trained by another run (%s): waiting for it, to reuse it",
            plan.run_id,
            holder.describe(),
        )

    store = open_store(config.store, config.storage_options)
    return store.claim(f"finetune-{plan.run_id}", done=finished, waiting=every(30, waiting))


def _train_and_save(
    plan: FinetunePlan, probe_card: HeadCard, on_epoch: EpochCallback | None
) -> FinetuneResult:
    """Train (or resume from the store's checkpoints), evaluate on test, save the model
    with its card and reports; here, or on the Dask cluster when one is given."""
    from transfer_pipe.cluster import in_dask_worker

    address = dask_address_of(plan.config)
    if address is not None and not in_dask_worker():
        return _finetune_on_cluster(address, plan, probe_card, on_epoch)
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


def _finetune_on_cluster(
    address: str, plan: FinetunePlan, probe_card: HeadCard, on_epoch: EpochCallback | None
) -> FinetuneResult:
    """``run_finetune`` as one task on a worker of the Dask cluster at ``address`` (a GPU
    worker when the run asks for CUDA). The plan travels without the probe's feature rows
    (the worker reads what it needs from the store); checkpoints go to the store, so a
    rerun resumes on any worker. ``on_epoch`` sees each epoch here as the worker ends it
    (sent as a worker event), and any it missed from the result's history at the end."""
    from transfer_pipe.cluster import run_on_cluster, send_to_driver

    without_rows = replace(plan, probe_plan=replace(plan.probe_plan))
    key, device = f"finetune-{plan.run_id}", plan.config.device
    if on_epoch is None:
        return run_on_cluster(address, device, key, run_finetune, without_rows, probe_card)
    seen = [0]  # the last epoch passed on

    def forward(row: dict[str, Any]) -> None:
        seen[0] = max(seen[0], int(row["epoch"]))
        on_epoch(row)

    args = (without_rows, probe_card, send_to_driver)
    result = run_on_cluster(address, device, key, run_finetune, *args, on_event=forward)
    for row in result.history:
        if row["epoch"] > seen[0]:  # a reused run sends none; a lost event is not lost
            on_epoch(row)
    return result


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
        metrics=probe_card.metrics,
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


def probe_val_accuracy(card: HeadCard) -> float | None:
    """The probe's validation accuracy: its chosen C fitted on the training rows, scored on
    the validation rows (the heads flow's choice; ``None`` if the card does not hold it)."""
    for point in card.validation_curve:
        # The point's parameters are the chosen ones; its other entries are scores
        # (val_accuracy, val_loss, ...).
        chosen = all(k in point and point[k] == v for k, v in card.chosen.items())
        if chosen and "val_accuracy" in point:
            return float(point["val_accuracy"])
    return None


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
    sizes = {name: len(s) for name, s in plan.splits.items()}
    return FinetuneCard(
        run_id=plan.run_id,
        feature_set=plan.feature_set,
        store=config.store,
        source=spec.source,
        backbone=plan.backbone.id,
        weights_digest=spec.weights_digest,
        preprocessing=plan.preprocessing.to_dict(),
        task=task_ref(data),
        classes=list(plan.classes),
        splits=SplitSizes(**sizes, origin=data.split_origin, dropped=data.dropped),
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


def finalize_finetune(
    plan: FinetunePlan, result: FinetuneResult, embedded: int = 0
) -> FinetuneSummary:
    """The run's summary: test metrics next to the probe's (and the other init's run), the
    verdict against the probe on validation, and where the model lives."""
    metrics, probe = result.metrics, result.probe.metrics
    compared = result.compared
    message = summary_message(result)
    if result.below_probe:
        logger.warning("%s: %s", plan.run_id, result.verdict)
    return FinetuneSummary(
        run_id=plan.run_id,
        feature_set=plan.feature_set,
        store=plan.config.store,
        task=result.task,
        classes=list(plan.classes),
        splits={name: len(s) for name, s in plan.splits.items()},
        policy=result.policy,
        lp_ft=result.lp_ft,
        epochs=result.epochs,
        best_epoch=result.best_epoch,
        stopped=result.stopped,
        image_size=result.image_size,
        device=result.device,
        accuracy=metrics.accuracy,
        macro_f1=metrics.macro_f1,
        balanced_accuracy=metrics.balanced_accuracy,
        accuracy_ci95=list(metrics.accuracy_ci95),
        probe_head_id=result.probe.head_id,
        probe_accuracy=probe.accuracy,
        probe_macro_f1=probe.macro_f1,
        gain=metrics.accuracy - probe.accuracy,
        skipped_images=len(result.skipped_images),
        train_seconds=result.seconds["train"],
        checkpoint=result.checkpoint,
        url=result.url,
        reused=result.reused,
        embedded=embedded,
        table=comparison_rows(result),
        init=result.init,
        val_accuracy=result.val_accuracy,
        probe_val_accuracy=result.probe.val_accuracy,
        below_probe=result.below_probe,
        recommended_head_id=result.probe.head_id if result.below_probe else None,
        compared_run_id=compared.run_id if compared else None,
        compared_accuracy=compared.metrics.accuracy if compared else None,
        message=message,
    )


def summary_message(result: FinetuneResult) -> str:
    """One line: what was trained, test accuracy beside the probe's (and the other init's
    run), and, when it ends below the probe on validation, that plainly."""
    what = "trained from scratch" if result.init == "random" else "fine-tuned"
    lp_ft = ", LP-FT" if result.lp_ft else ""
    message = (
        f"{what} {result.run_id} ({result.policy}{lp_ft}): test accuracy "
        f"{result.metrics.accuracy:.4f} vs probe {result.probe.metrics.accuracy:.4f}"
    )
    if result.compared is not None:
        message += (
            f" and {result.compared.head} {result.compared.metrics.accuracy:.4f} "
            f"({result.compared.run_id})"
        )
    if result.verdict:
        message += f"; {result.verdict}"
    return message


def check_publishable(plan: FinetunePlan) -> None:
    """Refuse to publish a finished run that ended below the probe on validation, unless
    ``force``: the probe is the better model. The run itself stays saved."""
    card = read_card(plan.config.store, plan.run_id, plan.config.storage_options)
    if card is None:
        raise TransferPipeError(
            f"fine-tuning run {plan.run_id} has not finished: nothing to publish"
        )
    if card.result.below_probe and not plan.config.force:
        raise TransferPipeError(
            f"not publishing {plan.run_id}: {card.result.verdict}. The run stays saved in "
            f"{run_url(plan.config.store, plan.run_id)}; --force publishes it anyway."
        )


def publish_config(plan: FinetunePlan) -> EmbedConfig:
    """Register the fine-tuned backbone as ``finetuned/<run_id>`` in the run's store (its
    record and safetensors weights in the run's folder, so every worker that opens the
    store resolves it) and return the embed run that re-embeds the dataset with it: a new
    feature-set key, since the weights digest differs. Refused, before anything is written,
    for a run below the probe on validation unless ``force`` (see ``check_publishable``)."""
    check_publishable(plan)
    config = plan.config
    checkpoints = _checkpoints(config, plan.run_id)
    best = checkpoints.load(BEST)
    if best is None:
        raise TransferPipeError(
            f"fine-tuning run {plan.run_id} has no best checkpoint at "
            f"{checkpoints.file_url(BEST)}: nothing to publish; run it again to train it."
        )
    model = build_model(plan, lp_ft_head=False)
    load_model_weights(model, best, checkpoints)
    backbone = publish_backbone(
        config.store,
        plan.run_id,
        plan.backbone.id,
        export_backbone(plan.backbone, model),
        plan.preprocessing,
        {"run": plan.run_id, "feature_set": plan.feature_set},
        storage_options=_storage_options(config),
    )
    base = plan.config.embed
    if base is None:
        spec = plan.feature_set_spec
        base = EmbedConfig(
            source=source_from_description(spec.source), store=config.store,
            storage_options=config.storage_options, limit=spec.rows, layers=spec.layers,
            dask_address=config.dask_address,
        )  # fmt: skip
    # The published entry carries the fine-tuning preprocessing: image_size None uses it.
    return replace(base, backbone=backbone, weights_file=None, image_size=None)


def publish(plan: FinetunePlan) -> EmbedSummary:
    """Re-embed the dataset with the fine-tuned backbone; returns the embed summary."""
    return embed(publish_config(plan))


def finetune(config: FinetuneConfig) -> FinetuneSummary:
    """The whole fine-tuning pipeline without an orchestrator (notebooks, tests)."""
    feature_set, embedded = embed_first(config, embed)
    plan = prepare_finetune(config, feature_set)
    probe = ensure_probe(plan)
    result = run_finetune(plan, probe)
    summary = finalize_finetune(plan, result, embedded)
    if config.publish:
        summary = summary.published(publish(plan).feature_set)
    return summary


__all__: Sequence[str] = (
    "FinetunePlan",
    "check_publishable",
    "compared_run",
    "ensure_probe",
    "finalize_finetune",
    "finetune",
    "prepare_finetune",
    "publish",
    "run_finetune",
)
