"""Two runs on one feature set at the same time (two real `transfer-pipe embed`
processes; two heads runs, two fine-tuning runs): the work is done once, the result is
whole, and a dead holder blocks nobody."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.images import make_dataset
from tests.support.pausing import PAUSE_ENV, pausing_command, wait_until_stopped
from tests.support.progress import shards_done
from transfer_pipe.config import EmbedConfig, FinetuneConfig, TrainConfig
from transfer_pipe.steps import embed
from transfer_pipe.steps.finetune import ensure_probe, finetune, prepare_finetune
from transfer_pipe.steps.train import train
from transfer_pipe.store import open_store
from transfer_pipe.store.claims import TTL_ENV

pytestmark = pytest.mark.kill  # runs paused, killed and resumed

GOOD, SHARDS = 400, 51  # 4 classes x 100 good images + 4 bad ones, 8 per shard


def _command(data: Path, store: Path) -> list[str]:
    return [
        sys.executable, "-m", "transfer_pipe.app.cli", "embed", str(data), "--store", str(store),
        "--backbone", "tiny_test", "--layers", "penultimate,stages", "--image-size", "48",
        "--shard-size", "8", "--batch-size", "4", "--workers", "1", "--json",
    ]  # fmt: skip


def _env(prefect_api: str) -> dict[str, str]:
    """The runs' environment: the session's server, claims that cannot lapse while a
    writer is paused, and Python's fault handler, so that a run dying in native code
    leaves its threads' Python stacks in the log the failed assertion shows."""
    return {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        TTL_ENV: "3600",
        "PYTHONFAULTHANDLER": "1",
    }


def _start(
    data: Path,
    store: Path,
    env: dict[str, str],
    log: Path | None = None,
    pause_after: int | None = None,
) -> subprocess.Popen[bytes]:
    """A CLI embed run; its log goes to ``log`` when given (to watch it while it runs). With
    ``pause_after``, the run stops itself once it has written that many shards."""
    command = _command(data, store)
    if pause_after is not None:
        command = pausing_command(*command[3:])
        env = {**env, PAUSE_ENV: str(pause_after)}
    with contextlib.ExitStack() as files:  # the child keeps its own copy of the file
        err = subprocess.PIPE if log is None else files.enter_context(log.open("wb"))
        return subprocess.Popen(
            command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=err
        )


def _summary(run: subprocess.Popen[bytes], log: Path | None = None) -> tuple[dict[str, int], str]:
    out, err = run.communicate(timeout=600)
    text = log.read_text() if log is not None else err.decode()
    assert run.returncode == 0, text[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1]), text


def _wait_for_log(run: subprocess.Popen[bytes], log: Path, line: str) -> None:
    deadline = time.monotonic() + 300
    while line not in log.read_text():
        assert run.poll() is None, f"the run ended without saying {line!r}"
        assert time.monotonic() < deadline, f"the run never said {line!r}"
        time.sleep(0.1)


def test_two_runs_at_once_write_each_shard_once(tmp_path: Path, prefect_api: str) -> None:
    data, store = tmp_path / "images", tmp_path / "store"
    make_dataset(data, classes=4, per_class=100)
    # Claims that cannot lapse while the writer is paused below.
    env = _env(prefect_api)
    # The writer stops itself holding the claim, 3 shards written, so the second run
    # surely arrives mid-write (started together, a slow start-up could make it arrive
    # after the writer ended; paused from outside, a fast writer could end first).
    writer_run = _start(data, store, env, pause_after=3)
    wait_until_stopped(writer_run)
    waiter_log = tmp_path / "waiter.log"
    try:
        waiter_run = _start(data, store, env, log=waiter_log)
        # Mutation: prepare_embedding without the claim makes the second run plan the
        # shards not yet written and compute them (it never waits, embedded > 0).
        _wait_for_log(waiter_run, waiter_log, "being written by another run")
    finally:
        os.killpg(writer_run.pid, signal.SIGCONT)
    writer, _ = _summary(writer_run)
    waiter, _ = _summary(waiter_run, waiter_log)
    assert (waiter["embedded"], waiter["shards_computed"]) == (0, 0)
    assert (writer["embedded"], writer["shards_computed"]) == (GOOD, SHARDS)
    opened = open_store(str(store))
    [key] = opened.list_keys()
    assert opened.status(key) == "complete"
    assert int(opened.shard_stats(key)["embedded"].sum()) == GOOD  # each shard once
    assert opened.verify(key).ok  # type: ignore[attr-defined]
    assert not list((store / "claims").glob("*/*.json")), "a claim was not given back"


