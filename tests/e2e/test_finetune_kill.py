"""SIGKILL `transfer-pipe finetune` at a random moment of its training, run the same
command again as another user of the store (another HOME: another machine), and compare
with an uninterrupted run: the same weights, optimizer state, history and test result,
with the epochs done before the kill not trained again."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from tests.support.training import assert_same_checkpoints, make_data, same_tensors
from transfer_pipe.finetune.checkpoint import CheckpointFolder
from transfer_pipe.finetune.loop import LAST

pytestmark = [pytest.mark.kill]
EPOCHS = 8


def _command(data: Path, store: Path) -> list[str]:
    return [
        sys.executable, "-m", "transfer_pipe.app.cli", "finetune", str(data), "--store", str(store),
        "--backbone", "tiny_test", "--policy", "top-2", "--epochs", str(EPOCHS),
        "--batch-size", "8", "--patience", str(EPOCHS), "--json",
    ]  # fmt: skip


def _run_folder(store: Path) -> Path | None:
    found = sorted(store.glob("finetune/*/checkpoints"))
    return found[0].parent if found else None


def _checkpoint_state(store: Path) -> dict[str, Any] | None:
    """What the run's last checkpoint says (written whole, so read whole)."""
    folder = _run_folder(store)
    payload = None if folder is None else CheckpointFolder(str(folder / "checkpoints")).load(LAST)
    if payload is None:
        return None
    state: dict[str, Any] = payload["state"]
    return state


def _finished(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=600)
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def test_a_killed_finetune_command_resumes_to_the_uninterrupted_result(
    tmp_path: Path, prefect_api: str
) -> None:
    """Mutations seen to fail it: ``Trainer.resume`` not loading the optimizer's state;
    ``trainer()`` in steps/finetune/run.py ignoring the checkpoint folder (a fresh start:
    the epochs before the kill are trained again, with other timings)."""
    data = tmp_path / "images"
    make_data(data, per_class=20)  # 60 images whose colour says their class
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    killed = tmp_path / "killed"

    log = tmp_path / "killed-run.log"
    with log.open("w") as output:
        run = subprocess.Popen(
            _command(data, killed), env=env, start_new_session=True,
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 600
    while (state := _checkpoint_state(killed)) is None or state["epoch"] < 1:
        assert run.poll() is None, f"the run ended before it could be killed:\n{log.read_text()}"
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.05)
    # A moment within the next epoch or so, drawn at random: not a point the code chose.
    time.sleep(random.uniform(0, state["seconds"] / state["epoch"]))
    os.killpg(run.pid, signal.SIGKILL)  # the CLI and anything it started, no cleanup
    run.wait()
    at_kill = _checkpoint_state(killed)
    assert at_kill is not None and 1 <= at_kill["epoch"] < EPOCHS and not at_kill["finished"]
    folder = _run_folder(killed)
    assert folder is not None and not (folder / "card.json").exists()

    # Resumed by another machine's user: only the store is shared, not the home folders.
    elsewhere = {**env, "HOME": str(tmp_path / "other-home")}
    elsewhere["TRANSFER_PIPE_HOME"] = str(tmp_path / "other-home" / ".transfer-pipe")
    resumed = _finished(_command(data, killed), elsewhere)
    clean = _finished(_command(data, tmp_path / "clean"), env)

    assert resumed["run_id"] == clean["run_id"] == folder.name
    assert resumed["embedded"] == 0  # the killed run's embedding and probe were kept
    for field in ("epochs", "best_epoch", "stopped", "accuracy", "macro_f1", "probe_accuracy"):
        assert resumed[field] == clean[field], field
    clean_folder = _run_folder(tmp_path / "clean")
    assert clean_folder is not None
    assert_same_checkpoints(folder / "checkpoints", clean_folder / "checkpoints")
    same_tensors(
        load_file(folder / "model.safetensors"), load_file(clean_folder / "model.safetensors")
    )
    # Resumed, not restarted: the epochs finished before the kill keep the timings they
    # were measured with then (a run started over would measure new ones).
    final = _checkpoint_state(killed)
    assert final is not None
    assert final["history"][: at_kill["epoch"]] == at_kill["history"]
