"""Published backbones: an id every process resolves to the fine-tuned weights file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from transfer_pipe.backbones import get_backbone, publish_backbone
from transfer_pipe.backbones.published import HOME_ENV, registry_path
from transfer_pipe.backbones.weights import file_sha256


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    return tmp_path / "home"


def _weights(path: Path, shift: float) -> Path:
    state = get_backbone("tiny_test").build().state_dict()
    torch.save({k: v + shift for k, v in state.items()}, path)
    return path


def test_a_published_id_loads_its_weights_and_republishing_replaces_them(
    tmp_path: Path, home: Path
) -> None:
    preprocessing = get_backbone("tiny_test").preprocessing
    first = _weights(tmp_path / "first.pth", 0.01)
    backbone_id = publish_backbone("run1", "tiny_test", str(first), preprocessing, {"run": "run1"})
    assert backbone_id == "finetuned/run1"
    spec = get_backbone(backbone_id)
    torch.testing.assert_close(spec.build().state_dict(), torch.load(first))

    second = _weights(tmp_path / "second.pth", 0.02)
    publish_backbone("run1", "tiny_test", str(second), preprocessing, {"run": "run1"})
    # Mutation: dropping the os.replace in files.atomic_path (the registry is written to a
    # temporary file never renamed onto backbones.json) fails this test.
    assert get_backbone(backbone_id).weights_digest() == file_sha256(str(second))
    assert json.loads(registry_path().read_text())[backbone_id]["weights_file"] == str(second)
    assert os.listdir(home) == ["backbones.json"]  # no temporary file left beside it
