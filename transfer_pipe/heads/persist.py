"""Fitted heads saved in the feature store, each with a model card.

Layout: ``<store>/heads/<head_id>/`` holds ``card.json`` and the model:
``model.safetensors`` for torch-backed heads (the scaler's statistics and the head's tensors;
class, params and classes in its metadata), ``model.skops`` for scikit-learn ones (loaded
back only when every type in it is one we save). A head that keeps its training rows (kNN)
is saved without them: ``fit_rows.parquet`` names them (sample ids, in order) in its feature
set, and loading reads them back from there. The card is written last
(``store.cards.save_with_card``), so a head without one is unfinished: not listed, and
``read_card`` returns ``None`` for it.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.heads.card import HeadCard, head_url, read_card
from transfer_pipe.heads.linear import LBFGSLinearClassifier
from transfer_pipe.heads.torch_heads import TorchLinearClassifier, TorchMLPClassifier
from transfer_pipe.schema import SAMPLE_ID
from transfer_pipe.store import StorageOptions
from transfer_pipe.store.cards import save_with_card, store_fs

_TENSOR_HEADS: dict[str, Any] = {
    cls.__name__: cls for cls in (LBFGSLinearClassifier, TorchLinearClassifier, TorchMLPClassifier)
}
_SKOPS_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "builtins.")
FIT_ROWS = "fit_rows.parquet"  # a kNN head's training rows: sample ids in its feature set


def save_head(
    store: str,
    card: HeadCard,
    model: Pipeline,
    files: Iterable[Path] = (),
    storage_options: StorageOptions = None,
    fit_ids: Sequence[str] | None = None,
) -> str:
    """Write the model, the extra ``files`` (reports, plots) and then the card (see
    ``store.cards.save_with_card``) with the run's ``storage_options``; returns the head's
    URL. ``fit_ids`` (the sample ids the model was fitted on, in order) let a kNN head
    reference its training rows instead of keeping a copy. Rewriting a head with the
    same id replaces it."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = _reference_training_rows(model, fit_ids, folder)
        with _training_rows_left_out(model if rows else None):
            model_file = _write_model(model, folder)
        card = replace(card, model_file=model_file.name, fit_rows_file=rows.name if rows else "")
        url = head_url(store, card.result.head_id)
        saved = (model_file, *([rows] if rows else []), *files)
        return save_with_card(url, saved, card, storage_options)


def _reference_training_rows(
    model: Pipeline, fit_ids: Sequence[str] | None, folder: Path
) -> Path | None:
    """``fit_rows.parquet`` in ``folder`` for a head that keeps its training rows."""
    if fit_ids is None or not isinstance(model.named_steps["head"], KNeighborsClassifier):
        return None
    out = folder / FIT_ROWS
    pd.DataFrame({SAMPLE_ID: np.asarray(fit_ids, dtype=str)}).to_parquet(out, index=False)
    return out


@contextlib.contextmanager
def _training_rows_left_out(model: Pipeline | None) -> Iterator[None]:
    """The kNN head of ``model`` without its copy of the training rows while it is
    written (put back after: the caller's model stays whole)."""
    if model is None:
        yield
        return
    head = model.named_steps["head"]
    kept = head._fit_X
    head._fit_X = np.empty((0, kept.shape[1]), dtype=kept.dtype)
    try:
        yield
    finally:
        head._fit_X = kept


def _write_model(model: Pipeline, folder: Path) -> Path:
    scaler: StandardScaler = model.named_steps["scale"]
    head = model.named_steps["head"]
    if type(head).__name__ in _TENSOR_HEADS:
        tensors = {f"head.{k}": v.contiguous() for k, v in head.head_tensors().items()}
        tensors["scale.mean"] = torch.from_numpy(np.asarray(scaler.mean_, np.float64))
        tensors["scale.scale"] = torch.from_numpy(np.asarray(scaler.scale_, np.float64))
        metadata = {
            "class": type(head).__name__,
            "params": json.dumps(head.get_params()),
            "classes": json.dumps([str(c) for c in head.classes_]),
        }
        out = folder / "model.safetensors"
        save_file(tensors, str(out), metadata=metadata)
        return out
    import skops.io  # seconds to import: only when a scikit-learn head is saved or loaded

    out = folder / "model.skops"
    skops.io.dump(model, out)
    return out


def load_head(
    store: str, head_id: str, storage_options: StorageOptions = None
) -> tuple[Pipeline, HeadCard]:
    """The fitted model (scaler + head) and its card, read with the run's
    ``storage_options``; a head that is missing or unfinished is an error that points to
    ``heads ls``."""
    card = read_card(store, head_id, storage_options)
    if card is None:
        raise TransferPipeError(
            f"no head {head_id!r} in {store}; `transfer-pipe heads ls --store {store}` lists them."
        )
    fs, path = store_fs(posixpath.join(head_url(store, head_id), card.model_file), storage_options)
    with fs.open(path, "rb") as f, tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / card.model_file
        local.write_bytes(f.read())
        model = _read_model(local)
    if card.fit_rows_file:
        _restore_training_rows(store, model, card, storage_options)
    return model, card


def _restore_training_rows(
    store_url: str, model: Pipeline, card: HeadCard, storage_options: StorageOptions
) -> None:
    """Read a kNN head's training rows back from its feature set, scaled as when it was
    fitted: the very values it was saved without."""
    from transfer_pipe.heads.tasks import layer_features
    from transfer_pipe.store import open_store

    fs, path = store_fs(
        posixpath.join(head_url(store_url, card.result.head_id), card.fit_rows_file),
        storage_options,
    )
    with fs.open(path, "rb") as f:
        ids = pd.read_parquet(f)[SAMPLE_ID].astype(str).tolist()
    store = open_store(store_url, storage_options)
    try:
        features = layer_features(store, card.feature_set, card.result.layer, ids)
    except TransferPipeError as err:
        raise TransferPipeError(
            f"head {card.result.head_id} (kNN) reads its training rows from feature set "
            f"{card.feature_set}, which no longer holds them ({err}); fit it again with "
            "`transfer-pipe train`."
        ) from err
    head = model.named_steps["head"]
    scaled = model.named_steps["scale"].transform(features)
    head._fit_X = np.asarray(scaled, dtype=head._fit_X.dtype)


def _read_model(path: Path) -> Pipeline:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            metadata: dict[str, str] = f.metadata()
        if metadata.get("class") not in _TENSOR_HEADS:
            raise TransferPipeError(
                f"{path} holds a head class transfer-pipe does not load: {metadata.get('class')}"
            )
        tensors = load_file(str(path))
        head = _TENSOR_HEADS[metadata["class"]].from_tensors(
            {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")},
            json.loads(metadata["params"]),
            json.loads(metadata["classes"]),
        )
        scaler = StandardScaler()
        scaler.mean_ = tensors["scale.mean"].numpy()
        scaler.scale_ = tensors["scale.scale"].numpy()
        scaler.var_ = scaler.scale_**2
        scaler.n_features_in_ = len(scaler.mean_)
        return Pipeline([("scale", scaler), ("head", head)])
    import skops.io

    untrusted = skops.io.get_untrusted_types(file=path)
    unknown = [t for t in untrusted if not t.startswith(_SKOPS_TRUSTED_PREFIXES)]
    if unknown:
        raise TransferPipeError(f"{path} holds types transfer-pipe does not load: {unknown}")
    model = skops.io.load(path, trusted=untrusted)
    assert isinstance(model, Pipeline)
    return model
