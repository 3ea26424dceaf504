"""Train and fine-tune runs read a feature set given by key, or embed their source first:
one rule, shared by the flows (which pass the embed subflow) and the plain steps."""

from __future__ import annotations

from pathlib import Path

from transfer_pipe.config import EmbedConfig, FinetuneConfig, TrainConfig
from transfer_pipe.steps.results import EmbedSummary
from transfer_pipe.steps.target import embed_first


def _summary(config: EmbedConfig) -> EmbedSummary:
    return EmbedSummary(
        feature_set="fedcba9876543210", store=config.store, source=config.source,
        backbone=config.backbone, layers=["penultimate"], rows=10, failed=1, embedded=6,
        reused=3, shards=1, shards_computed=1, shards_already_done=0, status_before="missing",
        steady_images_per_s=None, status="complete",
    )  # fmt: skip


def test_a_given_key_is_read_as_is_and_nothing_is_embedded(tmp_path: Path) -> None:
    calls: list[EmbedConfig] = []

    def embed(config: EmbedConfig) -> EmbedSummary:
        calls.append(config)
        return _summary(config)

    config = TrainConfig(feature_set="0123456789abcdef", store=str(tmp_path))
    assert embed_first(config, embed) == ("0123456789abcdef", 0)
    assert calls == []


def test_a_source_is_embedded_first_and_its_count_reported(tmp_path: Path) -> None:
    calls: list[EmbedConfig] = []

    def embed(config: EmbedConfig) -> EmbedSummary:
        calls.append(config)
        return _summary(config)

    source = EmbedConfig(source=str(tmp_path / "images"), store=str(tmp_path / "store"))
    for config in (
        TrainConfig(embed=source, store=source.store),
        FinetuneConfig(embed=source, store=source.store),
    ):
        # Mutation: returning 0 images embedded (or the config's key) makes this fail.
        assert embed_first(config, embed) == ("fedcba9876543210", 6)
    assert calls == [source, source]
