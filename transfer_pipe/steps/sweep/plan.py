"""A sweep's plan: its constants (the probe, the layers embedded, the k-NN screen's rows,
the screens' cache folder), the two embed runs (pretrained weights and the random
baseline, every stage plus the penultimate layer, on the same rows) checked before
anything is embedded, and one linear probe's run (which weights, which layer, which share
of labels) with its heads config.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from transfer_pipe.backbones import PENULTIMATE, STAGES, random_variant
from transfer_pipe.config import EmbedConfig, SweepConfig, TrainConfig
from transfer_pipe.data.sources import source_from_description
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.steps.embed import run_backbone
from transfer_pipe.store import open_store

Init = Literal["pretrained", "random"]
INITS: tuple[Init, ...] = ("pretrained", "random")
PROBE = "logreg"  # the heads flow's linear probe
SWEEP_LAYERS = (STAGES, PENULTIMATE)
# Training rows the k-NN screen votes with (a fixed draw): it ranks layers, and the
# ranking holds with 10,000 rows while the vote over 54,000 costs five times more.
KNN_ROWS = 10_000
SCREENS_DIR = "screens"  # <store>/cache/screens/: a layer's screens, computed once


@dataclass(frozen=True)
class SweepPlan:
    """The two embed runs of a sweep: the pretrained backbone and its random baseline,
    every stage plus the penultimate layer, on the same rows."""

    config: SweepConfig
    embeds: dict[Init, EmbedConfig]
    layers: tuple[str, ...]  # shallow to deep


@dataclass(frozen=True)
class ProbeRun:
    """One linear probe of the sweep: which weights, which layer, which share of labels."""

    init: Init
    layer: str
    depth: int
    config: TrainConfig
    fraction: float = 1.0


def prepare_sweep(config: SweepConfig) -> SweepPlan:
    """The embed runs of the sweep, checked before anything is embedded: the backbone must
    have stages (a sweep probes each), and a feature-set key names its source again."""
    base = config.embed if config.embed is not None else _embed_of(config)
    backbone = run_backbone(base)
    try:
        stages = backbone.stage_layers()
    except TransferPipeError as err:
        raise TransferPipeError(
            f"backbone {backbone.id} has no stages to sweep ({err}); pick a backbone whose "
            "stages are known (`transfer-pipe backbones` lists them)."
        ) from err
    if not stages:
        raise TransferPipeError(f"backbone {backbone.id} has no stages to sweep.")
    pretrained = replace(base, layers=SWEEP_LAYERS)
    # The random baseline has no weights file of its own: its weights are seeded. Its rows
    # are a subset of the pretrained run's (``limit`` keeps a smaller limit's rows inside
    # a larger one's).
    baseline = replace(
        pretrained,
        backbone=random_variant(backbone.id),
        weights_file=None,
        limit=min(pretrained.limit or config.random_limit, config.random_limit),
    )
    return SweepPlan(config, {"pretrained": pretrained, "random": baseline}, (*stages, PENULTIMATE))


def _embed_of(config: SweepConfig) -> EmbedConfig:
    """How the given feature set was embedded, to embed its source again at every stage."""
    assert config.feature_set is not None
    store = open_store(config.store, config.storage_options)
    if store.status(config.feature_set) != "complete":
        raise TransferPipeError(
            f"feature set {config.feature_set} is not complete in {config.store}; "
            "run `transfer-pipe embed` again to finish it, or pass its source."
        )
    spec = store.spec(config.feature_set)
    return EmbedConfig(
        source=source_from_description(spec.source),
        store=config.store,
        backbone=spec.backbone,
        weights_file=spec.weights_file,
        image_size=spec.preprocessing.image_size,
        dtype=spec.dtype,  # type: ignore[arg-type]  # a spec's dtype is one of Dtype
        limit=spec.rows,
        device=config.device,
        storage_options=config.storage_options,
        dask_address=config.dask_address,
    )


def probe_config(plan: SweepPlan, key: str, layer: str, **extra: object) -> TrainConfig:
    """The heads run of one probe: the probe head on ``layer`` of feature set ``key``,
    with the sweep's probe options (and ``extra``, e.g. a share of the labels)."""
    config = plan.config
    return config.heads_config(
        key,
        heads=(PROBE,),
        layer=layer,
        c_values=config.c_values,
        max_iter=config.max_iter,
        c_patience=config.c_patience,
        bootstrap=config.bootstrap,
        **extra,
    )
