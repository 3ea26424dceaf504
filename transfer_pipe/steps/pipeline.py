"""The pipeline a schedule runs over a growing source: embed (only what the store lacks),
fit the heads the store lacks, optionally fine-tune; and the one line that says what
happened.

    summary = pipeline(config)      # plain Python; ``flows.pipeline`` runs the same as subflows
"""

from __future__ import annotations

from transfer_pipe.config import PipelineConfig
from transfer_pipe.steps.embed import embed
from transfer_pipe.steps.finetune import finetune
from transfer_pipe.steps.results import (
    EmbedSummary,
    FinetuneSummary,
    PipelineSummary,
    TrainSummary,
)
from transfer_pipe.steps.train import train


def pipeline(config: PipelineConfig) -> PipelineSummary:
    """Embed, fit heads, optionally fine-tune: each step a no-op where the store is current."""
    assert config.embed is not None  # PipelineConfig's validation requires a source
    embedded = embed(config.embed)
    trained = train(config.train_config(embedded.feature_set))
    tuned = finetune(config.finetune_config(embedded.feature_set)) if config.finetune else None
    return summarize(embedded, trained, tuned)


def summarize(
    embedded: EmbedSummary, trained: TrainSummary, tuned: FinetuneSummary | None = None
) -> PipelineSummary:
    """The pipeline's summary and its message, e.g. ``no new images: 0 embedded, 10000
    reused, heads up to date``."""
    if embedded.embedded == 0 and trained.heads_fitted == 0:
        message = f"no new images: 0 embedded, {embedded.reused} reused, heads up to date"
    else:
        message = (
            f"{embedded.embedded} images embedded, {embedded.reused} reused; "
            f"{trained.heads_fitted} heads fitted, {trained.heads_reused} up to date"
        )
    if embedded.failed:
        message += f"; {embedded.failed} images failed (see the feature set's failures table)"
    if tuned is not None:
        message += (
            f"; fine-tuned {tuned.run_id}: accuracy {tuned.accuracy:.4f} vs probe "
            f"{tuned.probe_accuracy:.4f}"
        )
    return PipelineSummary(message=message, embed=embedded, train=trained, finetune=tuned)
