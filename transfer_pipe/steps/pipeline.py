"""The pipeline a schedule runs over a growing source: embed (only what the store lacks),
fit the heads the store lacks, optionally fine-tune; and the one line that says what
happened.

    summary = pipeline(config)      # plain Python; ``flows.pipeline`` runs the same as subflows

A scheduled run over unchanged data has nothing to do: ``up_to_date`` says so from the
store alone (no forward pass, no fit, no model code imported), before any subflow starts.
"""

from __future__ import annotations

from transfer_pipe.config import GcConfig, PipelineConfig
from transfer_pipe.heads.card import head_url, read_card
from transfer_pipe.steps.embed import complete_plan, embed, finalize_embedding
from transfer_pipe.steps.gc import collect_garbage
from transfer_pipe.steps.results import PipelineSummary
from transfer_pipe.steps.train import finalize_training, head_id, prepare_training, train
from transfer_pipe.store import open_store
from transfer_pipe.store.retention import GcReport


def pipeline(config: PipelineConfig) -> PipelineSummary:
    """Embed, fit heads, optionally fine-tune: each step a no-op where the store is current."""
    assert config.embed is not None  # PipelineConfig's validation requires a source
    embedded = embed(config.embed)
    trained = train(config.train_config(embedded.feature_set))
    tuned = None
    if config.finetune:
        from transfer_pipe.steps.finetune import finetune  # torch: only when fine-tuning

        tuned = finetune(config.finetune_config(embedded.feature_set))
    return PipelineSummary.of(embedded, trained, tuned, retain(config, embedded.feature_set))


def retain(config: PipelineConfig, feature_set: str) -> GcReport | None:
    """The run's retention: of the lineage of ``feature_set``, keep the newest
    ``keep_last`` versions and every referenced one, remove the rest (None: keeps all)."""
    if not config.keep_last:
        return None
    lineage = open_store(config.store, config.storage_options).spec(feature_set).lineage
    gc = GcConfig(
        store=config.store, storage_options=config.storage_options, keep_last=config.keep_last
    )
    return collect_garbage(gc, lineages=(lineage,))


def up_to_date(config: PipelineConfig) -> PipelineSummary | None:
    """The summary of a run that would change nothing (the store holds the feature set
    complete and every head the run asks for, and no fine-tuning is asked), found without
    writing or computing anything; None when there is work to do."""
    assert config.embed is not None  # PipelineConfig's validation requires a source
    if config.finetune or config.refit:
        return None
    plan = complete_plan(config.embed)
    if plan is None:
        return None
    heads = prepare_training(config.train_config(plan.spec.key), plan.spec.key)
    results = []
    for run in heads.runs:
        identity = head_id(heads, run)
        card = read_card(config.store, identity, config.storage_options)
        if card is None:
            return None
        results.append(card.reused(head_url(config.store, identity)))
    return PipelineSummary.of(finalize_embedding(plan, []), finalize_training(heads, results))
