"""EfficientNet-Lite0: TF "SAME" padding, the weight mapping, and the real weights."""

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from transfer_pipe.backbones import PENULTIMATE, BackboneSpec
from transfer_pipe.backbones.efficientnet_lite import (
    LITE0_BLOCKS,
    EfficientNetLite,
    reference_key_map,
    same_padding,
)
from transfer_pipe.backbones.taps import LayerTap

# Logits of the reference implementation (efficientnet_lite_pytorch 0.1.0,
# EfficientNet.from_name("efficientnet-lite0", image_size=None), same .pth file) on
# probe(size); ours matched it with a max abs difference of 0.0 at 224 and 64 px.
REFERENCE_LOGITS = {
    64: {905: 24.38434, 807: 19.06817, 753: 18.81314, "sum": -325.6995},
    224: {905: 5.12963, 904: 5.1289, 858: 4.3794, "sum": -61.6349},
}


def probe(size: int) -> torch.Tensor:
    """A deterministic, RNG-free input in roughly [-1, 1]."""
    n = 3 * size * size
    return torch.sin(torch.arange(n, dtype=torch.float32) * 0.37).reshape(1, 3, size, size)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (64, 3, 2, (0, 1)),  # even size, stride 2: the extra pixel goes bottom/right
        (64, 5, 2, (1, 2)),
        (65, 3, 2, (1, 1)),
        (7, 5, 1, (2, 2)),
        (2, 1, 1, (0, 0)),
    ],
)
def test_same_padding_matches_tensorflow(
    size: int, kernel: int, stride: int, expected: tuple[int, int]
) -> None:
    assert same_padding(size, kernel, stride) == expected


def test_structure() -> None:
    model = EfficientNetLite()
    assert [len(stage) for stage in model.stages] == [1, 2, 2, 3, 3, 4, 1]
    assert len(LITE0_BLOCKS) == len(model.stages) == 7
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 1280
    assert sum(p.numel() for p in model.parameters()) == 4652008


def test_key_map_covers_both_sides_exactly(lite0_state: dict[str, torch.Tensor]) -> None:
    mapping = reference_key_map()
    assert set(mapping) == set(lite0_state)
    assert set(mapping.values()) == set(EfficientNetLite().state_dict())
    assert len(set(mapping.values())) == len(mapping)


def test_digest_is_sha256_of_packaged_file(lite0_spec: BackboneSpec, lite0_file: str) -> None:
    expected = hashlib.sha256(Path(lite0_file).read_bytes()).hexdigest()
    assert lite0_spec.weights_digest() == expected
    assert lite0_spec.metadata["weights_sha256"] == expected


def test_loaded_tensors_equal_the_file(
    lite0: nn.Module, lite0_state: dict[str, torch.Tensor]
) -> None:
    # Hand-written spot checks (independent of reference_key_map), BN stats included.
    spots = {
        "_conv_stem.weight": lite0.stem.conv.weight,
        "_bn0.bias": lite0.stem.bn.bias,
        "_bn0.running_var": lite0.stem.bn.running_var,
        "_blocks.0._bn1.running_mean": lite0.stages[0][0].depthwise.bn.running_mean,
        "_blocks.2._bn0.running_var": lite0.stages[1][1].expand.bn.running_var,
        "_blocks.3._depthwise_conv.weight": lite0.stages[2][0].depthwise.conv.weight,
        "_blocks.10._bn2.running_mean": lite0.stages[4][2].project.bn.running_mean,
        "_blocks.11._bn0.weight": lite0.stages[5][0].expand.bn.weight,
        "_blocks.15._bn2.weight": lite0.stages[6][0].project.bn.weight,
        "_conv_head.weight": lite0.head.conv.weight,
        "_bn1.running_mean": lite0.head.bn.running_mean,
        "_bn1.running_var": lite0.head.bn.running_var,
        "_fc.weight": lite0.classifier.weight,
    }
    for key, tensor in spots.items():
        assert torch.equal(tensor, lite0_state[key]), key
    # And every tensor, through the map.
    ours = lite0.state_dict()
    for src, dst in reference_key_map().items():
        assert torch.equal(ours[dst], lite0_state[src]), (src, dst)
    assert lite0.head.bn.eps == 1e-3


@pytest.mark.parametrize("size", [64, 224])
def test_logits_match_reference_implementation(lite0: nn.Module, size: int) -> None:
    with torch.inference_mode():
        logits = lite0(probe(size))[0]
    for key, value in REFERENCE_LOGITS[size].items():
        got = logits.sum() if key == "sum" else logits[key]
        assert abs(float(got) - value) < 1e-3, (size, key)


@pytest.mark.parametrize("size", [64, 224])
def test_penultimate_features_are_finite_1280d(lite0: nn.Module, size: int) -> None:
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(size))
    x = x.contiguous(memory_format=torch.channels_last)
    with LayerTap(lite0, [PENULTIMATE]) as tap, torch.inference_mode():
        feats = tap(x)[PENULTIMATE]
        manual = torch.flatten(lite0.pool(lite0.forward_features(x)), 1)
    assert feats.shape == (4, 1280) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    torch.testing.assert_close(feats, manual, atol=1e-4, rtol=1e-4)


def test_any_image_size_works(lite0: nn.Module) -> None:
    with torch.inference_mode():
        assert lite0(torch.zeros(1, 3, 33, 47)).shape == (1, 1000)
