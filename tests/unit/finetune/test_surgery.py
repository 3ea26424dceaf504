"""Model surgery: what each freeze policy trains, what stays bit-for-bit frozen, per-depth
learning rates, and the probe folded into the head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from transfer_pipe.backbones import get_backbone
from transfer_pipe.backbones.taps import LayerTap
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.finetune.surgery import (
    FinetuneModel,
    build_finetune_model,
    init_head,
    parameter_groups,
    probe_head,
)
from transfer_pipe.heads.linear import LBFGSLinearClassifier

RESNET = "torchvision/resnet18"  # random init offline; BatchNorm in every stage


def train_steps(model: FinetuneModel, steps: int = 3, size: int = 32) -> None:
    """A few AdamW steps on random images; large enough that anything trainable moves."""
    groups = parameter_groups(model, lr=1e-2, lr_decay=0.5, weight_decay=0.01, head_lr=1e-2)
    optimizer = torch.optim.AdamW(groups)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        images = torch.randn(8, 3, size, size, generator=gen)
        targets = torch.randint(0, 3, (8,), generator=gen)
        loss = F.cross_entropy(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def snapshot(model: FinetuneModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: FinetuneModel) -> set[str]:
    after = model.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def test_top1_trains_only_the_last_stage_and_freezes_the_rest_bit_for_bit() -> None:
    model = build_finetune_model(get_backbone(RESNET), 3, "top-1", 32, bn="train")
    before = snapshot(model)
    train_steps(model)
    moved = changed(before, model)
    assert any(k.startswith("backbone.layer4.") and k.endswith("conv1.weight") for k in moved)
    assert any(k.startswith("backbone.layer4.") and k.endswith("running_mean") for k in moved)
    assert {"head.weight", "head.bias"} <= moved
    frozen = {k for k in before if not k.startswith(("backbone.layer4.", "head."))}
    assert frozen and not (moved & frozen)  # weights and BatchNorm statistics alike
    # Frozen modules stay in eval mode through model.train().
    assert not model.backbone.layer1.training and not model.backbone.bn1.training
    assert model.backbone.layer4.training


def test_frozen_bn_keeps_every_statistic_while_the_weights_train() -> None:
    model = build_finetune_model(get_backbone(RESNET), 3, "full", 32, bn="frozen")
    before = snapshot(model)
    train_steps(model)
    moved = changed(before, model)
    assert "backbone.conv1.weight" in moved and "backbone.layer1.0.bn1.weight" in moved
    statistics = {k for k in before if k.endswith(("running_mean", "running_var"))}
    assert statistics and not (moved & statistics)


def test_head_policy_moves_only_the_head() -> None:
    model = build_finetune_model(get_backbone("tiny_test"), 3, "head", 32)
    before = snapshot(model)
    train_steps(model)
    assert changed(before, model) == {"head.weight", "head.bias"}
    assert [s.name for s in model.trainable_segments()] == []


def test_segments_follow_the_backbones_own_stages() -> None:
    model = build_finetune_model(get_backbone("efficientnet_lite0.in1k"), 4, "top-2", 64)
    segments = {s.name: s for s in model.segments}
    assert list(segments) == ["stem", *[f"stages.{i}" for i in range(7)], "neck"]
    assert segments["stem"].modules == ("stem.conv", "stem.bn") and segments["stem"].depth == 8
    assert segments["neck"].modules == ("head.conv", "head.bn") and segments["neck"].depth == 0
    assert segments["stages.6"].depth == 1 and segments["stages.0"].depth == 7
    assert [s.name for s in model.trainable_segments()] == ["stages.5", "stages.6", "neck"]
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("stages.5.", "stages.6.", "head.")) for n in trainable)


def test_learning_rates_shrink_with_depth() -> None:
    model = build_finetune_model(get_backbone(RESNET), 3, "full", 32)
    groups = parameter_groups(model, lr=1e-3, lr_decay=0.5, weight_decay=0.05, head_lr=1e-2)
    rate = {g["segment"]: g["lr"] for g in groups}
    assert rate["head"] == 1e-2
    assert rate["layer4"] == pytest.approx(5e-4) and rate["layer1"] == pytest.approx(6.25e-5)
    assert rate["stem"] == pytest.approx(1e-3 * 0.5**5)
    # Biases and normalization weights are not decayed; conv weights are.
    for group in groups:
        dims = {p.ndim for p in group["params"]}  # type: ignore[attr-defined]
        assert (group["weight_decay"] == 0.0) == (dims == {1})
    counted = sum(p.numel() for g in groups for p in g["params"])  # type: ignore[attr-defined]
    assert counted == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("policy", ["top-4", "top-0", "middle", "top-x"])
def test_bad_policies_are_clear_errors(policy: str) -> None:
    with pytest.raises(TransferPipeError, match=r"policy|stages"):
        build_finetune_model(get_backbone("tiny_test"), 3, policy, 32)


def test_the_head_reads_the_penultimate_features_the_store_holds() -> None:
    spec = get_backbone("efficientnet_lite0.in1k")
    model = build_finetune_model(spec, 5, "top-1", 64).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with LayerTap(spec.build(), ["penultimate"]) as tap, torch.no_grad():
        stored = tap(images)["penultimate"]
        torch.testing.assert_close(model.features(images), stored, rtol=0, atol=1e-5)


def test_a_folded_probe_computes_the_probes_logits() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(3.0, 2.0, size=(120, 32)).astype(np.float32)
    labels = rng.integers(0, 4, size=120).astype(str)
    probe = Pipeline(
        [("scale", StandardScaler()), ("head", LBFGSLinearClassifier(C=1.0, device="cpu"))]
    ).fit(features, labels)
    tensors = probe.named_steps["head"].head_tensors()
    scaler = probe.named_steps["scale"]
    weight, bias = probe_head(
        tensors["coef"].numpy(), tensors["intercept"].numpy(), scaler.mean_, scaler.scale_
    )
    model = build_finetune_model(get_backbone("tiny_test"), 4, "head", 32)  # 32 features
    with pytest.raises(TransferPipeError, match="shape"):
        init_head(model, weight[:, :16], bias)  # a probe of another layer
    init_head(model, weight, bias)
    with torch.no_grad():
        logits = model.head(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(logits, probe.decision_function(features), rtol=1e-4, atol=1e-4)
