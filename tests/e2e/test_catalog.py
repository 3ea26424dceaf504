"""The catalog shows lineages (issue 21, part 5): ``ls`` lists each lineage with its
versions (rows, added, removed, changed, bytes written, created), ``show KEY`` names the
version's parent and what changed, through the CLI as a user runs it.

Each test names, in a comment, the mutation of the code it was seen failing on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.images import write_image
from transfer_pipe.app.cli import main
from transfer_pipe.config import EmbedConfig
from transfer_pipe.steps.embed import embed


def night(data: Path, store: Path) -> str:
    config = EmbedConfig(
        source=str(data), store=str(store), backbone="tiny_test", shard_size=4, workers=1
    )
    return embed(config).feature_set


@pytest.fixture
def three_nights(tmp_path: Path) -> tuple[Path, list[str]]:
    """8 images; then 2 added, 1 removed and 1 rewritten with other pixels."""
    data, store = tmp_path / "data", tmp_path / "store"
    for i in range(8):
        write_image(data / f"c{i % 2}" / f"{i:03d}.png", seed=i)
    keys = [night(data, store)]
    for i in (8, 9):
        write_image(data / f"c{i % 2}" / f"{i:03d}.png", seed=i)
    (data / "c0" / "000.png").unlink()
    write_image(data / "c1" / "001.png", seed=101)
    keys.append(night(data, store))
    keys.append(night(data, store))  # unchanged: the same version, nothing new
    return store, keys


def test_ls_lists_each_lineage_with_its_versions_and_what_each_changed(
    three_nights: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    # Mutation seen failing: _changes counting no changed sample ids (a rewritten file
    # then shows as neither added nor changed).
    store, keys = three_nights
    assert keys[1] == keys[2]  # an unchanged night gives the same key and no version
    capsys.readouterr()
    assert main(["ls", "--store", str(store), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["key"] for v in listed] == keys[:2]  # oldest first
    first, second = listed
    assert (first["rows"], first["added"], first["parent"]) == (8, 8, None)
    assert (second["rows"], second["added"], second["removed"], second["changed"]) == (9, 2, 1, 1)
    assert second["parent"] == keys[0] and second["lineage"] == first["lineage"]
    assert 0 < second["new_bytes"] < first["new_bytes"]  # 3 new contents, not 9 rows
    assert main(["ls", "--store", str(store)]) == 0
    text = capsys.readouterr().out
    assert f"lineage {first['lineage']}" in text and "ADDED" in text and "REMOVED" in text
    assert text.count(keys[1]) == 1 and "store " in text


def test_show_names_the_parent_and_what_changed(
    three_nights: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    # Mutation seen failing: create() without parent=head (show says "first version").
    store, keys = three_nights
    capsys.readouterr()
    assert main(["show", keys[1], "--store", str(store)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert f"parent {keys[0]}" in line and "2 added, 1 removed, 1 changed" in line
    assert main(["show", keys[1], "--store", str(store), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"]["parent"] == keys[0] and shown["version"]["added"] == 2
