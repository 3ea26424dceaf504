"""Publish a finished run: its weights registered as a backbone in the run's store, and
the dataset embedded again with them (a new feature set). Refused for a run below the
probe on validation unless ``force``.
"""

from __future__ import annotations

from dataclasses import replace

from transfer_pipe.backbones import publish_backbone
from transfer_pipe.config import EmbedConfig
from transfer_pipe.data.sources import source_from_description
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.finetune.loop import BEST, load_model_weights
from transfer_pipe.finetune.persist import export_backbone, read_card, run_url
from transfer_pipe.steps.embed import embed
from transfer_pipe.steps.finetune.plan import FinetunePlan, checkpoints_of, storage_options_of
from transfer_pipe.steps.finetune.probe import build_model
from transfer_pipe.steps.results import EmbedSummary


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
    checkpoints = checkpoints_of(config, plan.run_id)
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
        storage_options_of(config),
        run=plan.run_id,
        feature_set=plan.feature_set,
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
