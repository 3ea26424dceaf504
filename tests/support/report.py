"""What the report tests build reports from (real ``evaluate()`` metrics, a fine-tuning
result) and the check of a PNG plot they write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from transfer_pipe.finetune.card import FinetuneResult, ProbeScore, SkippedImage
from transfer_pipe.heads.metrics import evaluate, softmax
from transfer_pipe.scores import Metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["T-shirt/top", "Trouser", "Ankle boot"]


def evaluated(classes: list[str], seed: int) -> Metrics:
    """Real ``evaluate()`` metrics of a noisy but informative classifier."""
    rng = np.random.default_rng(seed)
    y_idx = rng.integers(0, len(classes), size=300)
    scores = rng.normal(size=(300, len(classes))) + 2.0 * np.eye(len(classes))[y_idx]
    return evaluate(np.array(classes)[y_idx], softmax(scores), classes, bootstrap=200)


def assert_png(path: Path, min_side: int = 200) -> tuple[int, int]:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        width, height = image.size
    assert width >= min_side and height >= min_side
    return width, height


HISTORY = [
    {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_accuracy": 0.5 + e / 10,
     "val_accuracy": 0.45 + e / 10}
    for e in (1, 2, 3)
]  # fmt: skip


def finetune_result() -> FinetuneResult:
    return FinetuneResult(
        run_id="source-top-2-abc", head="finetune top-2", task="source", layer="penultimate",
        policy="top-2", lp_ft=True, epochs=3, best_epoch=3, stopped="epochs", history=HISTORY,
        skipped_images=[SkippedImage("train", "train/7", "not-an-image")], device="cpu",
        image_size=64, chosen={"epoch": 3}, metrics=evaluated(CLASSES, seed=4),
        probe=ProbeScore("source-logreg-x", evaluated(CLASSES, seed=7)),  # 0.89 vs 0.8633
        seconds={"train": 12.5}, checkpoint="/tmp/best.pt",
    )  # fmt: skip