def test_two_versions_of_one_lineage_at_once_append_each_content_once(
    tmp_path: Path, prefect_api: str
) -> None:
    """Two runs at once over one source that want two versions (``--limit 200`` and the
    whole folder): the second waits for the lineage, then builds its version on the
    first, appending only what the first lacks; no lineage row is written twice."""
    # Mutation seen failing: _claim taking the claim of the version key instead of the
    # lineage (both plan from the same lineage length: they append into the same rows).
    data, store = tmp_path / "images", tmp_path / "store"
    make_dataset(data, classes=4, per_class=100)
    env = _env(prefect_api)
    first = _start(data, store, env, pause_after=3)  # all of it, paused mid-write
    wait_until_stopped(first)
    log = tmp_path / "second.log"
    try:
        command = [*_command(data, store), "--limit", "200"]
        with log.open("wb") as err:
            second = subprocess.Popen(
                command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=err
            )
        _wait_for_log(second, log, "being written by another run")
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    whole, _ = _summary(first)
    part, _ = _summary(second, log)
    assert (whole["embedded"], part["embedded"]) == (GOOD, 0)  # the 200 are all shared
    opened = open_store(str(store))
    assert sorted(opened.list_keys()) == sorted([whole["feature_set"], part["feature_set"]])
    assert opened.spec(part["feature_set"]).parent == whole["feature_set"]
    assert opened.spec(part["feature_set"]).appended == 0
    rows = opened.lineage_rows(opened.spec(whole["feature_set"]).lineage)
    assert rows["content_hash"].is_unique and len(rows) == GOOD + 4  # each content once
    assert opened.verify(part["feature_set"]).ok and opened.verify(whole["feature_set"]).ok


def test_a_run_killed_holding_the_claim_does_not_block_the_next(
    tmp_path: Path, prefect_api: str
) -> None:
    data, store = tmp_path / "images", tmp_path / "store"
    make_dataset(data, classes=4, per_class=100)
    # A claim that would outlive the test: only its holder's death can free it this soon.
    env = _env(prefect_api)
    killed = _start(data, store, env, pause_after=3)
    wait_until_stopped(killed)
    os.killpg(killed.pid, signal.SIGKILL)  # no clean-up: the claim object stays
    killed.wait()
    done_at_kill = shards_done(store)
    assert list((store / "claims").glob("*/*.json")), "the killed run held no claim"

    started = time.monotonic()
    resumed, log = _summary(_start(data, store, env))
    assert time.monotonic() - started < 300
    assert "took over the claim" in log
    assert resumed["shards_already_done"] == done_at_kill
    assert resumed["shards_computed"] == SHARDS - done_at_kill

    opened = open_store(str(store))
    [key] = opened.list_keys()
    assert opened.status(key) == "complete"
    assert int(opened.shard_stats(key)["embedded"].sum()) == GOOD  # each image once
    assert opened.verify(key).ok  # type: ignore[attr-defined]


def test_two_heads_runs_at_once_fit_each_head_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two heads runs on one feature set (threads of one process: they overlap for sure;
    the claim lives in the store, whichever process asks)."""
    data, store = tmp_path / "images", tmp_path / "store"
    make_dataset(data, classes=3, per_class=12)
    summary = embed(
        EmbedConfig(source=str(data), store=str(store), backbone="tiny_test", workers=1)
    )
    config = TrainConfig(
        feature_set=summary.feature_set, store=str(store), heads=("torch-linear", "logreg")
    )
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(train, [config, config]))
    # Mutation: train_head without _claim_head makes both runs fit both heads (fitted 4).
    assert sorted((r.heads_fitted, r.heads_reused) for r in runs) in (
        [(0, 2), (2, 0)],
        [(1, 1), (1, 1)],
    )
    assert "being fitted by another run" in caplog.text
    cards = list((store / "heads").glob("*/card.json"))
    assert len(cards) == 2
    assert not list((store / "claims").glob("head-*/*.json")), "a claim was not given back"


def test_two_fine_tuning_runs_at_once_train_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two identical fine-tuning runs at once (threads of one process, as above): one
    trains, the other waits for it and reuses its model and card."""
    data, store = tmp_path / "images", tmp_path / "store"
    make_dataset(data, classes=3, per_class=12)
    summary = embed(
        EmbedConfig(source=str(data), store=str(store), backbone="tiny_test", workers=1)
    )
    config = FinetuneConfig(
        feature_set=summary.feature_set, store=str(store), policy="top-1", epochs=30,
        batch_size=8, loader_workers=0,
    )  # fmt: skip
    # The probe first, so both runs reach the training claim together (else the one that
    # waited for the probe finds the model already trained, and never waits for it).
    ensure_probe(prepare_finetune(config, summary.feature_set))
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(finetune, [config, config]))
    # Mutation: run_finetune without _claim_run makes both runs train (neither reused).
    assert sorted(run.reused for run in runs) == [False, True]
    assert "being trained by another run" in caplog.text
    assert runs[0].run_id == runs[1].run_id and runs[0].accuracy == runs[1].accuracy
    assert len(list((store / "finetune").glob("*/card.json"))) == 1
    assert not list((store / "claims").glob("*/*.json")), "a claim was not given back"
