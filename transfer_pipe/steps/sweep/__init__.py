"""The transferability sweep: where to cut the backbone, and whether to fine-tune, measured
on the user's own data.

    plan = prepare_sweep(config)                       # the two embed runs, every stage
    keys = {init: embed(plan.embeds[init]).feature_set ...}
    rows = LayerRows()                                 # a layer's rows, read once
    screens = [screen_layer(run, rows) for run in screen_runs(plan, keys)]    # every layer
    depth = [probe_layer(run, fit_probe(run, rows)) for run in pretrained_runs(plan, keys,
                                                                              screens)]
    depth += [... for run in baseline_runs(plan, keys, screens, depth)]
    curve = [share_point(run, fit_probe(run, rows)) for run in curve_runs(plan, keys, depth)]
    summary = finalize_sweep(plan, keys, screens, depth, curve, ...)  # advice, pictures, record

The screens (k-NN accuracy and LogME, seconds per layer) rank every layer; the full probe
protocol, which costs minutes on a wide layer, runs only where it decides: on the best
pretrained layers by the screen, and for the random baseline on its best layer and at the
pretrained peak (the transfer gain is measured there). ``--probe-all`` probes every layer.

Everything is cached by the store: the embeddings by feature-set key (a dataset embedded at
the penultimate layer costs one forward pass more to add the stages), the probes by head
id; a second sweep embeds nothing and fits nothing.

One module per phase: ``plan`` (the embed runs, checked; a probe's run), ``screens``
(every layer's screens, cached), ``rows`` (a layer's rows, read once for its screens and
probes), ``probes`` (the probes the screens decide, the depth and learning curves'
points) and ``finalize`` (the advice, its pictures, report and record). Here: the
stopwatch and the whole sweep as one call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

from transfer_pipe.config import SweepConfig
from transfer_pipe.curves import LayerScore
from transfer_pipe.steps.embed import embed
from transfer_pipe.steps.results import TrainSummary
from transfer_pipe.steps.sweep.finalize import RECORD, SweepSummary, finalize_sweep, sweep_report
from transfer_pipe.steps.sweep.plan import (
    INITS,
    KNN_ROWS,
    PROBE,
    SCREENS_DIR,
    SWEEP_LAYERS,
    Init,
    ProbeRun,
    SweepPlan,
    prepare_sweep,
)
from transfer_pipe.steps.sweep.probes import (
    baseline_runs,
    best_layer,
    curve_runs,
    fit_probe,
    pretrained_runs,
    probe_layer,
    share_point,
)
from transfer_pipe.steps.sweep.rows import LayerRows
from transfer_pipe.steps.sweep.screens import screen_layer, screen_runs


class Stopwatch:
    """Wall seconds per named phase; a phase timed twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[name] = round(self.seconds.get(name, 0.0) + elapsed, 3)


def probe_phase(curve: Literal["screen", "depth", "curve"], run: ProbeRun) -> str:
    """The stopwatch's name of one run: ``screen <init> <layer>`` for a layer's screens,
    ``depth <init> <layer>`` on the depth curve, ``curve <init> <layer> <fraction>`` on the
    learning curve."""
    share = f" {run.fraction:g}" if curve == "curve" else ""
    return f"{curve} {run.init} {run.layer}{share}"


def sweep(config: SweepConfig) -> SweepSummary:
    """The whole sweep without an orchestrator (notebooks, tests)."""
    clock, rows = Stopwatch(), LayerRows()
    with clock.phase("prepare"):
        plan = prepare_sweep(config)
    embedded, keys = 0, {}
    for init in INITS:
        with clock.phase(f"embed {init}"):
            done = embed(plan.embeds[init])
        keys[init], embedded = done.feature_set, embedded + done.embedded
    screens = []
    for run in screen_runs(plan, keys):
        with clock.phase(f"screen {run.init}"), clock.phase(probe_phase("screen", run)):
            screens.append(screen_layer(run, rows))
    summaries: list[TrainSummary] = []
    depth: list[LayerScore] = []

    def probe(runs: list[ProbeRun]) -> None:
        for run in runs:
            with clock.phase(f"depth {run.init}"), clock.phase(probe_phase("depth", run)):
                summaries.append(fit_probe(run, rows))
                depth.append(probe_layer(run, summaries[-1]))

    probe(pretrained_runs(plan, keys, screens))
    probe(baseline_runs(plan, keys, screens, depth))
    curve = []
    for run in curve_runs(plan, keys, depth):
        with clock.phase(f"curve {run.init}"), clock.phase(probe_phase("curve", run)):
            summaries.append(fit_probe(run, rows))
            curve.append(share_point(run, summaries[-1]))
    return finalize_sweep(plan, keys, screens, depth, curve, summaries, embedded, clock.seconds)


__all__: Sequence[str] = (
    "INITS",
    "KNN_ROWS",
    "PROBE",
    "RECORD",
    "SCREENS_DIR",
    "SWEEP_LAYERS",
    "Init",
    "LayerRows",
    "ProbeRun",
    "Stopwatch",
    "SweepPlan",
    "SweepSummary",
    "baseline_runs",
    "best_layer",
    "curve_runs",
    "finalize_sweep",
    "fit_probe",
    "prepare_sweep",
    "pretrained_runs",
    "probe_layer",
    "probe_phase",
    "screen_layer",
    "screen_runs",
    "share_point",
    "sweep",
    "sweep_report",
)
