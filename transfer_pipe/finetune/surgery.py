"""Model surgery: a registered backbone with a new head for a task, a freeze policy, and
per-depth learning rates.

The head reads exactly what the feature store calls the ``penultimate`` layer (the pooled
input of the backbone's last ``nn.Linear``), so a linear probe fitted on cached features
can become the starting head (LP-FT) without changing what it computes.

Depth is counted in the backbone's own stages (``BackboneSpec.stage_layers()``), found
by the order modules run in one forward pass: the *stem* runs before the first stage, the
*neck* (e.g. a last 1x1 conv and pooling) after the last one. ``top-N`` trains the neck
and the last N stages; frozen modules stay in eval mode, so their BatchNorm statistics
and dropout do not move either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from transfer_pipe.backbones import BackboneSpec
from transfer_pipe.backbones.taps import LayerTap, find_penultimate
from transfer_pipe.config import parse_policy
from transfer_pipe.errors import TransferPipeError

STEM, NECK = "stem", "neck"


@dataclass(frozen=True)
class Segment:
    """A run of the backbone's modules that trains (or stays frozen) together."""

    name: str  # "stem", "stages.<i>"-style stage names, or "neck"
    depth: int  # 0 for the neck (next to the head), 1 for the last stage, ...
    modules: tuple[str, ...]


class FinetuneModel(nn.Module):
    """``backbone`` (its last ``nn.Linear`` removed) -> pooled penultimate features ->
    ``head``. ``train()`` keeps every frozen segment in eval mode."""

    def __init__(self, backbone: nn.Module, feature_module: str, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        # In a tuple, so the tap (which holds the backbone) is not registered as a second
        # copy of the backbone in state_dict() and parameters().
        self._tap = (LayerTap(backbone, [feature_module]),)
        self.feature_module = feature_module
        self.segments: tuple[Segment, ...] = ()
        self.frozen: frozenset[str] = frozenset()  # module names kept in eval mode
        self.bn_frozen = False  # every BatchNorm keeps its pretrained statistics

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features [B, D], float32."""
        return self._tap[0](x)[self.feature_module]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes]."""
        return self.head(self.features(x))

    def train(self, mode: bool = True) -> FinetuneModel:
        super().train(mode)
        if mode:
            modules = dict(self.backbone.named_modules())
            for name in self.frozen:
                modules[name].eval()
            if self.bn_frozen:
                for module in modules.values():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def trainable_segments(self) -> list[Segment]:
        return [s for s in self.segments if not set(s.modules) <= self.frozen]


def build_finetune_model(
    spec: BackboneSpec,
    num_classes: int,
    policy: str,
    image_size: int,
    seed: int = 0,
    bn: str = "frozen",
) -> FinetuneModel:
    """The backbone of ``spec`` with its weights, a new ``num_classes`` head (initialized
    from ``seed``) and ``policy`` applied: frozen parameters have ``requires_grad`` off.

    ``bn="frozen"`` keeps every BatchNorm's running statistics (its scale and shift still
    train in trained blocks): training then starts from exactly the features the probe
    saw, where batch statistics of a dataset far from ImageNet would shift them at once.
    ``bn="train"`` updates the statistics of the trained blocks."""
    backbone = spec.build()
    target, on_input = find_penultimate(backbone)
    feature_dim = _feature_dim(backbone, image_size)
    if on_input:
        # The old classifier's input is the feature; replacing it by Identity saves its
        # (often 1000-class) matrix product, and its output is then the same tensor.
        _replace_module(backbone, target, nn.Identity())
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(feature_dim, num_classes)
    with torch.no_grad():
        bound = 1.0 / feature_dim**0.5
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.zero_()
    model = FinetuneModel(backbone, target, head)
    model.segments = _segments(spec, backbone, image_size)
    model.bn_frozen = bn == "frozen"
    apply_policy(model, policy)
    return model


def _feature_dim(backbone: nn.Module, image_size: int) -> int:
    with LayerTap(backbone, ["penultimate"]) as tap, torch.inference_mode():
        return int(tap(torch.zeros(1, 3, image_size, image_size))["penultimate"].shape[1])


def _replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _call_order(backbone: nn.Module, image_size: int) -> dict[str, int]:
    """Module name -> position of its first call in one forward pass."""
    order: dict[str, int] = {}

    def first_call(name: str) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, args: Any) -> None:  # returns None: input unchanged
            order.setdefault(name, len(order))

        return hook

    handles = [
        module.register_forward_pre_hook(first_call(name))
        for name, module in backbone.named_modules()
        if name
    ]
    try:
        with torch.inference_mode():
            backbone.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        for handle in handles:
            handle.remove()
    return order


