"""The protocol's knobs, as a value: part of every head's identity (``steps.train.head_id``),
so known without importing the heads themselves (torch, scikit-learn)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np

from transfer_pipe.config import TrainConfig, setting, settings_from

# Below this many validation rows in some class, one validation split cannot rank
# hyperparameters: 6 rows (60 images, 3 classes, a 10 % split) tie every C. Twenty rows
# tell accuracies 5 points apart (one row each), and a class needs that many for its
# recall to say anything; below it, cross-validation on the labelled rows decides.
FEW_VALIDATION_ROWS_PER_CLASS = 20
# Folds of that cross-validation: few enough that each holds out a fifth of a small class,
# enough that every labelled row is scored once (fewer when a class has fewer rows).
CV_FOLDS = 5
# What a head's identity records of how hyperparameters are chosen (``steps.train.head_id``):
# bumped whenever that rule changes, so that a store's heads chosen by an older rule are
# refitted rather than reused. 2: ties on accuracy go to the lowest log loss, and
# cross-validation decides when the validation rows are few.
SELECTION_RULE = 2


@dataclass(frozen=True)
class ProtocolOptions:
    """Knobs of the protocol: a heads run's options (``TrainConfig``, their one home, whose
    defaults are the standard linear-evaluation ones; ``from_config``) and the protocol's
    own constants."""

    c_min: float = setting(TrainConfig, "c_min")
    c_max: float = setting(TrainConfig, "c_max")
    c_values: int = setting(TrainConfig, "c_values")
    max_iter: int = setting(TrainConfig, "max_iter")  # per grid value (warm-started: they add up)
    # The walk stops once this many values in a row scored below the best validation
    # accuracy while the validation loss rose at each (0: walk the whole grid).
    c_patience: int = setting(TrainConfig, "c_patience")
    refit_max_iter: int = 1000
    device: str = setting(TrainConfig, "device")
    seed: int = setting(TrainConfig, "split_seed")
    bootstrap: int = setting(TrainConfig, "bootstrap")
    # Cross-validate (``cv_folds`` folds) when some class has fewer validation rows.
    few_val_rows_per_class: int = FEW_VALIDATION_ROWS_PER_CLASS
    cv_folds: int = CV_FOLDS

    @classmethod
    def from_config(cls, config: TrainConfig) -> Self:
        """The protocol a heads run fits with: its options, its split seed as the seed."""
        return settings_from(cls, config)

    def c_grid(self) -> tuple[float, ...]:
        return tuple(
            float(c) for c in np.logspace(np.log10(self.c_min), np.log10(self.c_max), self.c_values)
        )
