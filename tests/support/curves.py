"""Constructed sweep curves: depth curves on five layers and learning curves, for the
recommendation rule and the sweep report."""

from __future__ import annotations

import math
from collections.abc import Sequence

from transfer_pipe.curves import CurvePoint, Init, LayerScore

LAYERS = ["stages.0", "stages.1", "stages.2", "stages.3", "penultimate"]  # 4 stages + neck
KEY, STORE = "fs-3f2a", "/data/store"


def depth_curve(
    pretrained: Sequence[float],
    random: Sequence[float],
    val: Sequence[float] | None = None,
) -> list[LayerScore]:
    """Scores on ``LAYERS``: test accuracies per init; validation = ``val`` (pretrained)
    or the test accuracy."""
    scores = []
    curves: tuple[tuple[Init, Sequence[float]], ...] = (
        ("pretrained", pretrained),
        ("random", random),
    )
    for init, accuracies in curves:
        for depth, (layer, acc) in enumerate(zip(LAYERS, accuracies, strict=True)):
            val_acc = val[depth] if val is not None and init == "pretrained" else acc
            scores.append(
                LayerScore(
                    layer=layer, depth=depth, dim=16 * 2**depth, init=init,
                    accuracy=acc, accuracy_ci95=(acc - 0.02, acc + 0.02),
                    val_accuracy=val_acc, head_id=f"{init}-{layer}",
                )
            )  # fmt: skip
    return scores


def learning_curve(
    layer: str, means: dict[float, float], init: Init = "pretrained"
) -> list[CurvePoint]:
    return [
        CurvePoint(
            init=init, layer=layer, fraction=f, seeds=3, accuracy_mean=m,
            accuracy_std=0.01, train_rows=5400 if math.isnan(f) else round(5400 * f),
        )
        for f, m in means.items()
    ]  # fmt: skip


FLAT = {0.01: 0.60, 0.05: 0.75, 0.10: 0.80, 0.25: 0.86, 1.0: 0.87}  # +0.01 at the end
RANDOM_ACC = [0.40, 0.45, 0.55, 0.60, 0.612]