def _segments(spec: BackboneSpec, backbone: nn.Module, image_size: int) -> tuple[Segment, ...]:
    """Every module that holds parameters or buffers, grouped into stem, stages and neck."""
    stages = spec.stage_layers()
    order = _call_order(backbone, image_size)
    missing = [s for s in stages if s not in order]
    if not stages or missing:
        raise TransferPipeError(
            f"backbone {spec.id} names no stages that run in its forward pass ({missing}); "
            "fine-tune it with --policy head or full"
        )
    first, last = order[stages[0]], max(order[s] for s in stages)
    members: dict[str, list[str]] = {name: [] for name in (STEM, *stages, NECK)}
    for name, module in backbone.named_modules():
        if not name or not _has_state(module):
            continue
        stage = next((s for s in stages if name == s or name.startswith(s + ".")), None)
        if stage is not None:
            members[stage].append(name)
        elif name not in order:
            continue  # never runs (e.g. an auxiliary classifier): stays frozen
        elif order[name] < first:
            members[STEM].append(name)
        elif order[name] > last:
            members[NECK].append(name)
        else:  # between stages: trains with the stage before it
            before = max((s for s in stages if order[s] < order[name]), key=order.__getitem__)
            members[before].append(name)
    count = len(stages)
    depths = {NECK: 0, STEM: count + 1} | {s: count - i for i, s in enumerate(stages)}
    return tuple(Segment(name, depths[name], tuple(mods)) for name, mods in members.items())


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(
        True for _ in module.buffers(recurse=False)
    )


def apply_policy(model: FinetuneModel, policy: str) -> None:
    """Freeze what ``policy`` leaves out: parameters off, modules held in eval mode."""
    stages_trained = parse_policy(policy)
    stage_count = sum(1 for s in model.segments if s.name not in (STEM, NECK))
    if stages_trained is not None and stages_trained > stage_count:
        raise TransferPipeError(
            f"--policy {policy} trains more stages than the backbone has ({stage_count}); "
            f"use top-1 ... top-{stage_count} or full"
        )
    trained_depth = -1 if stages_trained == 0 else (stages_trained or stage_count + 1)
    frozen: set[str] = set()
    # Everything that never runs stays frozen too, so start from every stateful module.
    all_stateful = {name for name, m in model.backbone.named_modules() if name and _has_state(m)}
    trained = {m for s in model.segments if s.depth <= trained_depth for m in s.modules}
    frozen = all_stateful - trained
    modules = dict(model.backbone.named_modules())
    for name in frozen:
        for p in modules[name].parameters(recurse=False):
            p.requires_grad_(False)
    for name in trained:
        for p in modules[name].parameters(recurse=False):
            p.requires_grad_(True)
    model.head.requires_grad_(True)
    model.frozen = frozenset(frozen | _ancestors_only_of(frozen, trained))


def _ancestors_only_of(frozen: set[str], trained: set[str]) -> set[str]:
    """Containers (e.g. a Sequential of frozen blocks) that hold no trained module: eval
    mode on them changes nothing, but keeps their ``training`` flag honest."""
    ancestors: set[str] = set()
    for name in frozen:
        parts = name.split(".")
        ancestors.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return {a for a in ancestors if not any(t == a or t.startswith(a + ".") for t in trained)}


def parameter_groups(
    model: FinetuneModel, lr: float, lr_decay: float, weight_decay: float, head_lr: float
) -> list[dict[str, object]]:
    """AdamW groups: ``head_lr`` for the head, ``lr * lr_decay**d`` for the backbone
    segment at depth d (0 for the neck); biases and normalization weights get no weight
    decay."""
    modules = dict(model.backbone.named_modules())
    groups: list[dict[str, object]] = []

    def add(name: str, rate: float, params: Iterator[tuple[str, nn.Parameter]]) -> None:
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for pname, p in params:
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or pname.endswith("bias") else decay).append(p)
        for params_, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params_:
                groups.append(
                    {
                        "params": params_,
                        "lr": rate,
                        "weight_decay": wd,
                        "segment": name,
                    }
                )

    add("head", head_lr, model.head.named_parameters())
    for segment in model.segments:
        params = (
            (pname, p)
            for module in segment.modules
            for pname, p in modules[module].named_parameters(recurse=False)
        )
        add(segment.name, lr * lr_decay**segment.depth, params)
    return groups


def probe_head(
    coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray, scale: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear probe fitted on standardized features, folded into one linear layer on
    raw features: ``W (x - mean) / scale + b == (W / scale) x + (b - W (mean / scale))``."""
    coef64 = np.asarray(coef, np.float64)
    weight = coef64 / np.asarray(scale, np.float64)[None, :]
    bias = np.asarray(intercept, np.float64) - weight @ np.asarray(mean, np.float64)
    return torch.from_numpy(weight.astype(np.float32)), torch.from_numpy(bias.astype(np.float32))


def init_head(model: FinetuneModel, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Copy a [num_classes, D] weight and [num_classes] bias into the model's head."""
    if tuple(weight.shape) != tuple(model.head.weight.shape):
        raise TransferPipeError(
            f"the probe has shape {tuple(weight.shape)} but the head needs "
            f"{tuple(model.head.weight.shape)}: was it fitted on another layer or task?"
        )
    with torch.no_grad():
        model.head.weight.copy_(weight)
        model.head.bias.copy_(bias)
