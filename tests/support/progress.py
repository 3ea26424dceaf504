"""How far a run writing a store has got, read from outside it."""

from __future__ import annotations

from pathlib import Path

from transfer_pipe.store import open_store


def shards_done(store: Path) -> int:
    """Shards written so far (read through the store: its layout is its own business)."""
    try:
        opened = open_store(str(store))
        return sum(int(opened.shards_done(key).sum()) for key in opened.list_keys())
    except (KeyError, FileNotFoundError, ValueError):
        return 0
