"""LayerTap and resolve_layers: several pooled layers from one forward pass."""

import threading

import pytest
import torch
from torch import nn

from transfer_pipe.backbones import PENULTIMATE, get_backbone
from transfer_pipe.backbones.taps import NHWC_LAYERS_ATTR, LayerTap, resolve_layers
from transfer_pipe.errors import TransferPipeError


@pytest.fixture
def tiny() -> nn.Module:
    return get_backbone("tiny_test").build()


def batch(n: int = 5, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n))


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_resolve_layers_defaults_expands_and_dedupes(tiny: nn.Module) -> None:
    spec = get_backbone("tiny_test")
    # The default is the top of the network: the penultimate layer, then the last three
    # stages deep to shallow (tiny_test has three). Mutation: the default [PENULTIMATE].
    top = [PENULTIMATE, "stages.2", "stages.1", "stages.0"]
    assert resolve_layers(spec, tiny, None) == resolve_layers(spec, tiny, []) == top
    assert resolve_layers(spec, tiny, "top") == top
    assert resolve_layers(spec, tiny, PENULTIMATE) == [PENULTIMATE]
    assert resolve_layers(spec, tiny, ["stages.1", "stages", PENULTIMATE, "stages.1"]) == [
        "stages.1",
        "stages.0",
        "stages.2",
        PENULTIMATE,
    ]
    assert resolve_layers(spec, tiny, "stages") == ["stages.0", "stages.1", "stages.2"]


def test_resolve_layers_rejects_unknown_names_with_examples(tiny: nn.Module) -> None:
    with pytest.raises(TransferPipeError) as err:
        resolve_layers(get_backbone("tiny_test"), tiny, ["stage9", "penultimate"])
    message = str(err.value)
    assert "'stage9'" in message and "stages.0" in message and "penultimate" in message


def test_stage_taps_give_one_vector_per_stage_in_one_forward(tiny: nn.Module) -> None:
    spec = get_backbone("tiny_test")
    layers = resolve_layers(spec, tiny, ["stages", PENULTIMATE])
    calls = []
    counter = tiny.register_forward_pre_hook(lambda module, args: calls.append(1))
    x = batch()
    with LayerTap(tiny, layers) as tap, torch.inference_mode():
        out = tap(x)
    counter.remove()
    assert len(calls) == 1
    assert list(out) == layers
    assert [out[f"stages.{i}"].shape[1] for i in range(3)] == [8, 16, 32]
    # Each tap equals the stage's activation averaged over space.
    with torch.inference_mode():
        h = x
        for i, stage in enumerate(tiny.stages):
            h = stage(h)
            torch.testing.assert_close(out[f"stages.{i}"], h.mean(dim=(2, 3)))
    torch.testing.assert_close(out[PENULTIMATE], out["stages.2"])  # pool -> classifier input


# Output channels of each stage, shallow to deep, written out from the architectures
# (EfficientNet-Lite0: the published block table, 16 ... 320) rather than read from the
# model or the spec, so that a wrong stage list cannot agree with itself.
STAGE_WIDTHS = {
    "tiny_test": [8, 16, 32],
    "efficientnet_lite0.in1k": [16, 24, 40, 80, 112, 192, 320],
}


@pytest.mark.parametrize("backbone_id", sorted(STAGE_WIDTHS))
def test_stages_are_the_architectures_stages_shallow_to_deep(backbone_id: str) -> None:
    """Mutations seen to fail it: a backbone's ``stages`` listing one stage too few
    (``range(len(...) - 1)`` in builtin.py) or listing them deep to shallow."""
    spec = get_backbone(backbone_id)
    model = spec.build()
    widths = STAGE_WIDTHS[backbone_id]
    layers = resolve_layers(spec, model, ["stages"])
    assert layers == [f"stages.{i}" for i in range(len(widths))]
    size = spec.preprocessing.image_size
    with LayerTap(model, layers) as tap, torch.inference_mode():
        out = tap(torch.zeros(1, 3, size, size))
    assert [out[layer].shape[1] for layer in layers] == widths


