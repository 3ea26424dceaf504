"""The `transfer-pipe` command as a user runs it: a real process against a Prefect server."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.support.cli import cli
from tests.support.images import make_dataset
from transfer_pipe.app.cli import main


def test_embed_json_then_ls_and_show(tmp_path: Path, prefect_api: str) -> None:
    make_dataset(tmp_path / "data", classes=2, per_class=5)
    store = str(tmp_path / "store")
    args = ["embed", str(tmp_path / "data"), "--store", store, "--backbone", "tiny_test"]
    done = cli(*args, "--shard-size", "4", "--workers", "1", "--json", api=prefect_api)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["rows"], summary["failed"], summary["embedded"], summary["reused"]) == (
        14,
        4,
        10,
        0,
    )
    # A rerun reuses exactly the rows the first run embedded (a count from that run, not
    # rows - failed - embedded). Mutation: a rerun that re-embeds (store status ignored)
    # gives embedded 10 here.
    again = cli(*args, "--shard-size", "4", "--workers", "1", "--json", api=prefect_api)
    rerun = json.loads(again.stdout.strip().splitlines()[-1])
    assert (rerun["embedded"], rerun["reused"]) == (0, summary["embedded"])
    listed = json.loads(cli("ls", "--store", store, "--json", api=prefect_api).stdout)
    assert [(f["key"], f["rows"], f["failed"], f["status"]) for f in listed] == [
        (summary["feature_set"], 14, 4, "complete")
    ]
    assert listed[0]["nbytes"] > 0
    shown = json.loads(
        cli("show", summary["feature_set"], "--store", store, "--json", api=prefect_api).stdout
    )
    assert shown["spec"]["backbone"] == "tiny_test"
    assert shown["counts"]["embedded"] == 10
    assert "torch" in shown["libraries"]
    assert {f["reason"].split(":")[0] for f in shown["failures"]} == {
        "empty",
        "not-an-image",
        "truncated",
        "decompression-bomb",
    }


def _fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 2
    return capsys.readouterr().err


def test_bad_input_gets_one_clear_error_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dataset(tmp_path / "data", classes=1, per_class=2, bad=False)
    store = tmp_path / "store"
    data = str(tmp_path / "data")

    err = _fails(capsys, "embed", str(tmp_path / "absent"), "--store", str(store))
    assert "does not exist" in err
    err = _fails(capsys, "embed", data, "--store", str(store), "--backbone", "resnet-19")
    assert "transfer-pipe backbones" in err
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    err = _fails(
        capsys,
        "embed",
        data,
        "--store",
        str(store),
        "--backbone",
        "tiny_test",
        "--weights-file",
        str(wrong),
    )
    assert "does not match" in err
    assert not store.exists(), "a failed run must not leave a half-written store"

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = _fails(
        capsys, "embed", data, "--store", str(blocker / "store"), "--backbone", "tiny_test"
    )
    assert "--store" in err
    err = _fails(capsys, "embed", data, "--image-size", "0")
    assert "--image-size" in err


def test_train_json_heads_ls_and_predict(tmp_path: Path, prefect_api: str) -> None:
    make_dataset(tmp_path / "data", classes=2, per_class=8)
    store = str(tmp_path / "store")
    embed = ["embed", str(tmp_path / "data"), "--store", store, "--backbone", "tiny_test"]
    key = json.loads(cli(*embed, "--json", api=prefect_api).stdout.splitlines()[-1])["feature_set"]

    done = cli("train", key, "--store", store, "--heads", "logreg,ridge", "--json", api=prefect_api)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["embedded"] == 0 and summary["feature_set"] == key
    assert set(summary["heads"]) == {"logreg", "ridge"}
    for head in summary["heads"].values():
        assert {"accuracy", "macro_f1", "head_ids"} <= set(head)
    assert "accuracy_ci95" in done.stdout  # the metrics table printed for the terminal

    listed = json.loads(cli("heads", "ls", "--store", store, "--json", api=prefect_api).stdout)
    assert sorted(h["head"] for h in listed) == ["logreg", "ridge"]
    assert {h["feature_set"] for h in listed} == {key}

    out = tmp_path / "predictions.csv"
    image = next((tmp_path / "data" / "class1").glob("*.png"))
    head_id = summary["heads"]["logreg"]["head_ids"][0]
    predict = ["predict", str(image), "--store", store, "--head", head_id, "--out", str(out)]
    predicted = json.loads(cli(*predict, "--json", api=prefect_api).stdout.splitlines()[-1])
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["path"], r["cached"], r["error"]) for r in rows] == [(str(image), "True", "")]
    assert rows[0]["class"] in ("class0", "class1")
    # --json ends with the run's summary. Mutation seen failing: _predict without its
    # `if args.json` print (the last line is then the text summary).
    assert predicted == {"out": str(out), "rows": 1, "cached": 1, "embedded": 0, "failed": 0}


def test_train_bad_input_fails_fast_with_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "store")
    err = _fails(capsys, "train", "0123456789abcdef", "--store", store)
    assert "transfer-pipe ls" in err
    make_dataset(tmp_path / "data", classes=2, per_class=2, bad=False)
    data = str(tmp_path / "data")
    err = _fails(capsys, "train", data, "--store", store, "--heads", "logreg,forest")
    assert "unknown head 'forest'" in err
    err = _fails(capsys, "train", data, "--store", store, "--task", "groups.txt")
    assert "unknown task" in err
    err = _fails(capsys, "predict", "x.png", "--store", store, "--head", "nope", "--out", "p.csv")
    assert "heads ls" in err
    assert main(["heads", "ls", "--store", store]) == 0  # an empty store is not an error
    assert "no fitted heads" in capsys.readouterr().out


def test_automations_keeps_one_crash_automation_with_the_heartbeat_window(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.prefect_api import api
    from transfer_pipe.app.serve import CRASH_AUTOMATION, HEARTBEAT_ENV

    named = {"automations": {"name": {"any_": [CRASH_AUTOMATION]}}}
    for heartbeat_s in (45, 60):  # a second call updates the first's window, never adds one
        monkeypatch.setenv(HEARTBEAT_ENV, str(heartbeat_s))
        done = cli("automations", api=prefect_api)
        assert f"{3 * heartbeat_s} s is marked Crashed" in done.stdout
        automations = api("POST", f"{prefect_api}/automations/filter", named)
        # Mutation: creating without looking for an existing one leaves two here.
        assert [a["trigger"]["within"] for a in automations] == [3 * heartbeat_s]
    (automation,) = automations
    assert automation["actions"][0]["state"] == "CRASHED"
    monkeypatch.setenv(HEARTBEAT_ENV, "often")
    failed = cli("automations", api=prefect_api, check=False)
    assert failed.returncode == 2
    assert f"{HEARTBEAT_ENV}='often' is not a whole number" in failed.stderr
