"""``<home>/server.json``: where a ``transfer-pipe serve`` runs, as a typed record that
reads the files earlier releases wrote."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transfer_pipe.app.serve import RECORD_NAME, ServerRecord, read_record
from transfer_pipe.app.serve.record import write_record


def test_a_written_record_reads_back_with_the_same_json_fields(tmp_path: Path) -> None:
    api_url = "http://127.0.0.1:4300/api"
    write_record(tmp_path, 4300, api_url, 90, "tcp://127.0.0.1:8786")
    written = json.loads((tmp_path / RECORD_NAME).read_text())
    assert written == {
        "url": "http://127.0.0.1:4300",
        "api_url": api_url,
        "port": 4300,
        "pid": os.getpid(),
        "heartbeat_s": 90,
        "dask_address": "tcp://127.0.0.1:8786",
    }
    assert read_record(tmp_path) == ServerRecord(**written)


def test_a_record_of_an_earlier_release_still_reads(tmp_path: Path) -> None:
    # Mutation seen failing: heartbeat_s and dask_address without defaults (an older
    # record, which has neither, is then read as no record at all).
    older = {"url": "http://127.0.0.1:4200", "api_url": "http://127.0.0.1:4200/api"}
    (tmp_path / RECORD_NAME).write_text(json.dumps({**older, "port": 4200, "pid": 12}))
    record = read_record(tmp_path)
    assert record is not None
    assert (record.api_url, record.pid, record.heartbeat_s, record.dask_address) == (
        "http://127.0.0.1:4200/api",
        12,
        None,
        None,
    )


def test_a_file_that_is_no_server_record_reads_as_none(tmp_path: Path) -> None:
    assert read_record(tmp_path) is None  # no file
    for text in ("not json", "[1, 2]", '{"url": "http://127.0.0.1:4200"}'):
        (tmp_path / RECORD_NAME).write_text(text)
        assert read_record(tmp_path) is None, text
