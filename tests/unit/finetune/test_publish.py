"""Publishing from a store that is not on local disk: every run registers its own weights
in the store (the exported backbone is the run's, not one path shared by every run)."""

from __future__ import annotations

import uuid
from pathlib import Path

import torch

from tests.support.training import make_data
from transfer_pipe.backbones import get_backbone
from transfer_pipe.config import EmbedConfig, FinetuneConfig
from transfer_pipe.finetune.loop import BEST
from transfer_pipe.finetune.persist import checkpoint_folder
from transfer_pipe.steps.embed import embed
from transfer_pipe.steps.finetune import (
    ensure_probe,
    prepare_finetune,
    publish_config,
    run_finetune,
)


def test_two_publishes_from_a_non_local_store_each_register_their_own_weights(
    tmp_path: Path,
) -> None:
    make_data(tmp_path / "images")
    store = f"memory://publish-{uuid.uuid4().hex}"
    source = EmbedConfig(source=str(tmp_path / "images"), store=store, backbone="tiny_test",
                         workers=1, device="cpu")  # fmt: skip
    key = embed(source).feature_set
    published = {}
    for seed in (0, 1):  # two runs: the seed is part of the run id
        config = FinetuneConfig(feature_set=key, store=store, policy="top-1", epochs=1,
                                batch_size=8, seed=seed, loader_workers=0,
                                device="cpu", force=True)  # fmt: skip
        # (force: this test is about where the weights go, not about the probe's verdict)
        plan = prepare_finetune(config, key)
        run_finetune(plan, ensure_probe(plan))
        backbone_id = publish_config(plan).backbone
        assert backbone_id == f"finetuned/{plan.run_id}"
        best = checkpoint_folder(store, plan.run_id).load(BEST)
        assert best is not None  # in the store (memory://), not on this machine's disk
        tuned = {
            k.removeprefix("backbone."): v
            for k, v in best["model"].items()
            if k.startswith("backbone.")
        }
        published[backbone_id] = tuned

    first, second = published.values()
    assert any(not torch.equal(v, second[k]) for k, v in first.items())  # two different runs
    # Mutation seen failing (when weights were local files): exporting to one path for
    # every run, not overwritten, made the second run register the first run's weights.
    for backbone_id, tuned in published.items():
        weights = get_backbone(backbone_id).build().state_dict()  # as every embed loads it
        assert all(torch.equal(weights[k], v) for k, v in tuned.items()), backbone_id
