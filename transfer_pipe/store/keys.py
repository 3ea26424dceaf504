"""Content-addressed keys: an embedding is a pure function of what goes into these hashes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Bump when the stored layout or the way values are computed changes: old keys then miss.
FORMAT_VERSION = 2  # 2: sharded and checksummed; layout 3 (versions) keeps its keys
KEY_LENGTH = 16  # hex characters shown to users; the full digests live in the provenance


def _digest(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def embedding_key(
    backbone: str,
    weights_digest: str,
    preprocessing: dict[str, Any],
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
        "preprocessing": preprocessing,
        "dtype": dtype,
    }
    if autocast != "none":
        fields["autocast"] = autocast
    return _digest(fields)


def feature_set_key(embedding: str, layers: list[str], data_digest: str) -> str:
    """The key of a whole feature set: embedding spec + layers + every row of the data."""
    return _digest({"embedding": embedding, "layers": layers, "data": data_digest})[:KEY_LENGTH]


def lineage_id(source: str, embedding: str, layers: list[str]) -> str:
    """The lineage of a source's embeddings under one model configuration: every version
    of that source with that embedding key and those layers shares its rows."""
    return _digest({"source": source, "embedding": embedding, "layers": layers})[:KEY_LENGTH]
