"""One small, fixed fine-tuning job, built the same way in the test process and in a
subprocess that the resume test kills midway.

    python -m tests.unit.finetune.training DATA CHECKPOINTS [--pause-after N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from tests.images import make_dataset
from transfer_pipe.backbones import get_backbone
from transfer_pipe.data.idx import to_url
from transfer_pipe.finetune.data import ImageRows
from transfer_pipe.finetune.loop import Trainer, TrainOptions
from transfer_pipe.finetune.surgery import build_finetune_model

OPTIONS = TrainOptions(epochs=4, batch_size=8, lr=3e-3, head_lr=3e-2, warmup_epochs=0.5,
                       patience=4, seed=0)  # fmt: skip


def make_data(root: Path) -> None:
    """Three classes of real image files (no bad ones: those are another test's)."""
    make_dataset(root, classes=3, per_class=8, bad=False)


def rows(root: Path, augmentation: str = "affine") -> ImageRows:
    files = sorted(root.rglob("*.*"))
    targets = np.asarray([int(f.parent.name[-1]) for f in files])
    spec = get_backbone("tiny_test")
    return ImageRows([to_url(str(f)) for f in files], targets, spec.preprocessing, augmentation)


def make_trainer(root: Path, checkpoints: Path, options: TrainOptions = OPTIONS) -> Trainer:
    torch.set_num_threads(1)  # the same kernels in every process: bit-identical results
    model = build_finetune_model(get_backbone("tiny_test"), 3, "top-2", 32, seed=0)
    return Trainer(model, rows(root), rows(root, "none"), options, checkpoints, torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("checkpoints", type=Path)
    parser.add_argument("--pause-after", type=int, default=0)
    args = parser.parse_args()

    def pause(record: dict[str, object]) -> None:
        if record["epoch"] == args.pause_after:
            print("paused", flush=True)
            time.sleep(600)  # the test kills us here

    make_trainer(args.data, args.checkpoints).fit(pause)


if __name__ == "__main__":
    main()
