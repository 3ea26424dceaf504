"""Every check that can run before a flow starts, in one place: the CLI calls it before a
Prefect server starts (seconds, not the 20-40 s of a server start), and a flow can call it
as its first step, so a bad value fails the same way from either door."""

from __future__ import annotations

from transfer_pipe.config import EmbedConfig, TaskOptions, TrainConfig
from transfer_pipe.heads.tasks import parse_task
from transfer_pipe.steps.embed import check_embed_inputs
from transfer_pipe.steps.train import check_features


def check_inputs(config: EmbedConfig | TaskOptions, *, embed_inputs: bool = True) -> None:
    """Raise ``TransferPipeError`` naming what to fix: an unknown head or task, an unknown
    backbone, layer or weights file, a feature set that is not complete or lacks the
    layer asked for, a missing source, a source whose content cannot be
    read as a dataset (an empty folder, a manifest without its columns or naming missing
    files), a store that cannot be written. Nothing is written.

    ``embed_inputs=False`` leaves the source and backbone to the embed run, which checks
    them first thing: a flow checks the rest before it embeds, and lists the source once.
    """
    if isinstance(config, EmbedConfig):
        if embed_inputs:
            check_embed_inputs(config)
        return
    parse_task(config.task)
    if config.embed is not None:
        if embed_inputs:
            check_embed_inputs(config.embed)
    elif config.feature_set is not None:
        layer = config.layer if isinstance(config, TrainConfig) else None
        check_features(config.store, config.feature_set, layer, config.storage_options)
