"""Content-addressed keys: an embedding is a pure function of what goes into these hashes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from transfer_pipe.preprocessing import Preprocessing

# Bump when the stored layout or the way values are computed changes: old keys then miss.
FORMAT_VERSION = 2  # 2: sharded and checksummed; layout 3 (versions) keeps its keys
KEY_LENGTH = 16  # hex characters shown to users; the full digests live in the provenance


def content_id(identity: Any, length: int | None = None, *, compact: bool = False) -> str:
    """The sha256 hex digest of ``identity`` (anything JSON can write) in canonical JSON:
    keys sorted, and ``compact`` separators (``","``, ``":"``) where the default ones
    (``", "``, ``": "``) would do; its first ``length`` characters (None: all 64).

    The same identity always gives the same id, so a rerun finds what an earlier run
    stored under it. A value JSON cannot write is hashed by its ``str`` (a value JSON can
    write never reaches that fallback, so ids of plain identities do not depend on it).
    Every id in the store (feature-set keys, head and run ids, cached records) comes from
    here: changing the spelling of any of these choices would orphan what is stored.
    """
    separators = (",", ":") if compact else None
    canonical = json.dumps(identity, sort_keys=True, separators=separators, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def embedding_key(
    backbone: str,
    weights_digest: str,
    preprocessing: Preprocessing,
    dtype: str,
    autocast: str = "none",
) -> str:
    """What makes one image's embedding reusable: same model, weights, preprocessing,
    dtype, and the forward pass's precision (``autocast``: a bfloat16 forward pass moves
    features by a few percent, so its rows are never taken for float32 ones).

    Layers are left out on purpose: a feature set holding a superset of the wanted layers
    can donate rows to any other with the same embedding key. A float32 forward pass adds
    nothing to the hashed fields, so keys written before ``autocast`` counted stay valid.
    """
    fields = {
        "format": FORMAT_VERSION,
        "backbone": backbone,
        "weights": weights_digest,
        "preprocessing": preprocessing.to_dict(),
        "dtype": dtype,
    }
    if autocast != "none":
        fields["autocast"] = autocast
    return content_id(fields, compact=True)


def feature_set_key(embedding: str, layers: list[str], data_digest: str) -> str:
    """The key of a whole feature set: embedding spec + layers + every row of the data."""
    identity = {"embedding": embedding, "layers": layers, "data": data_digest}
    return content_id(identity, KEY_LENGTH, compact=True)


def lineage_id(source: str, embedding: str, layers: list[str]) -> str:
    """The lineage of a source's embeddings under one model configuration: every version
    of that source with that embedding key and those layers shares its rows."""
    identity = {"source": source, "embedding": embedding, "layers": layers}
    return content_id(identity, KEY_LENGTH, compact=True)
