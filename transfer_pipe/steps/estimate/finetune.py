"""The cost of a fine-tuning run: rows per split, the embed run that comes first (given a
source) and the expected time per epoch, recorded by earlier runs or timed on a few steps."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from transfer_pipe.backbones import BackboneSpec, StoreLocation, get_backbone
from transfer_pipe.config import FinetuneConfig
from transfer_pipe.data.manifest import Manifest
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.schema import FAILURE, LABEL, SAMPLE_ID, SPLIT, URI
from transfer_pipe.steps.embed import run_backbone
from transfer_pipe.steps.estimate.embed import device_type, estimate_embed_with_manifest
from transfer_pipe.steps.estimate.records import EmbedEstimate, FinetuneEstimate
from transfer_pipe.steps.estimate.throughput import CALIBRATION_BATCH, CALIBRATION_BATCHES
from transfer_pipe.store import FeatureStore, open_store
from transfer_pipe.store.cards import SplitSizes

if TYPE_CHECKING:
    import pandas as pd

    from transfer_pipe.heads.tasks import Task


def estimate_finetune(config: FinetuneConfig) -> FinetuneEstimate:
    """Rows per split, the feature set to embed first (given a source) and the expected
    time per epoch of the fine-tuning run ``config`` describes; writes nothing. Seconds
    per epoch come from earlier fine-tuning runs in the store with the same backbone,
    image size, device and policy, else from a few timed forward+backward steps."""
    from transfer_pipe.heads.tasks import parse_task
    from transfer_pipe.steps.train import check_features

    task = parse_task(config.task)
    embedded: EmbedEstimate | None = None
    store = open_store(config.store, config.storage_options)
    if config.embed is not None:
        embedded, manifest = estimate_embed_with_manifest(config.embed)
        backbone = run_backbone(config.embed)
        key, image_size = embedded.feature_set, embedded.image_size
        rows = _rows_to_split(store, key, manifest)
    else:
        assert config.feature_set is not None
        spec, _ = check_features(config.store, config.feature_set, None, config.storage_options)
        stores = (StoreLocation.of(config.store, config.storage_options),)
        backbone = get_backbone(spec.backbone, spec.weights_file, stores)
        key, image_size = spec.key, spec.preprocessing.image_size
        rows = _rows_to_split(store, key, None)
    splits = _split_sizes(task, rows, config)
    device = device_type(config.device)
    recorded = _recorded_epoch_cost(
        store, backbone.id, image_size, device, config.policy, config.storage_options
    )
    if recorded is not None:
        per_image, seconds_from = recorded
    else:
        per_image, seconds_from = _calibrate_training(config, backbone, image_size, rows)
    per_epoch = splits.train * per_image[0] + splits.val * per_image[1]
    before = embedded.seconds if embedded is not None else 0.0
    return FinetuneEstimate(
        feature_set=key,
        store=config.store,
        backbone=backbone.id,
        task=config.task,
        policy=config.policy,
        epochs=config.epochs,
        image_size=image_size,
        device=device,
        splits=splits,
        embed=embedded,
        seconds_per_epoch=per_epoch,
        seconds=None if before is None else before + config.epochs * per_epoch,
        seconds_from=seconds_from,
    )


def _rows_to_split(store: FeatureStore, key: str, manifest: Manifest | None) -> pd.DataFrame:
    """sample_id, uri, label and split of the rows the task will see: the good rows of a
    complete feature set, else every row of the source as its check listed it (as if every
    image decodes)."""
    if store.status(key) == "complete":
        table = store.row_table(key, columns=(SAMPLE_ID, URI, LABEL, SPLIT, FAILURE))
        return table[(table[FAILURE] == "") & table["done"]].reset_index(drop=True)
    assert manifest is not None
    return manifest.table


def _split_sizes(task: Task, rows: pd.DataFrame, config: FinetuneConfig) -> SplitSizes:
    """Rows per split as the heads flow would split them (``heads.tasks``' own rule)."""
    from transfer_pipe.heads.tasks import SplitOptions, SplitRows, _split, _task_labels

    ids = rows[SAMPLE_ID].to_numpy().astype(str)
    labels, _ = _task_labels(task, ids, rows[LABEL].to_numpy().astype(str))
    keep = labels != ""
    labelled = SplitRows(np.empty((int(keep.sum()), 0)), labels[keep], ids[keep])
    options = SplitOptions(config.val_fraction, config.test_fraction, config.split_seed)
    train, val, test, origin = _split(labelled, rows[SPLIT].to_numpy()[keep], options)
    dropped = int((~keep).sum())
    return SplitSizes(len(train), len(val), len(test), origin, dropped)


def _recorded_epoch_cost(
    store: FeatureStore,
    backbone: str,
    image_size: int,
    device: str,
    policy: str,
    storage_options: str | None = None,
) -> tuple[tuple[float, float], str] | None:
    """((seconds per training image, per validation image), origin) from the fine-tuning
    runs in the store with the same backbone, image size, device and policy: their epoch
    seconds (training and validation together) spread over their rows."""
    from transfer_pipe.finetune.persist import list_cards

    seconds, images, runs = 0.0, 0, 0
    for card in list_cards(store.url, storage_options):
        result = card.result
        if (
            card.backbone != backbone
            or result.image_size != image_size
            or result.device != device
            or result.policy != policy
            or not result.history
        ):
            continue
        seconds += float(result.history[-1]["seconds"])
        images += len(result.history) * (card.splits.train + card.splits.val)
        runs += 1
    if not runs or not images:
        return None
    per_image = seconds / images
    return (per_image, per_image), f"recorded: {runs} earlier fine-tuning run(s) in the store"


def _calibrate_training(
    config: FinetuneConfig, backbone: BackboneSpec, image_size: int, rows: pd.DataFrame
) -> tuple[tuple[float, float], str]:
    """(seconds per training image, per validation image), timed on the first images:
    forward+backward+step of the policy's model, then a forward pass without gradients
    (one untimed warm-up step first)."""
    import torch

    from transfer_pipe.data.batch import prepare_batch
    from transfer_pipe.data.read import read_image
    from transfer_pipe.finetune.surgery import build_finetune_model

    preprocessing = backbone.preprocessing.replace(image_size=image_size)
    batch = min(config.batch_size, CALIBRATION_BATCH)
    inputs = prepare_batch(rows[URI].tolist()[:batch], read_image, preprocessing)
    if not inputs.ok:
        raise TransferPipeError("none of the first images could be read; fix the source first.")
    device = torch.device(device_type(config.device))
    images = inputs.images.to(device)
    targets = torch.zeros(len(images), dtype=torch.long, device=device)
    model = build_finetune_model(backbone, 2, config.policy, image_size).to(device)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=1e-6)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), targets).backward()
        optimizer.step()

    model.train()
    step()  # warm-up
    started = time.perf_counter()
    for _ in range(CALIBRATION_BATCHES - 1):
        step()
    train_s = (time.perf_counter() - started) / ((CALIBRATION_BATCHES - 1) * len(images))
    model.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        model(images)
    eval_s = (time.perf_counter() - started) / len(images)
    return (
        (train_s, eval_s),
        f"calibrated: {CALIBRATION_BATCHES - 1} training steps on {len(images)} of the first "
        "images (image decoding and augmentation not included)",
    )
