"""One small, fixed fine-tuning job, built the same way in the test process and in a
subprocess that the resume test kills midway.

    python -m tests.support.training DATA CHECKPOINTS [--step-handshake]

With ``--step-handshake`` the job prints ``step`` after every optimizer step and waits
for a line on stdin before going on: the test counts steps from outside and, at a step
of its choosing, answers with SIGKILL instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from transfer_pipe.backbones import get_backbone
from transfer_pipe.data.idx import to_url
from transfer_pipe.finetune.checkpoint import CheckpointFolder
from transfer_pipe.finetune.data import ImageRows
from transfer_pipe.finetune.loop import BEST, LAST, Trainer, TrainOptions
from transfer_pipe.finetune.surgery import build_finetune_model

# On the images of make_data these options raise validation accuracy every epoch
# (about 0.42, 0.67, 0.71, 0.88): the best epoch is the last, so the weights a run ends
# with are written after any kill, and comparing them after a resume can fail.
OPTIONS = TrainOptions(epochs=4, batch_size=8, lr=6e-4, head_lr=6e-3, warmup_epochs=0.5,
                       patience=4, seed=0)  # fmt: skip
CLASSES, PER_CLASS = 3, 8


def make_data(root: Path, per_class: int = PER_CLASS) -> None:
    """Three classes of real image files whose class is their dominant colour channel
    (noise on top), so a few epochs of training measurably improve on the last; PNG and
    JPEG. No bad files: those are another test's."""
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        for i in range(per_class):
            pixels = rng.integers(0, 120, size=(24, 24, 3), dtype=np.uint8)
            pixels[..., c] += 100
            suffix = ".jpg" if i % 4 == 3 else ".png"
            path = root / f"class{c}" / f"img{i:02d}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, quality=95)


def rows(root: Path, augmentation: str = "affine") -> ImageRows:
    files = sorted(root.rglob("*.*"))
    targets = np.asarray([int(f.parent.name[-1]) for f in files])
    spec = get_backbone("tiny_test")
    return ImageRows([to_url(str(f)) for f in files], targets, spec.preprocessing, augmentation)


def make_trainer(root: Path, checkpoints: str | Path, options: TrainOptions = OPTIONS) -> Trainer:
    # The same kernels in every process: bit-identical results. (tests/conftest.py
    # restores the thread count after each test.)
    torch.set_num_threads(1)
    model = build_finetune_model(get_backbone("tiny_test"), CLASSES, "top-2", 32, seed=0)
    # A dropout after the pooling, as real backbones have one before their classifier
    # (EfficientNet-Lite's): its masks come from torch's global RNG, which a resumed run
    # must restore to draw the masks the uninterrupted run drew.
    model.backbone.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Dropout(0.2))
    return Trainer(model, rows(root), rows(root, "none"), options, checkpoints, torch.device("cpu"))


def same_tensors(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two state dicts hold bit-identical tensors under the same names."""
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def read_checkpoint(folder: str | Path | CheckpointFolder, name: str = LAST) -> dict[str, Any]:
    """A checkpoint's payload, as the loop reads it (never unpickled)."""
    if not isinstance(folder, CheckpointFolder):
        folder = CheckpointFolder(str(folder))
    payload = folder.load(name)
    assert payload is not None, f"no checkpoint {folder.file_url(name)}"
    return payload


def assert_same_checkpoints(
    resumed: str | Path | CheckpointFolder, reference: str | Path | CheckpointFolder
) -> None:
    """The last checkpoints agree on weights, optimizer moments, schedule and history."""
    a, b = (read_checkpoint(folder) for folder in (resumed, reference))
    same_tensors(a["model"], b["model"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for param, moments in a["optimizer"]["state"].items():
        same_tensors(moments, b["optimizer"]["state"][param])  # step, exp_avg, exp_avg_sq
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [
        g["lr"] for g in b["optimizer"]["param_groups"]
    ]
    assert a["scheduler"] == b["scheduler"]
    timing = ("seconds", "train_images_per_s")  # all that may differ between two runs
    for run in (a, b):
        run["state"]["history"] = [
            {k: v for k, v in row.items() if k not in timing} for row in run["state"]["history"]
        ]
        run["state"].pop("seconds")
    assert a["state"] == b["state"]
    same_tensors(read_checkpoint(resumed, BEST)["model"], read_checkpoint(reference, BEST)["model"])


REPO = Path(__file__).resolve().parents[2]


def kill_after_steps(
    data: Path, checkpoints: str | Path, steps: int, home: Path | None = None
) -> None:
    """Run this module's job in a subprocess (with its own HOME when given: another
    machine) and SIGKILL it right after its ``steps``-th optimizer step, counted here:
    mid-epoch, between the optimizer and the schedule stepping, with no checkpoint
    written for the epoch under way."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **({"HOME": str(home)} if home else {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.training", str(data), str(checkpoints),
         "--step-handshake"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    try:
        for step in range(1, steps + 1):
            assert process.stdout.readline().strip() == "step", f"no optimizer step {step}"
            if step < steps:
                process.stdin.write("go on\n")
                process.stdin.flush()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def _wait_for_the_test(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    """After each optimizer step (before the schedule steps): report it, then wait."""
    print("step", flush=True)
    if not sys.stdin.readline():
        raise SystemExit("the test went away")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("checkpoints")  # a folder or any fsspec URL
    parser.add_argument("--step-handshake", action="store_true")
    args = parser.parse_args()
    trainer = make_trainer(args.data, args.checkpoints)
    if args.step_handshake:
        trainer.optimizer.register_step_post_hook(_wait_for_the_test)
    trainer.fit()
    print("finished", flush=True)


if __name__ == "__main__":
    main()
