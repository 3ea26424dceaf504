"""The embed step: images -> feature store, in phases a flow runs as tasks, each usable
without Prefect.

    plan = prepare_embedding(config)           # checks, manifest, key, claim, shards to write
    results = compute_shards(plan)             # Dask: only the shards not yet written
    summary = finalize_embedding(plan, results)

- ``identity``: the feature-set key and lineage of a run, known without the model;
- ``checks``: what is checked before anything is written, and the manifest;
- ``plan``: the plan; ``reuse`` and ``shards``: what each shard copies and embeds;
- ``claims``: the run's claim on its lineage; ``compute``: the shards on Dask;
- ``finalize``: the feature set completed with its provenance, the run summed up.

Every step is idempotent: rerunning after a crash, or on unchanged data, redoes nothing
that the store already holds. A run whose feature set the store holds complete answers
from the registry, the manifest and the store alone: the model is not built, and torch,
the shard code and Dask are not imported (seconds that a nightly rerun would pay for
nothing). They are imported where the first shard is planned.
"""

from __future__ import annotations

from collections.abc import Sequence

from transfer_pipe.config import EmbedConfig
from transfer_pipe.run_context import open_context
from transfer_pipe.steps.embed.checks import check_embed_inputs, source_hash_cache
from transfer_pipe.steps.embed.claims import release_claim
from transfer_pipe.steps.embed.compute import ProgressCallback, compute_shards, steady_rate
from transfer_pipe.steps.embed.finalize import embed_message, finalize_embedding, library_versions
from transfer_pipe.steps.embed.identity import Identity, identity_of, run_backbone
from transfer_pipe.steps.embed.plan import (
    EmbedPlan,
    complete_plan,
    default_shard_size,
    new_spec,
    prepare_embedding,
)
from transfer_pipe.steps.embed.reuse import Donors, cached_rows, reusable_rows
from transfer_pipe.steps.results import EmbedSummary


def embed(config: EmbedConfig, on_progress: Sequence[ProgressCallback] = ()) -> EmbedSummary:
    """The whole embed pipeline without an orchestrator (notebooks, tests); returns its
    summary."""
    with open_context() as context:
        plan = prepare_embedding(config, context)
        try:
            return finalize_embedding(plan, compute_shards(plan, on_progress))
        finally:
            release_claim(plan)


__all__ = [
    "Donors",
    "EmbedPlan",
    "Identity",
    "ProgressCallback",
    "cached_rows",
    "check_embed_inputs",
    "complete_plan",
    "compute_shards",
    "default_shard_size",
    "embed",
    "embed_message",
    "finalize_embedding",
    "identity_of",
    "library_versions",
    "new_spec",
    "prepare_embedding",
    "release_claim",
    "reusable_rows",
    "run_backbone",
    "source_hash_cache",
    "steady_rate",
]
