"""The screens of every layer (k-NN accuracy and LogME, seconds per layer): the runs they
score and one layer's screens, kept in the store's cache.
"""

from __future__ import annotations

import time

from transfer_pipe.curves import LayerScreen
from transfer_pipe.heads.screens import knn_accuracy, logme
from transfer_pipe.heads.tasks import TaskData
from transfer_pipe.steps.sweep.plan import (
    INITS,
    KNN_ROWS,
    SCREENS_DIR,
    Init,
    ProbeRun,
    SweepPlan,
    probe_config,
)
from transfer_pipe.steps.sweep.rows import LayerRows
from transfer_pipe.steps.train import prepare_training
from transfer_pipe.store.cards import cached_record


def screen_runs(plan: SweepPlan, keys: dict[Init, str]) -> list[ProbeRun]:
    """Every layer of both initialisations, all training labels: what the screens score."""
    return [
        ProbeRun(init, layer, depth, probe_config(plan, keys[init], layer))
        for init in INITS
        for depth, layer in enumerate(plan.layers)
    ]


def screen_layer(run: ProbeRun, rows: LayerRows) -> LayerScreen:
    """The screens of one layer from its cached training and validation rows (never the
    test rows): the k-NN accuracy of ``KNN_ROWS`` training rows on the validation rows,
    and the LogME evidence of every training row. Kept in the store's cache: a second
    sweep reads them. The rows are read once for the layer's screens and probes
    (``rows``: the sweep's)."""
    config = run.config
    plan = prepare_training(config, config.feature_set or "")
    identity = [plan.feature_set, plan.layer, plan.task.digest, plan.splits.__dict__, KNN_ROWS]
    return cached_record(
        config.store,
        SCREENS_DIR,
        identity,
        lambda: _screen(run, rows.of(plan)),
        LayerScreen.from_dict,
        config.storage_options,
    )


def _screen(run: ProbeRun, data: TaskData) -> LayerScreen:
    started = time.perf_counter()
    train = data.train.sample(KNN_ROWS)
    knn = knn_accuracy(train.features, train.labels, data.val.features, data.val.labels)
    evidence = logme(data.train.features, data.train.labels)
    return LayerScreen(
        layer=run.layer,
        depth=run.depth,
        dim=int(data.train.features.shape[1]),
        init=run.init,
        knn=float(knn),
        logme=evidence,
        knn_rows=len(train),
        seconds=round(time.perf_counter() - started, 3),
    )
