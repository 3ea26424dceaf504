"""A feature set records the weights file it was embedded with, so fine-tuning it later
finds the very same weights without being told the path again."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from tests.support.images import make_dataset
from transfer_pipe import steps
from transfer_pipe.backbones import get_backbone
from transfer_pipe.config import EmbedConfig
from transfer_pipe.steps.finetune.plan import _backbone
from transfer_pipe.store import open_store


def _other_weights(path: Path) -> Path:
    """tiny_test's state dict with every tensor changed: another weights digest."""
    state = {k: v + 0.01 for k, v in get_backbone("tiny_test").build().state_dict().items()}
    torch.save(state, path)
    return path


def test_the_spec_keeps_the_weights_file_and_fine_tuning_finds_it(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", classes=2, per_class=2, bad=False)
    weights = _other_weights(tmp_path / "weights.pth")
    config = EmbedConfig(
        source=str(tmp_path / "data"),
        store=str(tmp_path / "store"),
        backbone="tiny_test",
        weights_file=str(weights),
    )
    key = steps.prepare_embedding(config).spec.key
    spec = open_store(config.store).spec(key)  # read back from the store, not the plan
    # Mutation: not passing weights_file into the FeatureSetSpec (steps.embed) fails here.
    assert spec.weights_file == str(weights)

    # A fine-tuning run that names no weights file (no embed section in its config).
    finetune_config: Any = SimpleNamespace(embed=None, init="pretrained")
    backbone = _backbone(spec, finetune_config)
    # Mutation: dropping spec.weights_file from the candidates makes _backbone raise.
    assert backbone.weights_file == str(weights)
    assert backbone.weights_digest() == spec.weights_digest
