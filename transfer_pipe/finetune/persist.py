"""Fine-tuned models in the feature store, each with a model card.

Layout: ``<store>/finetune/<run_id>/`` holds ``model.safetensors`` (the whole fine-tuned
network: ``backbone.*`` and ``head.*``), report files, and ``card.json`` written last
(``store.cards.save_with_card``), so a run without a card is unfinished: not listed, and
``read_card`` returns ``None`` for it. Its ``checkpoints/`` sub-folder holds the training
checkpoints (:mod:`transfer_pipe.finetune.checkpoint`: safetensors and JSON, each written
whole), in the store whatever its kind, so a run killed on one machine resumes on another
that opens the same store. A published backbone is written by
:func:`transfer_pipe.backbones.published.publish_backbone` to ``published/``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from transfer_pipe.backbones import BackboneSpec
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.finetune.card import FINETUNE_DIR, MODEL_FILE, FinetuneCard
from transfer_pipe.finetune.checkpoint import CheckpointFolder
from transfer_pipe.finetune.surgery import FinetuneModel
from transfer_pipe.store import StorageOptions, cards
from transfer_pipe.store.cards import card_folder, save_with_card

CHECKPOINTS = "checkpoints"


def run_url(store: str, run_id: str) -> str:
    return card_folder(store, FINETUNE_DIR, run_id)


def checkpoint_folder(
    store: str, run_id: str, storage_options: Mapping[str, Any] | None = None
) -> CheckpointFolder:
    """The run's checkpoints: ``<store>/finetune/<run_id>/checkpoints``, in the store."""
    return CheckpointFolder(f"{run_url(store, run_id)}/{CHECKPOINTS}", storage_options)


def save_finetuned(
    store: str,
    card: FinetuneCard,
    model: FinetuneModel,
    files: Iterable[Path] = (),
    storage_options: StorageOptions = None,
) -> str:
    """Write the model, the extra ``files`` and then the card, with the run's
    ``storage_options``; returns the run's URL."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / MODEL_FILE
        save_file(state, str(local), metadata={"classes": json.dumps(card.classes)})
        url = run_url(store, card.run_id)
        return save_with_card(url, (local, *files), card, storage_options)


def read_card(
    store: str, run_id: str, storage_options: StorageOptions = None
) -> FinetuneCard | None:
    """The run's card, or ``None`` while the run has not finished (or never started)."""
    return cards.read_card(run_url(store, run_id), FinetuneCard.from_dict, storage_options)


def list_cards(store: str, storage_options: StorageOptions = None) -> list[FinetuneCard]:
    """Cards of every finished fine-tuning run in the store, oldest first."""
    return cards.list_cards(store, FINETUNE_DIR, FinetuneCard.from_dict, storage_options)


def export_backbone(spec: BackboneSpec, model: FinetuneModel) -> dict[str, torch.Tensor]:
    """The fine-tuned backbone as a state dict of ``spec``'s own architecture: the
    fine-tuned tensors, plus the base's original classifier (which fine-tuning replaced),
    so that the published backbone loads it strictly."""
    base = spec.build()
    expected = base.state_dict()
    tuned = model.backbone.state_dict()
    unknown = [k for k in tuned if k not in expected]
    if unknown:
        raise TransferPipeError(f"fine-tuned tensors {unknown[:3]} are not in {spec.id}")
    return {k: tuned.get(k, v).detach().cpu().clone() for k, v in expected.items()}
