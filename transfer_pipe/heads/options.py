"""The protocol's knobs, as a value: part of every head's identity (``steps.train.head_id``),
so known without importing the heads themselves (torch, scikit-learn)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ProtocolOptions:
    """Knobs of the protocol; the defaults are the standard linear-evaluation ones."""

    c_min: float = 1e-6
    c_max: float = 1e5
    c_values: int = 45
    max_iter: int = 100  # L-BFGS iterations per grid value (warm-started: they add up)
    # The walk stops once this many values in a row scored below the best validation
    # accuracy while the validation loss rose at each (0: walk the whole grid).
    c_patience: int = 4
    refit_max_iter: int = 1000
    device: str = "auto"
    seed: int = 0
    bootstrap: int = 1000

    def c_grid(self) -> tuple[float, ...]:
        return tuple(
            float(c) for c in np.logspace(np.log10(self.c_min), np.log10(self.c_max), self.c_values)
        )
