"""Fine-tuned models in the feature store, each with a model card.

Layout: ``<store>/finetune/<run_id>/`` holds ``model.safetensors`` (the whole fine-tuned
network: ``backbone.*`` and ``head.*``), report files, and ``card.json`` written last, so a
run without a card is unfinished. Checkpoints live on local disk (``checkpoints/`` in the
run's folder for a local store, else under ``~/.cache/transfer-pipe``), where an atomic
rename makes every write all-or-nothing. A published backbone adds ``backbone.pth``: a
state dict the base architecture loads, so every embed path can use it as weights.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from pathlib import Path
from typing import Any

import fsspec
import torch
from safetensors.torch import save_file

from transfer_pipe.backbones import BackboneSpec
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.files import atomic_path, local_path
from transfer_pipe.finetune.surgery import FinetuneModel
from transfer_pipe.store import cards
from transfer_pipe.store.cards import CARD

FINETUNE_DIR = "finetune"
MODEL_FILE = "model.safetensors"
BACKBONE_FILE = "backbone.pth"


def run_url(store: str, run_id: str) -> str:
    return posixpath.join(store.rstrip("/"), FINETUNE_DIR, run_id)


def checkpoint_dir(store: str, run_id: str) -> Path:
    """A local folder for the run's checkpoints."""
    folder = local_path(run_url(store, run_id))
    if folder is not None:
        return folder / "checkpoints"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "transfer-pipe" / "checkpoints" / run_id


def save_finetuned(
    store: str, run_id: str, model: FinetuneModel, card: dict[str, Any], files: dict[str, Path]
) -> str:
    """Write the model, the extra ``files`` and then the card; returns the run's URL."""
    url = run_url(store, run_id)
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path, exist_ok=True)
    if fs.exists(posixpath.join(path, CARD)):
        fs.rm_file(posixpath.join(path, CARD))  # unfinished until the new card lands
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / MODEL_FILE
        save_file(state, str(local), metadata={"classes": json.dumps(card["classes"])})
        for item in (local, *files.values()):
            fs.put_file(str(item), posixpath.join(path, item.name))
    with fs.open(posixpath.join(path, CARD), "w") as f:
        json.dump({**card, "run_id": run_id, "model_file": MODEL_FILE}, f, indent=2)
    return url


def read_card(store: str, run_id: str) -> dict[str, Any] | None:
    """The run's card, or None while the run has not finished."""
    fs, path = fsspec.core.url_to_fs(posixpath.join(run_url(store, run_id), CARD))
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        card: dict[str, Any] = json.load(f)
    return card


def list_cards(store: str) -> list[dict[str, Any]]:
    """Cards of every finished fine-tuning run in the store, oldest first."""
    return cards.list_cards(store, FINETUNE_DIR)


def export_backbone(spec: BackboneSpec, model: FinetuneModel, path: Path) -> Path:
    """Write the fine-tuned backbone as a state dict of ``spec``'s own architecture: the
    fine-tuned tensors, plus the base's original classifier (which fine-tuning replaced),
    so that ``get_backbone(spec.id, path)`` loads it strictly."""
    base = spec.build()
    expected = base.state_dict()
    tuned = model.backbone.state_dict()
    unknown = [k for k in tuned if k not in expected]
    if unknown:
        raise TransferPipeError(f"fine-tuned tensors {unknown[:3]} are not in {spec.id}")
    state = {k: tuned.get(k, v).detach().cpu().clone() for k, v in expected.items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path
