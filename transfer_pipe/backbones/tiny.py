"""A tiny convolutional backbone for tests: registered and used like the real ones."""

from __future__ import annotations

import itertools
import math
import time

import torch
from torch import nn

from transfer_pipe.backbones.builtin import SLOW_TEST_FORWARD_S, TINY_SEED

TINY_CHANNELS = (8, 16, 32)


class TinyNet(nn.Module):
    """Three stride-2 conv stages (8, 16, 32 channels), global pool, linear classifier.

    About 6k parameters. Weights come from a ``torch.Generator`` seeded with ``seed``,
    so they are identical in every process whatever the global RNG state.
    """

    def __init__(self, num_classes: int = 10, seed: int = TINY_SEED) -> None:
        super().__init__()
        widths = (3, *TINY_CHANNELS)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU())
            for c_in, c_out in itertools.pairwise(widths)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], num_classes)
        self._init(seed)

    @torch.no_grad()
    def _init(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            else:  # He-normal: keeps activations from vanishing through the ReLUs
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * math.sqrt(2.0 / fan_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits [B, num_classes]."""
        for stage in self.stages:
            x = stage(x)
        return self.classifier(torch.flatten(self.pool(x), 1))


class SlowTinyNet(TinyNet):
    """TinyNet whose every forward pass first waits ``SLOW_TEST_FORWARD_S`` seconds: a run
    that lasts as long as a test needs (images / batch size x that wait) on a few images,
    without using the CPU (a test beside it keeps both cores)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(SLOW_TEST_FORWARD_S)
        return super().forward(x)
