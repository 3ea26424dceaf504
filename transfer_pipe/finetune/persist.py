"""Fine-tuned models in the feature store, each with a model card.

Layout: ``<store>/finetune/<run_id>/`` holds ``model.safetensors`` (the whole fine-tuned
network: ``backbone.*`` and ``head.*``), report files, and ``card.json`` written last
(``store.cards.save_with_card``), so a run without a card is unfinished: not listed, and
``read_card`` returns ``None`` for it. Checkpoints live on local disk (``checkpoints/`` in
the run's folder for a local store, else under ``~/.cache/transfer-pipe/checkpoints/<run_id>``),
where an atomic rename makes every write all-or-nothing. A published backbone adds
``backbone.pth`` (see :func:`backbone_file`): a state dict the base architecture loads, so
every embed path can use it as weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from transfer_pipe.backbones import BackboneSpec
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.files import atomic_path, local_path
from transfer_pipe.finetune.card import FINETUNE_DIR, MODEL_FILE, FinetuneCard
from transfer_pipe.finetune.surgery import FinetuneModel
from transfer_pipe.store import cards
from transfer_pipe.store.cards import card_folder, save_with_card

BACKBONE_FILE = "backbone.pth"


def run_url(store: str, run_id: str) -> str:
    return card_folder(store, FINETUNE_DIR, run_id)


def _local_run_folder(store: str, run_id: str) -> Path | None:
    """The run's folder when the store is on local disk, else None."""
    return local_path(run_url(store, run_id))


def checkpoint_dir(store: str, run_id: str) -> Path:
    """A local folder for the run's checkpoints."""
    folder = _local_run_folder(store, run_id)
    if folder is not None:
        return folder / "checkpoints"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "transfer-pipe" / "checkpoints" / run_id


def backbone_file(store: str, run_id: str) -> Path:
    """Where the run's published backbone is written: a local file of this run's own (the
    run's folder for a local store, else its checkpoint folder), since the published
    backbone id points at it and an existing file is reused."""
    folder = _local_run_folder(store, run_id)
    return (folder if folder is not None else checkpoint_dir(store, run_id)) / BACKBONE_FILE


def save_finetuned(
    store: str, card: FinetuneCard, model: FinetuneModel, files: Iterable[Path] = ()
) -> str:
    """Write the model, the extra ``files`` and then the card; returns the run's URL."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / MODEL_FILE
        save_file(state, str(local), metadata={"classes": json.dumps(card.classes)})
        return save_with_card(run_url(store, card.run_id), (local, *files), card)


def read_card(store: str, run_id: str) -> FinetuneCard | None:
    """The run's card, or ``None`` while the run has not finished (or never started)."""
    return cards.read_card(run_url(store, run_id), FinetuneCard.from_dict)


def list_cards(store: str) -> list[FinetuneCard]:
    """Cards of every finished fine-tuning run in the store, oldest first."""
    return cards.list_cards(store, FINETUNE_DIR, FinetuneCard.from_dict)


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
