"""One function per pipeline step: what the flows call, each usable without Prefect.

``embed``: images -> feature store; ``train``: feature store -> fitted heads and reports;
``predict``: fitted head + new images -> predictions.
"""

from transfer_pipe.steps.embed import (
    EmbedPlan,
    cached_rows,
    check_embed_inputs,
    compute_shards,
    embed,
    finalize_embedding,
    library_versions,
    prepare_embedding,
    release_claim,
    reusable_rows,
)

__all__ = [
    "EmbedPlan",
    "cached_rows",
    "check_embed_inputs",
    "compute_shards",
    "embed",
    "finalize_embedding",
    "library_versions",
    "prepare_embedding",
    "release_claim",
    "reusable_rows",
]
