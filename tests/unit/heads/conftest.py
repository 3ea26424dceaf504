"""Head tests fit many tiny problems: one thread each is faster on a shared machine."""

from __future__ import annotations

import pytest

from transfer_pipe.heads import protocol


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """One torch/BLAS thread per fit: these problems are tiny, and on a busy 2-core machine
    two threads per fit are an order of magnitude slower (and nothing here is about speed)."""
    monkeypatch.setattr(protocol, "threads_per_task", lambda: 1)
