"""Fitted heads saved in the feature store, each with a model card.

Layout: ``<store>/heads/<head_id>/`` holds ``card.json`` and the model:
``model.safetensors`` for torch-backed heads (the scaler's statistics and the head's tensors;
class, params and classes in its metadata), ``model.skops`` for scikit-learn ones (loaded
back only when every type in it is one we save). The card is written last
(``store.cards.save_with_card``), so a head without one is unfinished: not listed, and
``read_card`` returns ``None`` for it.
"""

from __future__ import annotations

import json
import posixpath
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.heads.card import HeadCard, head_url, read_card
from transfer_pipe.heads.linear import LBFGSLinearClassifier
from transfer_pipe.heads.torch_heads import TorchLinearClassifier, TorchMLPClassifier
from transfer_pipe.store import StorageOptions
from transfer_pipe.store.cards import save_with_card, store_fs

_TENSOR_HEADS: dict[str, Any] = {
    cls.__name__: cls for cls in (LBFGSLinearClassifier, TorchLinearClassifier, TorchMLPClassifier)
}
_SKOPS_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "builtins.")


def save_head(
    store: str,
    card: HeadCard,
    model: Pipeline,
    files: Iterable[Path] = (),
    storage_options: StorageOptions = None,
) -> str:
    """Write the model, the extra ``files`` (reports, plots) and then the card (see
    ``store.cards.save_with_card``) with the run's ``storage_options``; returns the head's
    URL. Rewriting a head with the same id replaces it."""
    with tempfile.TemporaryDirectory() as tmp:
        model_file = _write_model(model, Path(tmp))
        card = replace(card, model_file=model_file.name)
        url = head_url(store, card.head_id)
        return save_with_card(url, (model_file, *files), card, storage_options)


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
    return model, card


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
