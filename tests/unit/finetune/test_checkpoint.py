"""Checkpoints in the store, read without unpickling: a tampered checkpoint is refused with
an error naming the file and the fix, and never runs code; a run killed on one machine
resumes on another from the store's checkpoints to the uninterrupted result."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load, save

from tests.support.training import (
    OPTIONS,
    REPO,
    assert_same_checkpoints,
    kill_after_steps,
    make_data,
    make_trainer,
    read_checkpoint,
)
from transfer_pipe.finetune.checkpoint import CheckpointRefused, decode, encode

ONE_EPOCH = replace(OPTIONS, epochs=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("checkpoint-images")
    make_data(root)
    return root


class _RunsCode:
    """Unpickling this creates ``marker``: what a payload planted in a bucket would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _plant_pickle(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "state": _RunsCode(marker)}, path)


def test_a_pickle_where_the_checkpoint_is_is_refused_and_runs_no_code(
    data: Path, tmp_path: Path
) -> None:
    """Mutation seen to fail it: ``CheckpointFolder.load`` reading the file with
    ``torch.load(io.BytesIO(data), weights_only=False)`` (the old loader): the marker is
    created."""
    folder, marker = tmp_path / "ckpt", tmp_path / "code-ran"
    _plant_pickle(folder / "last.safetensors", marker)
    trainer = make_trainer(data, folder, ONE_EPOCH)
    with pytest.raises(CheckpointRefused) as refused:
        trainer.fit()
    assert not marker.exists(), "loading the checkpoint ran the planted code"
    message = str(refused.value)
    assert str(folder / "last.safetensors") in message  # which file
    assert "not a safetensors file" in message  # what is wrong with it
    assert f"delete the checkpoints folder {folder}" in message  # what to do


def test_an_old_pickle_checkpoint_is_never_loaded_the_run_starts_over(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``last.pt`` of an older version (or planted under that name) is not read: the run
    trains from the start and says why. Mutation seen to fail it: ``resume`` falling back
    to ``torch.load(last.pt, weights_only=False)`` when no ``last`` checkpoint exists."""
    folder, marker = tmp_path / "ckpt", tmp_path / "code-ran"
    _plant_pickle(folder / "last.pt", marker)
    with caplog.at_level(logging.WARNING, logger="transfer_pipe.finetune.loop"):
        state = make_trainer(data, folder, ONE_EPOCH).fit()
    assert state.epoch == 1 and [row["epoch"] for row in state.history] == [1]
    assert not marker.exists()
    assert "not loading last.pt" in caplog.text and "starts over" in caplog.text


def _rewrite_json(path: Path, change: Any) -> None:
    """Rewrite the JSON part of the checkpoint at ``path`` with ``change(info)``, keeping
    its tensors: a tampered file that is still valid safetensors."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    info = json.loads(json.loads(raw[8 : 8 + size])["__metadata__"]["transfer_pipe"])
    change(info)
    path.write_bytes(save(load(raw), metadata={"transfer_pipe": json.dumps(info)}))


def _name_a_missing_tensor(info: dict[str, Any]) -> None:
    info["payload"]["rng"]["torch"] = {"__tensor__": "../../../etc/passwd"}


def _other_format(info: dict[str, Any]) -> None:
    info["format"] = "pickle"


def _smuggle_an_object(info: dict[str, Any]) -> None:
    info["payload"]["state"]["py/reduce"] = [{"py/function": "os.system"}, ["touch x"]]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_name_a_missing_tensor, "names a tensor '../../../etc/passwd' that it does not hold"),
        (_other_format, "its format is 'pickle'"),
        (_smuggle_an_object, "does not fit this run"),
    ],
)
def test_a_checkpoint_with_tampered_json_is_refused_naming_the_file(
    data: Path, tmp_path: Path, change: Any, reason: str
) -> None:
    """Mutations seen to fail it: ``join_tensors`` returning None for a tensor it lacks
    (the first case then fails later, in torch, without naming the file); ``_header_info``
    not checking the format (the second case loads)."""
    folder = tmp_path / "ckpt"
    make_trainer(data, folder, ONE_EPOCH).fit()
    _rewrite_json(folder / "last.safetensors", change)
    with pytest.raises(CheckpointRefused) as refused:
        make_trainer(data, folder, ONE_EPOCH).fit()
    assert reason in str(refused.value)
    assert str(folder / "last.safetensors") in str(refused.value)


def test_a_payload_round_trips_with_its_types() -> None:
    payload = {
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [
            {"betas": (0.9, 0.999), "params": [0], "foreach": None}]},
        "python": (3, (1, 2, 3), None),
    }  # fmt: skip
    back = decode(encode(payload))
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)  # a tuple again
    assert list(back["optimizer"]["state"]) == [0]  # an int key again
    assert torch.equal(back["optimizer"]["state"][0]["step"], torch.tensor(3.0))
    assert back["python"] == (3, (1, 2, 3), None)
    with pytest.raises(TypeError, match="cannot checkpoint a object"):
        encode({"x": object()})


def _train_to_the_end(data: Path, checkpoints: str, home: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home)}
    subprocess.run(
        [sys.executable, "-m", "tests.support.training", str(data), checkpoints],
        cwd=REPO, env=env, check=True, capture_output=True, timeout=600,
    )  # fmt: skip


@pytest.mark.kill  # an S3 server on loopback, three training runs, one killed
def test_a_run_killed_on_one_machine_resumes_on_another_from_the_store(
    data: Path, tmp_path: Path, s3_bucket: str
) -> None:
    """Mutation seen to fail it: ``CheckpointFolder.save`` writing to a folder under
    ``Path.home()`` instead of its URL (the second machine starts over: other timings,
    and the store holds no checkpoint)."""
    checkpoints = f"s3://{s3_bucket}/store/finetune/run/checkpoints"
    kill_after_steps(data, checkpoints, steps=5, home=tmp_path / "machine-a")  # mid-epoch 2
    at_kill = read_checkpoint(checkpoints)["state"]
    assert at_kill["epoch"] == 1 and not at_kill["finished"]

    _train_to_the_end(data, checkpoints, tmp_path / "machine-b")
    reference = tmp_path / "uninterrupted"
    make_trainer(data, reference).fit()
    assert_same_checkpoints(checkpoints, reference)
    final = read_checkpoint(checkpoints)["state"]
    assert final["epoch"] == OPTIONS.epochs
    # Resumed, not restarted: epoch 1 keeps the timing measured on the first machine.
    assert final["history"][0] == at_kill["history"][0]
    assert not list((tmp_path / "machine-a").rglob("*.safetensors"))
    assert not list((tmp_path / "machine-b").rglob("*.safetensors"))
