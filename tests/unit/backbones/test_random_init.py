"""``random/<id>``: every backbone's random-weights baseline, the same network with seeded
random weights, so transferred features can be compared with untrained ones."""

from __future__ import annotations

import pytest
import torch

from transfer_pipe.backbones import (
    EFFICIENTNET_LITE0,
    TINY_TEST,
    get_backbone,
    list_backbones,
    random_variant,
)
from transfer_pipe.errors import TransferPipeError


def test_the_baseline_is_the_same_network_with_other_weights() -> None:
    pretrained = get_backbone(EFFICIENTNET_LITE0)
    baseline = get_backbone(random_variant(EFFICIENTNET_LITE0))
    assert baseline.id == f"random/{EFFICIENTNET_LITE0}"
    assert baseline.preprocessing == pretrained.preprocessing
    assert baseline.stage_layers() == pretrained.stage_layers()
    assert baseline.metadata["imagenet_top1"] is None
    trained, untrained = pretrained.build().state_dict(), baseline.build().state_dict()
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in untrained.items()}
    # Mutation seen to fail here: giving the baseline its base's weights source.
    first_conv = next(k for k in trained if k.endswith("weight"))
    assert not torch.equal(trained[first_conv], untrained[first_conv])


def test_the_baseline_is_seeded_and_has_its_own_digest() -> None:
    baseline = get_backbone(random_variant(EFFICIENTNET_LITE0))
    first, second = baseline.build().state_dict(), baseline.build().state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # Its own digest, so its own feature-set keys: features of the two never mix.
    assert baseline.weights_digest() != get_backbone(EFFICIENTNET_LITE0).weights_digest()
    assert baseline.weights_digest().startswith("random-init:seed=0:")


def test_every_registered_id_has_a_listed_baseline_and_random_of_random_is_no_id() -> None:
    listed = list_backbones()
    assert f"random/{EFFICIENTNET_LITE0}" in listed and f"random/{TINY_TEST}" in listed
    assert random_variant(f"random/{TINY_TEST}") == f"random/{TINY_TEST}"
    with pytest.raises(TransferPipeError, match="unknown backbone"):
        get_backbone(f"random/random/{TINY_TEST}")
    with pytest.raises(TransferPipeError, match="unknown backbone"):
        get_backbone("random/no-such-net")
