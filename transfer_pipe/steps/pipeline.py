"""The pipeline a schedule runs over a growing source: embed (only what the store lacks),
fit the heads the store lacks, optionally fine-tune; and the one line that says what
happened.

    summary = pipeline(config)      # plain Python; ``flows.pipeline`` runs the same as subflows
"""

from __future__ import annotations

from transfer_pipe.config import PipelineConfig
from transfer_pipe.steps.embed import embed
from transfer_pipe.steps.finetune import finetune
from transfer_pipe.steps.results import PipelineSummary
from transfer_pipe.steps.train import train


def pipeline(config: PipelineConfig) -> PipelineSummary:
    """Embed, fit heads, optionally fine-tune: each step a no-op where the store is current."""
    assert config.embed is not None  # PipelineConfig's validation requires a source
    embedded = embed(config.embed)
    trained = train(config.train_config(embedded.feature_set))
    tuned = finetune(config.finetune_config(embedded.feature_set)) if config.finetune else None
    return PipelineSummary.of(embedded, trained, tuned)
