"""Training images: real files through the robust decoder, augmentation drawn from
(seed, epoch, row), bad files skipped, and the same batches from threads or processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.images import write_image
from transfer_pipe.backbones import Preprocessing
from transfer_pipe.data.sources import to_url
from transfer_pipe.finetune.data import (
    ImageRows,
    augment,
    choose_augmentation,
    loader_workers,
    make_loader,
)

PREP = Preprocessing(32, (0.5,) * 3, (0.25,) * 3)


@pytest.fixture
def files(tmp_path: Path) -> list[str]:
    """Ten real PNG and JPEG files, the fourth of them corrupt."""
    paths = [
        write_image(tmp_path / f"img{i}.{'jpg' if i % 2 else 'png'}", i, "jpeg" if i % 2 else "png")
        for i in range(10)
    ]
    paths[3].write_bytes(b"not an image at all")
    return [to_url(str(p)) for p in paths]


def test_a_batch_leaves_out_bad_files_and_says_why(files: list[str]) -> None:
    rows = ImageRows(files, np.arange(10) % 3, PREP, "affine", seed=0, threads=2)
    batch = rows.__getitems__([0, 3, 5])
    assert batch.rows == [0, 5]
    assert batch.images.shape == (2, 3, 32, 32) and batch.targets.tolist() == [0, 2]
    assert [(row, reason.split(":")[0]) for row, reason in batch.failed] == [(3, "not-an-image")]


def test_augmentation_is_a_function_of_seed_epoch_and_row(files: list[str]) -> None:
    rows = ImageRows(files, np.zeros(10), PREP, "crop-flip", seed=0)
    first = rows.load(0)
    again = rows.load(0)
    rows.set_epoch(1)
    other_epoch = rows.load(0)
    assert isinstance(first, torch.Tensor) and isinstance(other_epoch, torch.Tensor)
    assert torch.equal(first, again) and not torch.equal(first, other_epoch)
    plain = ImageRows(files, np.zeros(10), PREP, "none").load(0)
    assert isinstance(plain, torch.Tensor) and plain.shape == first.shape


@pytest.mark.parametrize("kind", ["affine", "crop-flip"])
def test_augmentations_keep_the_image_recognizable(kind: str) -> None:
    pixels = np.zeros((28, 28, 3), np.uint8)
    pixels[6:22, 10:18] = 200  # a bright bar on black, like a Fashion-MNIST item
    image = Image.fromarray(pixels)
    for seed in range(5):
        out = np.asarray(augment(image, kind, np.random.default_rng(seed)))
        assert out.dtype == np.uint8 and out.ndim == 3
        if kind == "affine":  # same size, background stays black, the bar mostly stays
            assert out.shape == pixels.shape
            assert (
                out[0, 0].tolist() == [0, 0, 0] and (out > 100).sum() > 0.6 * (pixels > 100).sum()
            )


def test_auto_picks_affine_for_small_greyscale_and_crops_for_photos(tmp_path: Path) -> None:
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((28, 28), 90, np.uint8)).save(grey)
    photo = write_image(tmp_path / "photo.png", 1, "png")  # colored
    assert choose_augmentation([to_url(str(grey))], "auto") == "affine"
    assert choose_augmentation([to_url(str(grey)), to_url(str(photo))], "auto") == "crop-flip"
    assert choose_augmentation([to_url(str(photo))], "none") == "none"


def test_worker_processes_give_the_same_batches_as_threads(files: list[str]) -> None:
    def epoch_batches(workers: int) -> list[tuple[list[int], torch.Tensor]]:
        rows = ImageRows(files, np.arange(10) % 3, PREP, "affine", seed=3, threads=2)
        rows.set_epoch(2)
        loader = make_loader(rows, batch_size=4, shuffle=True, workers=workers)
        return [(b.rows, b.images) for b in loader]

    threaded, processes = epoch_batches(0), epoch_batches(2)
    assert [r for r, _ in threaded] == [r for r, _ in processes]
    assert sorted(r for rows, _ in threaded for r in rows) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    for (_, a), (_, b) in zip(threaded, processes, strict=True):
        assert torch.equal(a, b)


def test_no_loader_processes_inside_a_daemonic_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    assert loader_workers(3) == 3
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    assert loader_workers(3) == 0 and loader_workers(None) == 0
