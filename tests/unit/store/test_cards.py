"""The one "files, then card" write: a card's presence means the files are complete, a
missing card reads as None (never saved, or a save cut short), listings skip unfinished
folders, a rewrite leaves nothing stale; the same on a local folder and a non-local fs."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import fsspec
import pytest

from transfer_pipe.records import Record, known_fields
from transfer_pipe.store.cards import (
    CARD,
    card_folder,
    list_cards,
    read_card,
    save_with_card,
)


@dataclass(frozen=True)
class ToyCard(Record):
    card_id: str
    created: str
    value: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(**known_fields(cls, data, "a toy card"))


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return f"memory://cards-{uuid.uuid4().hex}"


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "files" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def _names(url: str) -> set[str]:
    fs, path = fsspec.core.url_to_fs(url)
    return {entry.rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False)}


def test_files_and_card_round_trip(store: str, tmp_path: Path) -> None:
    url = card_folder(store, "things", "a")
    card = ToyCard("a", "2025-01-01", value=7)
    assert save_with_card(url, [_file(tmp_path, "model.bin", "weights")], card) == url
    assert _names(url) == {"model.bin", CARD}
    assert read_card(url, ToyCard.from_dict) == card
    with fsspec.open(f"{url}/model.bin", "r") as f:
        assert f.read() == "weights"


def test_a_missing_card_reads_as_none(store: str, tmp_path: Path) -> None:
    # Mutation: letting read_card raise FileNotFoundError makes this fail.
    # Never written: no folder at all.
    assert read_card(card_folder(store, "things", "nothing"), ToyCard.from_dict) is None
    # Files but no card: an unfinished save reads the same way, and is not listed.
    url = card_folder(store, "things", "half")
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/model.bin", b"half-written")
    assert read_card(url, ToyCard.from_dict) is None
    assert list_cards(store, "things", ToyCard.from_dict) == []


def test_the_card_is_written_after_every_file(store: str, tmp_path: Path) -> None:
    url = card_folder(store, "things", "a")
    save_with_card(url, [_file(tmp_path, "model.bin", "v1")], ToyCard("a", "2025-01-01"))
    missing = tmp_path / "never-written.bin"
    # A rewrite that fails while copying its files leaves no card: neither the new one
    # (written last, so never reached) nor the old one (removed first, since the old files
    # may already be overwritten).
    # Mutation: writing the card before copying the files makes this fail.
    with pytest.raises(FileNotFoundError):
        save_with_card(
            url, [_file(tmp_path, "model.bin", "v2"), missing], ToyCard("a", "2025-02-01")
        )
    assert read_card(url, ToyCard.from_dict) is None
    assert list_cards(store, "things", ToyCard.from_dict) == []


def test_a_rewrite_removes_the_old_card_before_any_old_file(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = card_folder(store, "things", "a")
    # "a.bin" lists before "card.json": removing files in listing order would take it first.
    save_with_card(url, [_file(tmp_path, "a.bin", "v1")], ToyCard("a", "2025-01-01"))
    fs, _ = fsspec.core.url_to_fs(url)
    removed: list[str] = []
    rm_file = type(fs).rm_file
    monkeypatch.setattr(
        type(fs), "rm_file", lambda self, path: (removed.append(path), rm_file(self, path))
    )
    save_with_card(url, [_file(tmp_path, "a.bin", "v2")], ToyCard("a", "2025-02-01"))
    # Mutation: dropping the removal of the earlier card first makes this fail (a reader
    # would see the old card over a folder whose files are going).
    assert [p.rsplit("/", 1)[-1] for p in removed][:2] == [CARD, "a.bin"]


def test_a_rewrite_leaves_no_stale_file_but_keeps_sub_folders(store: str, tmp_path: Path) -> None:
    url = card_folder(store, "things", "a")
    save_with_card(url, [_file(tmp_path, "old.md", "old")], ToyCard("a", "2025-01-01"))
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(f"{path}/checkpoints", exist_ok=True)
    fs.pipe_file(f"{path}/checkpoints/last.pt", b"resume from here")
    save_with_card(url, [_file(tmp_path, "new.md", "new")], ToyCard("a", "2025-02-01", 2))
    # Mutation: dropping the removal of earlier files makes this fail (old.md stays).
    assert _names(url) == {"new.md", CARD, "checkpoints"}
    assert fs.cat_file(f"{path}/checkpoints/last.pt") == b"resume from here"
    assert read_card(url, ToyCard.from_dict) == ToyCard("a", "2025-02-01", 2)


def test_listing_is_oldest_first_then_by_id(store: str) -> None:
    for card_id, created in (("b", "2025-03-01"), ("z", "2025-01-01"), ("a", "2025-03-01")):
        save_with_card(card_folder(store, "things", card_id), [], ToyCard(card_id, created))
    listed = list_cards(store, "things", ToyCard.from_dict)
    assert [card.card_id for card in listed] == ["z", "a", "b"]
    assert list_cards(store, "other", ToyCard.from_dict) == []


def test_a_card_missing_a_field_is_a_clear_error(tmp_path: Path) -> None:
    url = str(tmp_path / "things" / "a")
    Path(url).mkdir(parents=True)
    (Path(url) / CARD).write_text('{"card_id": "a", "surplus": 1}')
    with pytest.raises(Exception, match=r"lacks \['created'\]"):
        read_card(url, ToyCard.from_dict)
