"""torchvision models as backbones: random-init builds, penultimate dims, stages."""

import pytest
import torch
from torch import nn

from transfer_pipe.backbones import PENULTIMATE, get_backbone, list_backbones
from transfer_pipe.backbones.taps import LayerTap
from transfer_pipe.backbones.torchvision_backbones import _skeleton, model_names, stage_layers

# Cheap models (and one per layout family) with their penultimate width.
CHEAP = {
    "resnet18": 512,
    "mobilenet_v3_small": 1024,
    "efficientnet_b0": 1280,
    "squeezenet1_1": 512,  # no nn.Linear: pooled output of `features`
    "shufflenet_v2_x0_5": 1024,
}


def test_every_torchvision_model_is_listed() -> None:
    ids = set(list_backbones())
    assert {f"torchvision/{name}" for name in model_names()} <= ids
    assert len(model_names()) > 50


@pytest.mark.parametrize(("name", "dim"), CHEAP.items())
def test_random_init_builds_with_expected_feature_dims(name: str, dim: int) -> None:
    spec = get_backbone(f"torchvision/{name}")
    assert get_backbone(spec.id) == spec
    assert spec.metadata["feature_dim"] == dim
    assert spec.preprocessing.image_size == 224
    assert spec.weights_digest().startswith("random-init:seed=0:torch=")
    model = spec.build()
    layers = [PENULTIMATE, *spec.stage_layers()]
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with LayerTap(model, layers) as tap, torch.inference_mode():
        out = tap(x)
    assert out[PENULTIMATE].shape == (2, dim)
    assert all(out[layer].shape[0] == 2 and out[layer].dim() == 2 for layer in layers)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_swin_stage_taps_pool_its_channels_last_outputs() -> None:
    # Swin's stages output [B, H, W, C]; pooling the wrong axes would give H-wide vectors.
    spec = get_backbone("torchvision/swin_t")
    layers = [PENULTIMATE, *spec.stage_layers()]
    with LayerTap(spec.build(), layers) as tap, torch.inference_mode():
        out = tap(torch.randn(1, 3, 64, 64))
    widths = [96, 96, 192, 192, 384, 384, 768, 768]
    assert [v.shape[1] for v in out.values()] == [768, *widths]


def test_random_init_is_deterministic() -> None:
    spec = get_backbone("torchvision/resnet18")
    state = torch.random.get_rng_state()
    a, b = spec.build(), spec.build()
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet50", ["layer1", "layer2", "layer3", "layer4"]),
        ("vgg11", ["features.2", "features.5", "features.10", "features.15", "features.20"]),
        ("densenet121", [f"features.denseblock{i}" for i in range(1, 5)]),
        ("vit_b_16", [f"encoder.layers.encoder_layer_{i}" for i in range(12)]),
        ("regnet_x_400mf", [f"trunk_output.block{i}" for i in range(1, 5)]),
        ("convnext_tiny", [f"features.{i}" for i in range(8)]),
    ],
)
def test_stage_layers_per_family(name: str, expected: list[str]) -> None:
    assert stage_layers(name) == expected


@pytest.mark.parametrize("name", model_names())
def test_stage_layers_exist_in_every_model(name: str) -> None:
    model = _skeleton(name)
    if model is None:  # regnets cannot be built on the meta device; they share one layout
        if name != "regnet_x_400mf":
            pytest.skip("regnet layout checked on regnet_x_400mf")
        model = get_backbone(f"torchvision/{name}").build()
    modules = {n for n, _ in model.named_modules()}
    layers = stage_layers(name)
    assert layers and all(layer in modules for layer in layers)
    assert isinstance(model, nn.Module)
