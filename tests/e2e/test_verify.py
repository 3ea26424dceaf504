"""A feature set damaged on disk: ``transfer-pipe verify`` names the damage, ``--repair``
marks it not done, and the same embed recomputes only that shard, back to the original.

Real images through the tiny registered backbone, the library's embed step (Dask, no
Prefect: the flow calls the same step) and the real CLI entry point for ``verify``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.images import make_dataset
from transfer_pipe.cli import main
from transfer_pipe.config import EmbedConfig
from transfer_pipe.steps import embed
from transfer_pipe.store import open_store
from transfer_pipe.store.zarr_store import DamagedFeatureSet

DAMAGED_SHARD = 2


def smash(path: Path) -> None:
    """Overwrite four bytes in the middle of a file."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(255 - b for b in data[middle : middle + 4])
    path.write_bytes(bytes(data))


def verify(
    key: str, store: Path, *flags: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    """``transfer-pipe verify KEY --store STORE --json [flags]``: exit code and report."""
    code = main(["verify", key, "--store", str(store), "--json", *flags])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_verify_repair_and_rerun_restore_the_original(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Mutation seen failing: repair() clearing every shard (shards_computed 4, not 1).
    # Mutation seen failing: verify without --repair returning 0 on damage (code 1 below).
    make_dataset(tmp_path / "images", classes=2, per_class=6)  # 12 good + 4 bad: 4 shards
    config = EmbedConfig(
        source=str(tmp_path / "images"),
        store=str(tmp_path / "store"),
        backbone="tiny_test",
        layers=("penultimate", "stages"),
        shard_size=4,
        workers=1,
    )
    first = embed(config)
    key = first.feature_set
    shutil.copytree(tmp_path / "store", tmp_path / "original")
    store = open_store(config.store)
    layers = store.spec(key).layers
    folder = tmp_path / "store" / "feature_sets" / key
    smash(folder / "features" / layers[-1] / "c" / str(DAMAGED_SHARD) / "0")  # a chunk
    smash(folder / "features" / layers[0] / "zarr.json")  # a metadata document

    # Any read that meets the damage names the feature set, the shard and the fix.
    with pytest.raises(DamagedFeatureSet, match=f"shard {DAMAGED_SHARD} .*--repair"):
        open_store(config.store).load(key, layer=layers[-1])
    # The dask path too, when the lazy array is computed. Mutation seen failing:
    # load(as_dask=True) back to da.from_zarr(array)[rows]: a bare ValueError "Stored and
    # computed checksum do not match", not DamagedFeatureSet.
    lazy = open_store(config.store).load(key, layer=layers[-1], as_dask=True)
    with pytest.raises(DamagedFeatureSet, match=f"shard {DAMAGED_SHARD} .*--repair"):
        lazy.features.compute()

    code, report = verify(key, tmp_path / "store", capsys=capsys)
    assert code == 1
    assert report["damaged_shards"] == [DAMAGED_SHARD]
    assert report["damaged_metadata"] == [f"features/{layers[0]}/zarr.json"]
    assert report["status"] == "complete"  # verify alone changes nothing

    code, report = verify(key, tmp_path / "store", "--repair", capsys=capsys)
    assert (code, report["repaired"], report["status"]) == (0, True, "incomplete")
    assert main(["ls", "--store", config.store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "incomplete"

    again = embed(config)
    assert (again.shards_computed, again.shards_already_done) == (1, 3)
    assert again.status == "complete"
    repaired, original = open_store(config.store), open_store(str(tmp_path / "original"))
    for layer in layers:
        a, b = repaired.load(key, layer=layer), original.load(key, layer=layer)
        assert a.sample_ids.tolist() == b.sample_ids.tolist()
        np.testing.assert_array_equal(a.features, b.features)
    assert repaired.failures(key).equals(original.failures(key))
    code, report = verify(key, tmp_path / "store", capsys=capsys)
    assert (code, report["ok"]) == (0, True)
