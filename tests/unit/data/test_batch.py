"""Decode -> preprocess for a batch: good images become inputs in order, bad ones a reason."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.images import truncated_jpeg, write_image
from transfer_pipe.backbones import Preprocessing
from transfer_pipe.data.batch import prepare_batch
from transfer_pipe.data.decode import decode_image
from transfer_pipe.data.read import read_bytes, read_image

PREP = Preprocessing(16, (0.5,) * 3, (0.25,) * 3)


@pytest.fixture
def images(tmp_path: Path) -> list[bytes]:
    """Five files' bytes: good, empty, good, truncated, not an image."""
    good = [write_image(tmp_path / f"{i}.png", seed=i).read_bytes() for i in range(2)]
    return [good[0], b"", good[1], truncated_jpeg(3), b"plain text"]


def test_good_images_are_inputs_in_order_and_bad_ones_have_reasons(images: list[bytes]) -> None:
    inputs = prepare_batch(images, decode_image, PREP)
    assert inputs.ok == (0, 2)
    # Mutation: recording a failure under its position in the good list (not in the
    # batch) moves these keys.
    assert {i: r.split(":")[0] for i, r in inputs.failures.items()} == {
        1: "empty",
        3: "truncated",
        4: "not-an-image",
    }
    assert inputs.images.shape == (2, 3, 16, 16) and inputs.images.dtype == torch.float32
    # Mutation: stacking the tensors in another order (or dropping preprocessing) fails.
    for row, position in enumerate(inputs.ok):
        expected = PREP(decode_image(images[position]))
        torch.testing.assert_close(inputs.images[row], expected)


def test_a_batch_of_only_bad_images_is_empty_not_an_error() -> None:
    inputs = prepare_batch([b"", b"x"], decode_image, PREP)
    # Mutation: torch.stack([]) instead of the empty tensor raises here.
    assert inputs.images.shape == (0, 3, 16, 16)
    assert inputs.ok == () and sorted(inputs.failures) == [0, 1]


def test_threads_give_the_same_batch_as_one_thread(images: list[bytes]) -> None:
    one = prepare_batch(images, decode_image, PREP)
    with ThreadPoolExecutor(3) as pool:
        threaded = prepare_batch(images, decode_image, PREP, pool.map)
    assert (threaded.ok, threaded.failures) == (one.ok, one.failures)
    torch.testing.assert_close(threaded.images, one.images)


def test_read_image_decodes_the_bytes_read_bytes_fetches(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", seed=7)
    uri = path.as_uri()
    assert read_bytes(uri) == path.read_bytes()
    np.testing.assert_array_equal(
        np.asarray(read_image(uri)), np.asarray(decode_image(path.read_bytes()))
    )
    inputs = prepare_batch([uri, (tmp_path / "missing.png").as_uri()], read_image, PREP)
    # Mutation: letting read_bytes' OSError escape (no DecodeError) fails the batch here.
    assert inputs.ok == (0,) and inputs.failures[1].startswith("unreadable: FileNotFoundError")
