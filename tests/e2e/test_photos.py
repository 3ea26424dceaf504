"""A folder of photographs as people have them, embedded end to end: every format decoded
by its own plugin, a photo whose profile cannot be used kept and noted, bad photos
recorded with a reason, and the decode mode part of the key only where it changes pixels."""

from __future__ import annotations

import io
import json
import logging
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.icc import DISPLAY_P3, rgb_profile
from tests.support.photos import KINDS, crop, make_photos, source_photos
from transfer_pipe.config import EmbedConfig
from transfer_pipe.steps.embed import embed
from transfer_pipe.steps.failures import failure_report
from transfer_pipe.store import open_store

REPO = Path(__file__).resolve().parents[2]


def _bomb() -> bytes:
    """A real small JPEG whose frame header claims 20,000 x 20,000 pixels."""
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(out, "JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 20_000, 20_000)
    return bytes(data)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    make_photos(root, 8, kinds=KINDS, classes=("coffee", "rocket"), seed=4)
    photo = crop(np.random.default_rng(5), source_photos()["chelsea"], (500, 375))
    broken = io.BytesIO()
    photo.save(broken, "JPEG", icc_profile=rgb_profile(DISPLAY_P3)[:200])  # cut short
    (root / "coffee" / "profile-cut-short.jpg").write_bytes(broken.getvalue())
    good = (root / "rocket" / "0000.jpg").read_bytes()
    (root / "rocket" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "rocket" / "bomb.jpg").write_bytes(_bomb())
    heic = (root / "coffee" / "0005.heic").read_bytes()
    (root / "rocket" / "truncated.heic").write_bytes(heic[: len(heic) // 2])
    return root


def _config(folder: Path, store: Path, **options: object) -> EmbedConfig:
    return EmbedConfig(
        source=str(folder), store=str(store), backbone="tiny_test", workers=1, **options
    )


def test_a_photo_folder_embeds_with_bad_photos_recorded_and_caveats_noted(
    folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="transfer_pipe"):
        summary = embed(_config(folder, tmp_path / "store"))
    assert summary.status == "complete" and summary.rows == 20
    report = failure_report(open_store(str(tmp_path / "store")), summary.feature_set)
    reasons = {Path(row["uri"]).name: row["reason"].split(":")[0] for row in report.rows}
    # Every good photo of every format was used: only the four bad files failed.
    heic = reasons.pop("truncated.heic")
    assert reasons == {"truncated.jpg": "truncated", "bomb.jpg": "decompression-bomb"}
    assert heic in ("truncated", "corrupt")  # as libheif reports a HEIC cut short
    assert summary.failed == 3 and summary.embedded == 17
    # The photo whose profile is cut short was used, as sRGB, and the failures table's
    # notes say so. Mutation seen to fail here: notes not passed on to write_shard.
    assert [(Path(r["uri"]).name, r["note"].split(":")[0]) for r in report.notes] == [
        ("profile-cut-short.jpg", "icc-unusable")
    ]
    assert report.note_message == "1 image used with a note (1 icc-unusable)"
    # The run's log says so too, with the kind of note (mutation seen to fail here: the
    # kinds counted from the rows shown, none when the run's report shows no row).
    assert any("1 image used with a note (1 icc-unusable)" in r.message for r in caplog.records)


def test_show_lists_the_notes_beside_the_failures(folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    summary = embed(_config(folder, store))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "transfer_pipe.app.cli",
            "show",
            summary.feature_set,
            "--store",
            str(store),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    shown = json.loads(done.stdout)
    assert len(shown["failures"]) == 3
    assert [Path(n["uri"]).name for n in shown["notes"]] == ["profile-cut-short.jpg"]


def test_the_decode_mode_is_in_the_key_of_a_jpeg_folder_only(folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    full = embed(_config(folder, store, decode="full", image_size=32))
    dct = embed(_config(folder, store, decode="dct", image_size=32))
    assert full.feature_set != dct.feature_set  # other pixels, another feature set
    assert open_store(str(store)).spec(dct.feature_set).preprocessing.decode == "dct"
    pngs = tmp_path / "pngs"
    make_photos(pngs, 2, kinds=("png",), classes=("coffee",), seed=6)
    png_full = embed(_config(pngs, store, decode="full", image_size=32))
    png_dct = embed(_config(pngs, store, decode="dct", image_size=32))
    # No JPEG: the same pixels either way, so the same key (and the keys of folders
    # embedded before decode modes existed stay what they were).
    assert png_full.feature_set == png_dct.feature_set and png_dct.embedded == 0


def test_colour_management_is_in_the_key_of_image_files_and_not_of_idx_arrays(
    folder: Path,
) -> None:
    """Decoding converts embedded profiles to sRGB now: a folder's key says so (its rows
    are not those a decoder without colour management wrote under the old key), while an
    IDX source, whose arrays carry no profile, keeps the key it always had."""
    from transfer_pipe.data.sources import load_manifest
    from transfer_pipe.steps.embed import identity_of, run_backbone

    for source, colour in ((str(folder), "srgb"), ("fashion-mnist", None)):
        config = EmbedConfig(source=source, backbone="tiny_test", limit=8)
        backbone = run_backbone(config)
        manifest = load_manifest(source).limit(8)
        identity = identity_of(config, backbone, ["penultimate"], manifest)
        described = identity.preprocessing.to_dict()
        # Mutation seen to fail here: colour "srgb" for every source (IDX keys change).
        assert described.get("colour") == colour, source
        assert ("decode" in described) == (colour is not None)  # IDX: no JPEG either


def test_a_device_decode_is_a_feature_set_of_its_own_with_failures_as_on_the_cpu(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--decode nvjpeg`` on this CPU is refused before anything is written; with
    torchvision's libjpeg-turbo standing in for nvJPEG (the same batched call on device
    "cpu"), the folder embeds through the shards as its own feature set, every bad file
    and note recorded as a Pillow decode records them, the features those of the CPU's."""
    from transfer_pipe.data.device_decode import DECODE_DEVICES
    from transfer_pipe.errors import TransferPipeError

    store = tmp_path / "store"
    with pytest.raises(TransferPipeError, match="--decode nvjpeg decodes JPEGs on a CUDA"):
        embed(_config(folder, store, decode="nvjpeg", image_size=32))
    assert not store.exists()
    monkeypatch.setitem(DECODE_DEVICES, "nvjpeg", ("cuda", "cpu"))
    full = embed(_config(folder, store, decode="full", image_size=32))
    device = embed(_config(folder, store, decode="nvjpeg", image_size=32))
    opened = open_store(str(store))
    # Mutation seen to fail here: the shard not handing its byte reader to the kernel
    # (each shard fails: "a decode on the device needs read(item) -> bytes").
    assert device.status == "complete" and device.feature_set != full.feature_set
    assert opened.spec(device.feature_set).preprocessing.decode == "nvjpeg"
    reports = [failure_report(opened, s.feature_set) for s in (full, device)]
    assert [r.rows for r in reports[1:]] == [reports[0].rows] and len(reports[0].rows) == 3
    assert reports[1].notes == reports[0].notes and len(reports[0].notes) == 1
    rows = np.flatnonzero((opened.row_table(full.feature_set)["failure"] == "").to_numpy())
    a, b = (opened.read_rows(s.feature_set, "penultimate", rows) for s in (full, device))
    relative = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    assert float(relative.max()) < 0.02  # pixels within a level of Pillow's


def test_compile_is_refused_on_a_cpu_run_and_is_not_part_of_the_key(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.compile changes kernels, not what they compute beyond rounding (about 1e-6
    relative on EfficientNet-Lite0, measured): the same feature set with or without it,
    and the option reaches every shard's embedder."""
    from transfer_pipe.data.sources import load_manifest
    from transfer_pipe.errors import TransferPipeError
    from transfer_pipe.steps.embed import (
        check_embed_inputs,
        identity_of,
        prepare_embedding,
        run_backbone,
    )

    store = tmp_path / "store"
    with pytest.raises(TransferPipeError, match="--compile compiles the model on a CUDA"):
        embed(_config(folder, store, compile=True))
    assert not store.exists()
    manifest = load_manifest(str(folder))
    keys = set()
    for compile in (False, True):
        config = _config(folder, store, compile=compile)
        keys.add(identity_of(config, run_backbone(config), ["penultimate"], manifest).key)
    assert len(keys) == 1
    # On a cluster each worker checks its own device: the plan is made as for one.
    monkeypatch.setattr(sys.modules[check_embed_inputs.__module__], "_on_cluster", lambda c: True)
    plan = prepare_embedding(_config(folder, store, compile=True))
    # Mutation seen to fail here: EmbedConfig.compile not handed to EmbedderConfig.
    assert plan.tasks and all(task.embedder.compile for task in plan.tasks)