def test_outputs_are_float32_contiguous_with_channels_last_and_autocast(tiny: nn.Module) -> None:
    x = batch()
    layers = ["stages.0", "stages.2", PENULTIMATE]
    with LayerTap(tiny, layers) as tap, torch.inference_mode():
        plain = tap(x)
        channels_last = tap(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tap(x)
    for layer in layers:
        for out in (plain[layer], channels_last[layer], low[layer]):
            assert out.dtype == torch.float32 and out.is_contiguous() and out.dim() == 2
        torch.testing.assert_close(channels_last[layer], plain[layer], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(low[layer], plain[layer], atol=0.1, rtol=0.05)


def test_hooks_are_removed(tiny: nn.Module) -> None:
    before = hook_count(tiny)
    tap = LayerTap(tiny, ["stages.0", PENULTIMATE])
    assert hook_count(tiny) == before + 2
    tap.remove()
    assert hook_count(tiny) == before
    with LayerTap(tiny, ["stages.1"]):
        pass
    assert hook_count(tiny) == before
    with pytest.raises(TransferPipeError):
        LayerTap(tiny, ["stages.0", "nope"])  # a failed construction leaves no hooks
    assert hook_count(tiny) == before


def test_model_run_outside_the_tap_is_unaffected(tiny: nn.Module) -> None:
    with LayerTap(tiny, [PENULTIMATE]), torch.inference_mode():
        assert tiny(batch()).shape == (5, 10)


def test_threads_sharing_a_tap_get_their_own_features(tiny: nn.Module) -> None:
    inputs = [batch(n) for n in (2, 3, 4, 6)]
    with LayerTap(tiny, ["stages.1", PENULTIMATE]) as tap, torch.inference_mode():
        expected = [tap(x) for x in inputs]
        results: dict[int, dict[str, torch.Tensor]] = {}

        def run(i: int) -> None:
            for _ in range(5):
                results[i] = tap(inputs[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, exp in enumerate(expected):
        for layer, value in exp.items():
            torch.testing.assert_close(results[i][layer], value)


class Tokens(nn.Module):
    """A toy transformer-ish model: [B, 3, H, W] -> tokens [B, T, 4] -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 2, stride=2)
        self.encoder = nn.Identity()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(self.embed(x).flatten(2).transpose(1, 2))  # [B, T, C]
        return self.head(tokens[:, 0])


def test_token_outputs_are_averaged_over_tokens() -> None:
    model = Tokens().eval()
    x = torch.randn(2, 3, 8, 8)
    with LayerTap(model, ["encoder", PENULTIMATE]) as tap, torch.no_grad():
        out = tap(x)
        tokens = model.embed(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out["encoder"], tokens.mean(dim=1))
    torch.testing.assert_close(out[PENULTIMATE], tokens[:, 0])


def test_nhwc_layers_pool_over_height_and_width() -> None:
    model = nn.Sequential(nn.Conv2d(3, 5, 1), nn.Identity(), nn.Flatten(), nn.Linear(5 * 36, 2))
    # Make layer "1" output [B, H, W, C], as Swin's stages do.
    model[1].register_forward_hook(lambda m, a, out: out.permute(0, 2, 3, 1))
    setattr(model, NHWC_LAYERS_ATTR, ("1",))
    x = torch.randn(2, 3, 6, 6)
    with LayerTap(model, ["0", "1"]) as tap, torch.no_grad():
        out = tap(x)
    torch.testing.assert_close(out["1"], out["0"])
    assert out["1"].shape == (2, 5)


def test_penultimate_without_linear_uses_child_before_classifier() -> None:
    model = nn.Sequential()
    model.add_module("features", nn.Conv2d(3, 7, 3))
    model.add_module("classifier", nn.Sequential(nn.Conv2d(7, 2, 1), nn.AdaptiveAvgPool2d(1)))
    x = torch.randn(2, 3, 9, 9)
    with LayerTap(model, [PENULTIMATE]) as tap, torch.no_grad():
        out = tap(x)[PENULTIMATE]
        expected = model.features(x).mean(dim=(2, 3))
    torch.testing.assert_close(out, expected)


def test_penultimate_not_found_is_a_clear_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
    with pytest.raises(TransferPipeError, match="penultimate"):
        LayerTap(model, [PENULTIMATE])


class WithAux(nn.Module):
    """Like googlenet in eval mode: an auxiliary head that is registered but not run."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(12, 2)
        self.fc = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_layer_that_never_runs_is_reported() -> None:
    model = WithAux()
    with LayerTap(model, ["aux"]) as tap, pytest.raises(TransferPipeError, match="did not run"):
        tap(torch.randn(1, 3, 2, 2))
