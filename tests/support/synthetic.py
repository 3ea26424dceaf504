"""Synthetic task data for head tests: Gaussian blobs with string labels."""

from __future__ import annotations

import numpy as np

from transfer_pipe.heads.tasks import SplitRows, Task, TaskData

CLASSES = ("ant", "bee", "cat")


def blobs(
    rng: np.random.Generator,
    centers: np.ndarray,
    per_class: int | list[int],
    classes: tuple[str, ...] = CLASSES,
    prefix: str = "s",
) -> SplitRows:
    """Gaussian blobs (unit spread) around ``centers``, one per class, with string labels."""
    counts = [per_class] * len(classes) if isinstance(per_class, int) else per_class
    features = np.concatenate(
        [c + rng.normal(size=(k, centers.shape[1])) for c, k in zip(centers, counts, strict=True)]
    ).astype(np.float32)
    labels = np.repeat(np.array(classes), counts)
    ids = np.array([f"{prefix}{i}" for i in range(len(labels))])
    order = rng.permutation(len(labels))
    return SplitRows(features[order], labels[order], ids[order])


def task_data(
    train: SplitRows, val: SplitRows, test: SplitRows, classes: tuple[str, ...] = CLASSES
) -> TaskData:
    return TaskData(
        task=Task(),
        feature_set="synthetic",
        layer="penultimate",
        classes=classes,
        train=train,
        val=val,
        test=test,
        split_origin="test fixture",
        dropped=0,
    )
