"""Model cards beside the feature sets: ``<store>/<folder>/<id>/card.json``, one per fitted
head or fine-tuning run, each written last so that a folder without one is unfinished."""

from __future__ import annotations

import json
import posixpath
from typing import Any

import fsspec

CARD = "card.json"


def list_cards(store: str, folder: str) -> list[dict[str, Any]]:
    """Every finished card under ``<store>/<folder>/*/``, oldest first."""
    fs, path = fsspec.core.url_to_fs(posixpath.join(store.rstrip("/"), folder))
    if not fs.exists(path):
        return []
    cards = []
    for card_path in fs.glob(posixpath.join(path, "*", CARD)):
        with fs.open(card_path, "r") as f:
            cards.append(json.load(f))
    return sorted(cards, key=lambda card: (card.get("created", ""), _card_id(card)))


def _card_id(card: dict[str, Any]) -> str:
    """The id a card names itself by (heads and fine-tuning runs differ)."""
    return str(card.get("head_id") or card.get("run_id") or "")
