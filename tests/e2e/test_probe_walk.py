"""The probe's C walk stops past the peak and still chooses what the whole walk chooses.

On real features (EfficientNet-Lite0 on Fashion-MNIST images, every stage), the walk that
stops once validation accuracy stayed below its best while the validation loss rose
(``c_patience``) picks the same ``C``, and so scores the same test accuracy, as the walk
over all 45 values, and it skips values on the way.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.images import fashion_mnist_folder
from transfer_pipe.config import EmbedConfig
from transfer_pipe.heads.options import ProtocolOptions
from transfer_pipe.heads.protocol import fit_head
from transfer_pipe.heads.tasks import SplitOptions, Task, load_task
from transfer_pipe.steps.embed import embed
from transfer_pipe.store import open_store

pytestmark = [pytest.mark.real_data]

LAYERS = ("stages.5", "stages.6")


def test_the_walk_stopped_past_the_peak_chooses_the_whole_walks_c(tmp_path: Path) -> None:
    if fashion_mnist_folder() is None:
        pytest.skip("Fashion-MNIST's IDX files are not installed (`make data` installs them)")
    store = str(tmp_path / "store")
    config = EmbedConfig(
        source="fashion-mnist", store=store, image_size=32, layers=("stages",), limit=2000
    )
    key = embed(config).feature_set
    stopped_early = []
    for layer in LAYERS:
        data = load_task(open_store(store), key, Task("source"), layer, SplitOptions())
        options = ProtocolOptions(device="cpu", bootstrap=20, refit_max_iter=200)
        early = fit_head("logreg", data, options)
        whole = fit_head("logreg", data, replace(options, c_patience=0))
        assert len(whole.validation) == 45
        # Mutation: a default patience of 1 chose C=0.01 for 0.1 on stages.6 (seen
        # failing). Patience 2 without the loss condition would stop early there too (read
        # off the whole walk's curve, not run as a mutation); the loss condition alone
        # dropped at patience 4 stays green: on these layers accuracy decides.
        assert early.chosen == whole.chosen, layer
        assert early.metrics.accuracy == whole.metrics.accuracy, layer
        # The walk is a prefix of the whole one: the same points, fewer of them.
        assert early.validation == whole.validation[: len(early.validation)]
        stopped_early.append(len(early.validation) < len(whole.validation))
    # Mutation: c_patience ignored (never stopping) fails here.
    assert any(stopped_early)
