"""The batch kernel: images in, features per layer and a failure per bad image out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.support.images import write_image
from transfer_pipe.backbones import get_backbone
from transfer_pipe.backbones.taps import LayerTap
from transfer_pipe.data.decode import decode_image
from transfer_pipe.features.batch import embed_images
from transfer_pipe.features.tasks import EmbedderConfig

LAYERS = ("stages.0", "penultimate")


def _config(backbone: str = "tiny_test") -> EmbedderConfig:
    preprocessing = get_backbone("tiny_test").preprocessing
    return EmbedderConfig(backbone, None, LAYERS, preprocessing, device="cpu", threads=1)


def test_features_match_a_direct_forward_pass_across_batches(tmp_path: Path) -> None:
    good = [write_image(tmp_path / f"{i}.png", seed=i).read_bytes() for i in range(5)]
    items = [good[0], b"broken", good[1], good[2], b"", good[3], good[4]]
    # A batch size that splits the items unevenly, so positions must be carried across.
    result = embed_images(items, decode_image, _config(), batch_size=3)

    # Mutation: dropping the batch's start offset from the positions breaks both asserts.
    assert result.ok == (0, 2, 3, 5, 6)
    assert {i: r.split(":")[0] for i, r in result.failures.items()} == {
        1: "not-an-image",
        4: "empty",
    }
    spec = get_backbone("tiny_test")
    tap = LayerTap(spec.build(), list(LAYERS))
    batch = torch.stack([spec.preprocessing(decode_image(b)) for b in good])
    with torch.inference_mode():
        direct = tap(batch)
    for layer in LAYERS:
        # Mutation: keeping only the last batch's features changes the shape here.
        assert result.features[layer].shape == (5, direct[layer].shape[1])
        np.testing.assert_allclose(result.features[layer], direct[layer].numpy(), atol=1e-6)


def test_no_model_is_loaded_when_no_image_decodes() -> None:
    # An id that cannot load: running the forward pass would raise TransferPipeError.
    # Mutation: calling get_embedder before checking that the batch has inputs fails this.
    result = embed_images([b"", b"nope"], decode_image, _config("no-such-backbone"), 4)
    assert (result.ok, result.features, sorted(result.failures)) == ((), {}, [0, 1])


def test_placed_renames_positions_to_the_callers_rows(tmp_path: Path) -> None:
    image = write_image(tmp_path / "a.png", seed=1).read_bytes()
    result = embed_images([b"", image], decode_image, _config(), 2).placed([10, 42])
    # Mutation: mapping failures with ``ok``'s rows (or not at all) fails this.
    assert result.ok == (42,) and list(result.failures) == [10]
    assert result.features["penultimate"].shape[0] == 1


def test_an_image_gets_the_same_bits_whatever_shares_its_batch(tmp_path: Path) -> None:
    """Issue 21: a night's few new images must embed to the bits a clean embed of the whole
    folder gives them, where they sit in full batches among other images. EfficientNet-Lite0
    on one CPU thread gives an image in a batch of 8 other bits than in a batch of 64."""
    # Mutation seen failing: embed_images without padded() (max difference 6.8e-06).
    from transfer_pipe.config import DEFAULT_BACKBONE as LITE0

    images = [write_image(tmp_path / f"{i}.png", seed=i).read_bytes() for i in range(64)]
    spec = get_backbone(LITE0)
    config = EmbedderConfig(
        LITE0, None, ("penultimate",), spec.preprocessing.replace(image_size=64), "cpu", threads=1
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = embed_images(images[:8], decode_image, config, batch_size=64).features
        among = embed_images(images, decode_image, config, batch_size=64).features
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(alone["penultimate"], among["penultimate"][:8])
