"""The training loop: it learns, it skips bad images, and a run killed midway resumes to
exactly the weights of an uninterrupted run."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.training import (
    OPTIONS,
    assert_same_checkpoints,
    kill_after_steps,
    make_data,
    make_trainer,
    read_checkpoint,
    same_tensors,
)
from transfer_pipe.finetune import loop
from transfer_pipe.finetune.loop import BEST, LAST, Trainer, lr_factor


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finetune-images")
    make_data(root)
    return root


def test_training_lowers_the_loss_and_keeps_the_best_epoch(data: Path, tmp_path: Path) -> None:
    trainer = make_trainer(data, tmp_path / "ckpt")
    initial = trainer.validate()
    state = trainer.fit()
    assert state.epoch == 4 and state.finished == "epochs" and len(state.history) == 4
    losses = [row["train_loss"] for row in state.history]
    assert losses[-1] < losses[0]
    assert trainer.validate()["val_loss"] < initial["val_loss"]
    assert state.best_accuracy == max(row["val_accuracy"] for row in state.history)
    assert trainer.checkpoints.exists(LAST) and trainer.checkpoints.exists(BEST)
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["best.safetensors", "last.safetensors"]


@pytest.fixture(scope="module")
def uninterrupted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    """The reference: the job trained start to end in one go."""
    trainer = make_trainer(data, tmp_path_factory.mktemp("uninterrupted"))
    trainer.fit()
    return trainer


@pytest.mark.kill  # three training subprocesses, each killed
@pytest.mark.parametrize("steps", [2, 5, 12])
def test_a_run_killed_after_any_optimizer_step_resumes_to_the_uninterrupted_run(
    data: Path, uninterrupted: Trainer, tmp_path: Path, steps: int
) -> None:
    """Killed in epoch 1 (2 steps), mid-epoch 2 (5), or after the last step before the
    last checkpoint (12 of 4 x 3): the resumed run ends where the uninterrupted one does.
    Mutations seen to fail it: ``resume`` not loading the optimizer's state (moments
    restart at zero: 5 and 12 fail), nor the scheduler's (the warmup restarts: 5 and 12),
    nor restoring the RNG states (other dropout masks: all three)."""
    reference = uninterrupted.checkpoints
    # The best epoch is the last: the final weights are ones the resumed run wrote.
    assert uninterrupted.state.best_epoch == OPTIONS.epochs == 4
    assert uninterrupted.steps_per_epoch == 3
    killed = tmp_path / "killed"
    kill_after_steps(data, killed, steps)
    finished_epochs = (steps - 1) // 3  # the epoch under way left no checkpoint
    assert read_checkpoint(killed)["state"]["epoch"] == finished_epochs

    resumed = make_trainer(data, killed)
    state = resumed.fit()
    assert [row["epoch"] for row in state.history] == [1, 2, 3, 4]
    assert_same_checkpoints(killed, reference)
    same_tensors(resumed.model.state_dict(), uninterrupted.model.state_dict())


def test_a_finished_run_is_not_trained_again(data: Path, tmp_path: Path) -> None:
    first = make_trainer(data, tmp_path / "ckpt")
    first.fit()
    again = make_trainer(data, tmp_path / "ckpt")
    state = again.fit(on_epoch=lambda record: pytest.fail("trained again"))
    assert state.epoch == 4


def test_bad_images_are_skipped_and_recorded(data: Path, tmp_path: Path) -> None:
    trainer = make_trainer(data, tmp_path / "ckpt", replace(OPTIONS, epochs=1))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    trainer.train_rows.uris[5] = bad.as_uri()
    state = trainer.fit()
    assert list(state.failed) == [5]
    assert state.failed[5].split(":")[0] in ("not-an-image", "truncated")
    assert state.history[0]["train_loss"] > 0


def test_early_stopping_and_time_budget_end_a_run(data: Path, tmp_path: Path) -> None:
    budget = make_trainer(data, tmp_path / "a", replace(OPTIONS, time_budget_s=1e-6))
    assert budget.fit().finished == "time budget"
    still = make_trainer(data, tmp_path / "b", replace(OPTIONS, lr=0.0, head_lr=0.0, patience=1))
    state = still.fit()  # nothing learns: validation never improves after epoch 1
    assert state.finished == "early stopping" and state.epoch == 2


def test_a_time_budget_shortens_the_schedule_so_it_still_ends(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop, "epochs_within", lambda budget, first, epochs: 2)
    trainer = make_trainer(data, tmp_path / "ckpt", replace(OPTIONS, time_budget_s=1e9))
    state = trainer.fit()
    assert (state.epoch, state.planned_epochs, state.finished) == (2, 2, "time budget")
    assert state.history[0]["lr"] > 0 and state.history[-1]["lr"] == pytest.approx(0, abs=1e-12)
    unbudgeted = make_trainer(data, tmp_path / "free", replace(OPTIONS, epochs=2))
    assert unbudgeted.fit().history[-1]["lr"] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize(
    ("budget", "first", "expected"), [(100, 30, 3), (100, 200, 1), (1e6, 1, 4), (5, 0, 4)]
)
def test_epochs_within_a_budget(budget: float, first: float, expected: int) -> None:
    assert loop.epochs_within(budget, first, epochs=4) == expected


def test_warmup_then_cosine() -> None:
    factors = [lr_factor(step, warmup=10, total=110) for step in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.5)
    assert factors[110] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.diff(factors[10:]) <= 1e-12)


def test_checkpoints_hold_everything_resume_needs(data: Path, tmp_path: Path) -> None:
    trainer: Trainer = make_trainer(data, tmp_path / "ckpt", replace(OPTIONS, epochs=1))
    trainer.fit()
    payload = read_checkpoint(tmp_path / "ckpt")
    assert {"model", "optimizer", "scheduler", "scaler", "state", "rng", "options"} <= set(payload)
    assert {"torch", "numpy", "python"} <= set(payload["rng"])


def test_gradient_accumulation_matches_one_large_batch(data: Path, tmp_path: Path) -> None:
    large = make_trainer(data, tmp_path / "large", replace(OPTIONS, epochs=1, batch_size=8))
    split = make_trainer(
        data, tmp_path / "split", replace(OPTIONS, epochs=1, batch_size=4, accumulate=2)
    )
    assert large.steps_per_epoch == split.steps_per_epoch == 3
    large.fit()
    split.fit()
    for name, tensor in large.model.state_dict().items():
        torch.testing.assert_close(split.model.state_dict()[name], tensor, rtol=1e-4, atol=1e-5)
    untrained = make_trainer(data, tmp_path / "none", replace(OPTIONS, epochs=1))
    moved = (large.model.head.weight - untrained.model.head.weight).abs().max()
    assert moved > 1e-3  # the comparison above is between weights that did move
