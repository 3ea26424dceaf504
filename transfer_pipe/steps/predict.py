"""Predict: image files in, a fitted head's classes and probabilities out.

New images are embedded with exactly the backbone, weights and preprocessing the head's
feature set used; an image whose bytes are already in the store (same content hash, same
embedding key) reuses its cached embedding instead. A file that cannot be read or decoded
becomes a row with an error, never a crash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import fsspec
import numpy as np
import pandas as pd

from transfer_pipe.backbones import StoreLocation, get_backbone
from transfer_pipe.data.batch import failure_reason
from transfer_pipe.data.decode import DecodeError, decode_image
from transfer_pipe.data.read import read_bytes
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.features.batch import embed_images
from transfer_pipe.features.tasks import EmbedderConfig
from transfer_pipe.heads.persist import load_head
from transfer_pipe.heads.protocol import class_probabilities
from transfer_pipe.heads.tasks import split_layers
from transfer_pipe.steps.embed import cached_rows
from transfer_pipe.steps.results import PredictSummary
from transfer_pipe.store import FeatureStore, StorageOptions, embedding_key, open_store

_FORMATS = (".csv", ".parquet")
_BATCH = 64


def predict(
    store_url: str,
    head_id: str,
    paths: Sequence[str],
    out: str,
    *,
    top_k: int = 5,
    weights_file: str | None = None,
    device: str = "auto",
    storage_options: StorageOptions = None,
) -> PredictSummary:
    """Write one prediction row per path to ``out`` (.csv or .parquet); returns counts."""
    if not out.lower().endswith(_FORMATS):
        raise TransferPipeError(f"--out must end in .csv or .parquet, not {out!r}.")
    model, card = load_head(store_url, head_id, storage_options)
    # The head's store: where a finetuned/<run> backbone is registered.
    stores = (StoreLocation.of(store_url, storage_options),)
    backbone = get_backbone(card.backbone, weights_file, stores)
    if backbone.weights_digest() != card.weights_digest:
        raise TransferPipeError(
            f"head {head_id} was trained on features of {card.backbone} with weights "
            f"{card.weights_digest[:12]}…, not the weights found now; pass --weights-file "
            "with the file its feature set was embedded with."
        )
    layers = split_layers(card.result.layer)
    uris = [_uri(path) for path in paths]
    contents, errors = _read_all(uris)
    hashes = [hashlib.sha256(c).hexdigest() if c is not None else "" for c in contents]
    key = embedding_key(
        backbone.id, card.weights_digest, card.preprocessing, card.dtype, card.autocast
    )
    if key != card.embedding_key:
        raise TransferPipeError(f"head {head_id}: its card's embedding key does not match.")

    features = np.full((len(uris), _layer_width(model)), np.nan, np.float32)
    cached = _fill_from_store(open_store(store_url, storage_options), key, layers, hashes, features)
    embedder = EmbedderConfig(
        backbone.id,
        backbone.weights_file,
        tuple(layers),
        card.preprocessing,
        device,
        card.autocast,
        stores=stores,
    )
    to_embed = [i for i, c in enumerate(contents) if c is not None and i not in cached]
    _embed_new(contents, to_embed, embedder, card.dtype, features, errors)

    good = np.array([not e for e in errors])
    classes = tuple(card.classes)
    proba = np.full((len(uris), len(classes)), np.nan)
    if good.any():
        proba[good] = class_probabilities(model, features[good], classes)
    table = _table(paths, proba, classes, top_k, errors, cached)
    _write(table, out)
    return PredictSummary(
        out=out,
        rows=len(table),
        cached=len(cached),
        embedded=int(good.sum()) - len(cached),
        failed=int((~good).sum()),
    )


def _embed_new(
    contents: list[bytes | None],
    rows: list[int],
    embedder: EmbedderConfig,
    dtype: str,
    features: np.ndarray,
    errors: list[str],
) -> None:
    """Embed the images of ``rows`` into ``features`` (layers side by side); an image that
    does not decode gets its reason in ``errors``."""
    images = [contents[i] or b"" for i in rows]
    # Decoded as the feature set's images were (its decode mode is part of its key).
    decode = functools.partial(decode_image, draft_to=embedder.preprocessing.draft_to)
    result = embed_images(images, decode, embedder, _BATCH, read=bytes).placed(rows)
    for row, reason in result.failures.items():
        errors[row] = reason
    if result.ok:
        values = np.hstack([result.features[name] for name in embedder.layers])
        # Cast like the store does, so a new image scores as its cached copy would.
        features[list(result.ok)] = values.astype(dtype).astype(np.float32)


def _uri(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def _read_all(uris: list[str]) -> tuple[list[bytes | None], list[str]]:
    """Every file's bytes (None where unreadable) and its error ("" where read)."""
    contents: list[bytes | None] = []
    errors: list[str] = []
    for uri in uris:
        try:
            contents.append(read_bytes(uri))
            errors.append("")
        except DecodeError as err:
            contents.append(None)
            errors.append(failure_reason(err))
    return contents, errors


def _layer_width(model: Any) -> int:
    return int(model.named_steps["scale"].n_features_in_)


def _fill_from_store(
    store: FeatureStore, key: str, layers: list[str], hashes: list[str], features: np.ndarray
) -> set[int]:
    """Copy cached embeddings into ``features``; returns the rows that had one."""
    donors = cached_rows(store, key, layers)
    by_set: dict[str, list[tuple[int, int]]] = {}  # lineage -> (target, lineage row)
    for i, content_hash in enumerate(hashes):
        if content_hash in donors:
            source, row = donors[content_hash]
            by_set.setdefault(source, []).append((i, row))
    for source, pairs in by_set.items():
        targets = [i for i, _ in pairs]
        rows = np.array([r for _, r in pairs])
        features[targets] = np.hstack(
            [store.read_lineage_rows(source, name, rows) for name in layers]
        )
    return {i for pairs in by_set.values() for i, _ in pairs}


def _table(
    paths: Sequence[str],
    proba: np.ndarray,
    classes: tuple[str, ...],
    top_k: int,
    errors: list[str],
    cached: set[int],
) -> pd.DataFrame:
    rows = []
    for i, path in enumerate(paths):
        row: dict[str, Any] = {"path": path, "cached": i in cached, "error": errors[i]}
        if errors[i]:
            row.update({"class": "", "probability": float("nan"), "top_k": "[]"})
        else:
            order = np.argsort(-proba[i], kind="stable")[:top_k]
            row["class"] = classes[order[0]]
            row["probability"] = float(proba[i, order[0]])
            row["top_k"] = json.dumps([[classes[j], round(float(proba[i, j]), 6)] for j in order])
        rows.append(row)
    columns = ["path", "class", "probability", "top_k", "cached", "error"]
    return pd.DataFrame(rows, columns=columns)


def _write(table: pd.DataFrame, out: str) -> None:
    fs, path = fsspec.core.url_to_fs(out)
    parent = os.path.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        if out.lower().endswith(".parquet"):
            table.to_parquet(f, index=False)
        else:
            table.to_csv(f, index=False)
