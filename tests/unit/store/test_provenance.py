"""The provenance an embed run records (``store.provenance.Completion``): read back from
what this and earlier versions wrote, and written again with the same keys and values."""

from __future__ import annotations

from typing import Any

import pytest

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.store.provenance import Completion

RECORDED: dict[str, Any] = {
    "finished": "2026-12-01T02:00:00+00:00",
    "libraries": {"transfer-pipe": "0.1.0", "torch": "2.5.0"},
    "device": "cpu",
    "counts": {"rows": 14, "failed": 4, "noted": 1, "embedded": 10, "reused_from_other_sets": 0},
    "seconds": {"check": 0.5, "prepare": 0.25, "shards": 3.0},
    "new_bytes": 4096,
}


def test_a_recorded_completion_reads_and_writes_back_as_it_was() -> None:
    completion = Completion.from_dict(RECORDED)
    assert completion.counts.embedded == 10 and completion.device == "cpu"
    assert completion.to_dict() == RECORDED


def test_a_completion_written_before_devices_and_notes_reads_without_them() -> None:
    # Mutation seen failing: None fields written out as nulls (the JSON gains keys).
    older = {k: v for k, v in RECORDED.items() if k not in ("device", "new_bytes")}
    older["counts"] = {k: v for k, v in RECORDED["counts"].items() if k != "noted"}
    completion = Completion.from_dict(older)
    assert completion.device is None and completion.counts.noted is None
    assert completion.to_dict() == older


def test_a_completion_without_counts_names_what_is_missing() -> None:
    with pytest.raises(TransferPipeError, match="counts"):
        Completion.from_dict({k: v for k, v in RECORDED.items() if k != "counts"})
