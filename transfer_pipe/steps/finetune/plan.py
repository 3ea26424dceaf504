"""Fine-tuning's plan: the task's rows and splits on a feature set (as the heads flow reads
them), the backbone with the very weights it was embedded with, and the run id; all of
it checked before anything trains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from transfer_pipe.backbones import (
    BackboneSpec,
    Preprocessing,
    StoreLocation,
    get_backbone,
    random_variant,
)
from transfer_pipe.backbones.registry import Stores
from transfer_pipe.config import FinetuneConfig
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.finetune.checkpoint import CheckpointFolder
from transfer_pipe.finetune.loop import TrainOptions
from transfer_pipe.finetune.persist import checkpoint_folder
from transfer_pipe.heads.tasks import SplitRows
from transfer_pipe.schema import SAMPLE_ID, TEST, TRAIN, URI, VAL
from transfer_pipe.steps.train import HeadRun, TrainPlan, head_id, prepare_training
from transfer_pipe.store import FeatureSetSpec, open_store
from transfer_pipe.store.keys import content_id
from transfer_pipe.store.options import store_options

PROBE_HEAD = "logreg"


PROBE_LAYER = "penultimate"


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
    classes: tuple[str, ...]
    splits: dict[str, SplitImages]
    probe_plan: TrainPlan  # the heads flow's plan for the probe on the same task and split
    probe_head_id: str

    @property
    def preprocessing(self) -> Preprocessing:
        """As the feature set was embedded: the probe and the fine-tuned network see the
        same pixels."""
        return self.feature_set_spec.preprocessing

    def without_rows(self) -> FinetunePlan:
        """The plan without the probe's feature rows it may have read (what a Dask task
        carries: the worker reads what it needs from the store)."""
        return replace(self, probe_plan=self.probe_plan.without_rows())


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
    stores = (StoreLocation.of(config.store, storage_options_of(config)),)
    backbone = _backbone(spec, config, stores)
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
        classes=data.classes,
        splits=splits,
        probe_plan=probe_plan,
        probe_head_id=head_id(probe_plan, HeadRun(PROBE_HEAD)),
    )
    return replace(plan, run_id=run_id(plan))


def storage_options_of(config: FinetuneConfig) -> dict[str, Any]:
    """The fsspec options of the run's store: its protocol's defaults under the config's."""
    return store_options(config.store, config.storage_options)


def checkpoints_of(config: FinetuneConfig, run: str) -> CheckpointFolder:
    """The run's checkpoints, in its store: a resume on any machine finds them."""
    return checkpoint_folder(config.store, run, storage_options_of(config))


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
        "options": TrainOptions.from_config(config).computed(),
        "augment": config.augment,
        "bn": config.bn,
    }
    if config.init != "pretrained":  # only then: pretrained runs keep the ids they had
        identity["init"] = config.init
    digest = content_id(identity, 10)
    task = re.sub(r"[^a-z0-9]+", "-", plan.probe_plan.data.task.name.lower()).strip("-")
    lp_ft = "-lpft" if config.lp_ft else ""
    init = "-scratch" if config.init == "random" else ""
    return f"{task or 'task'}{init}-{config.policy}{lp_ft}-{digest}"


def run_head_name(config: FinetuneConfig) -> str:
    """How tables name the run's model, e.g. ``finetune top-2 lp-ft`` or ``scratch full``."""
    if config.init == "random":
        return f"scratch {config.policy}"
    return f"finetune {config.policy}" + (" lp-ft" if config.lp_ft else "")
