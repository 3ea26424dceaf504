"""Photographs: how fast they are decoded into model inputs, and what the fast decode does
to features and to a probe, on a corpus made here from the photographs scikit-learn and
scikit-image ship (``tests/support/photos.py``; nothing is downloaded).

- ``feed``: read -> decode -> resize -> normalise at 224 px (the default backbone's
  preprocessing, center crop), one process, one thread, a backbone that costs nothing
  (for JPEGs also without the normalise, which a GPU run does on the GPU):
  images/s on one core, for each size class (ImageNet-like around 500 x 375, and
  12-megapixel phone photos) and format (baseline and progressive JPEG, EXIF-rotated,
  Display P3, HEIC, WebP, AVIF, PNG), with a full decode and with the DCT-domain
  downscale (``--decode dct``);
- ``scaling``: the same feed (``--decode dct``, the default) in 1 .. all threads, for
  each size class (ImageNet, large 1.9-3.1 megapixels, phone) and format (baseline and
  progressive JPEG, WebP, AVIF, HEIC): images/s per core, and in processes too where
  threads fall short of ``SCALES`` of linear (threads are what a shard task's
  ``--decoders`` are);
- ``effect``: a labelled task (each source photograph a class; crops of it at ImageNet and
  large sizes, JPEG) embedded by EfficientNet-Lite0 at 224 px with each decode: the
  features' relative difference, and a logistic-regression probe's accuracy (5-fold
  stratified cross-validation, the same folds for both), side by side.

Writes benchmarks/results/photos.json (or ``--out``) and prints a table.

    .venv/bin/python benchmarks/photos.py              # 3-6 min on 2 cores
    .venv/bin/python benchmarks/photos.py --quick      # smaller corpus, 1-2 min
    .venv/bin/python benchmarks/photos.py --quick --parts scaling --out ...  # one part
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.photos import make_photos
from transfer_pipe.backbones import get_backbone
from transfer_pipe.data.decode import decode_image
from transfer_pipe.preprocessing import Preprocessing

RESULTS = Path(__file__).parent / "results" / "photos.json"
BACKBONE = "efficientnet_lite0.in1k"
SIZE = 224
FEED_TARGET = 650.0  # images/s per core, ImageNet-size JPEGs at 224 px
KINDS = ("jpeg", "progressive", "exif", "p3", "heic", "webp", "avif", "png")
JPEG_KINDS = ("jpeg", "progressive", "exif", "p3")
SCALING_KINDS = ("jpeg", "progressive", "webp", "avif", "heic")
SCALES = 0.8  # of linear: threads that reach it need no processes
PARTS = ("feed", "scaling", "effect")


def _preprocessing(decode: str) -> Preprocessing:
    base = get_backbone(BACKBONE).preprocessing.replace(image_size=SIZE)
    return base.replace(decode=decode)


def _feed(args: tuple[Sequence[bytes], str]) -> int:
    """Decode, resize and normalise every file's bytes, 64 at a time, through the
    pipeline's own kernel (``prepare_pixels``, then ``normalize``), on one core. A decode
    ending in "+uint8" stops at the uint8 pixels: what a GPU run's CPU does (the GPU
    normalises them itself, ``Embedder.embed_pixels``)."""
    import torch

    from transfer_pipe.data.batch import prepare_pixels

    torch.set_num_threads(1)
    datas, decode = args
    preprocessing = _preprocessing(decode.removesuffix("+uint8"))
    load = functools.partial(decode_image, draft_to=preprocessing.draft_to)
    for start in range(0, len(datas), 64):
        pixels = prepare_pixels(datas[start : start + 64], load, preprocessing)
        if not decode.endswith("+uint8"):
            preprocessing.normalize(pixels.pixels)
    return len(datas)


def feed_rate(
    datas: Sequence[bytes], decode: str, workers: int = 1, processes: bool = True
) -> float:
    """Images/s of ``_feed`` over ``datas`` (already in memory: the read is a file's bytes
    from the page cache, measured apart), split over ``workers``."""
    parts = [(datas[i::workers], decode) for i in range(workers)]
    _feed((datas[:4], decode))  # imports, transforms, plugins
    if workers == 1:
        started = time.perf_counter()
        _feed(parts[0])
        return len(datas) / (time.perf_counter() - started)
    if processes:  # spawned: a forked child of a process that ran torch's OpenMP hangs
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pool.map(_feed, [(datas[:2], decode)] * workers)  # warm each process
            started = time.perf_counter()
            pool.map(_feed, parts, chunksize=1)
            return len(datas) / (time.perf_counter() - started)
    return _in_threads(_feed, parts, len(datas))


def _in_threads(work: Callable[[Any], Any], parts: Sequence[Any], total: int) -> float:
    threads = [threading.Thread(target=work, args=(part,)) for part in parts]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return total / (time.perf_counter() - started)


def read_rate(paths: Sequence[Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        path.read_bytes()
    return len(paths) / (time.perf_counter() - started)


def corpus(
    work: Path,
    quick: bool,
    kinds: Sequence[str] = KINDS,
    large_kinds: Sequence[str] = SCALING_KINDS,
) -> dict[str, dict[str, list[Path]]]:
    """Files by size class and kind: ``kinds`` at ImageNet sizes, ``large_kinds`` at
    large and phone sizes, fewer of them (a 12-megapixel AVIF takes 15 s to encode here,
    a HEIC 45 s)."""
    per_kind = 4 if quick else 8  # per source photo (11 of them)
    found: dict[str, dict[str, list[Path]]] = {"imagenet": {}, "large": {}, "phone": {}}
    for kind in kinds:
        photos = make_photos(work / "imagenet" / kind, per_kind, kinds=(kind,), seed=1)
        found["imagenet"][kind] = [p.path for p in photos]
    for size_class, classes in (
        ("large", ("china", "coffee", "retina", "hubble_deep_field")),
        ("phone", ("china", "coffee", "retina", "hubble_deep_field")),
    ):
        for kind in large_kinds:
            slow = kind in ("avif", "heic") and size_class == "phone"
            picked = classes[: 1 if slow else 2 if quick else 4]
            photos = make_photos(
                work / size_class / kind,
                1 if quick or slow else 2,
                kinds=(kind,),
                size_class=size_class,
                classes=picked,
                seed=2,
            )
            found[size_class][kind] = [p.path for p in photos]
    return found


def measure_feed(files: dict[str, dict[str, list[Path]]]) -> dict[str, Any]:
    feed: dict[str, Any] = {}
    for size_class, kinds in files.items():
        for kind, paths in kinds.items():
            datas = [path.read_bytes() for path in paths]
            row = {
                "files": len(paths),
                "mean_megapixels": round(float(np.mean([_megapixels(d) for d in datas])), 2),
                "read_images_per_s": round(read_rate(paths), 1),
                "full": round(feed_rate(datas, "full"), 1),
            }
            if kind in JPEG_KINDS:
                row["dct"] = round(feed_rate(datas, "dct"), 1)
                row["dct_speedup"] = round(row["dct"] / row["full"], 2)
                row["dct_to_uint8"] = round(feed_rate(datas, "dct+uint8"), 1)
            feed[f"{size_class}/{kind}"] = row
            print(f"feed {size_class}/{kind}: {row}", flush=True)
    return feed


def _megapixels(data: bytes) -> float:
    import io

    from PIL import Image

    from transfer_pipe.data.decode import is_heif, register_heif

    if is_heif(data):
        register_heif()
    with Image.open(io.BytesIO(data)) as image:
        return image.size[0] * image.size[1] / 1e6


def measure_scaling(files: dict[str, dict[str, list[Path]]]) -> dict[str, Any]:
    """Images/s of the feed in 1 .. all threads, per size class and format; processes
    only where threads fall short of ``SCALES`` of linear."""
    cores = os.cpu_count() or 1
    counts = sorted({1, cores, *(n for n in (2, 4, 8, 16, 32) if n < cores)})
    scaling: dict[str, Any] = {}
    for size_class, kinds in files.items():
        for kind in SCALING_KINDS:
            if kind not in kinds:
                continue
            datas = _sized([path.read_bytes() for path in kinds[kind]], cores)
            threads = {n: round(feed_rate(datas, "dct", n, False), 1) for n in counts}
            efficiency = threads[cores] / (cores * threads[1])
            row: dict[str, Any] = {
                "images": len(datas),
                "threads": threads,
                "per_core": {n: round(rate / n, 1) for n, rate in threads.items()},
                "efficiency": round(efficiency, 2),
            }
            if efficiency < SCALES:
                row["processes"] = {n: round(feed_rate(datas, "dct", n, True), 1) for n in counts}
            scaling[f"{size_class}/{kind}"] = row
            print(f"scaling {size_class}/{kind}: {row}", flush=True)
    return scaling


def _sized(datas: list[bytes], cores: int, seconds: float = 1.5) -> list[bytes]:
    """``datas`` repeated to about ``seconds`` of one core's feed (at least two images per
    core), from the time of one image (after a first, warming, pass)."""
    _feed((datas[:1], "dct"))
    started = time.perf_counter()
    _feed((datas[:1], "dct"))
    count = max(2 * cores, int(seconds / (time.perf_counter() - started)))
    return (datas * (count // len(datas) + 1))[:count]


TASK_PHOTOS = ("china", "flower", "coffee", "astronaut")


def task_photos(per_class: int) -> tuple[list[bytes], np.ndarray, np.ndarray, list[bytes]]:
    """A labelled task a probe does not ace: each quadrant of four photographs is a class
    (16 classes; neighbouring quadrants share colours and textures), its examples crops
    of that quadrant, half at ImageNet sizes and half at 1.9-3.1 megapixels (where the
    DCT-domain decode changes pixels). Returns JPEG bytes (quality 90), labels, which are
    large, and the same photos at quality 95 (a difference nobody would call a change)."""
    from tests.support.photos import LARGE_SIZES, crop, encode, photo_sizes, source_photos

    rng = np.random.default_rng(7)
    datas, labels, large, finer = [], [], [], []
    for name in TASK_PHOTOS:
        photo = source_photos()[name]
        h, w = photo.shape[0] // 2, photo.shape[1] // 2
        for q, (top, left) in enumerate(((0, 0), (0, w), (h, 0), (h, w))):
            quadrant = photo[top : top + h, left : left + w]
            for n in range(per_class):
                big = n % 2 == 1
                size = LARGE_SIZES[n % len(LARGE_SIZES)] if big else photo_sizes(rng, "imagenet")
                image = crop(rng, quadrant, size)
                datas.append(encode(image, "jpeg"))
                finer.append(encode(image, "jpeg", quality=95))
                labels.append(f"{name}-{q}")
                large.append(big)
    return datas, np.array(labels), np.array(large), finer


def measure_effect(quick: bool) -> dict[str, Any]:
    """Features and a probe with each decode, on the labelled task."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transfer_pipe.features.batch import embed_images
    from transfer_pipe.features.tasks import EmbedderConfig

    torch.set_num_threads(os.cpu_count() or 1)
    datas, labels, large, finer = task_photos(10 if quick else 20)
    features: dict[str, np.ndarray] = {}
    for decode in ("full", "dct", "full, quality 95"):
        preprocessing = _preprocessing(decode.split(",")[0])
        config = EmbedderConfig(BACKBONE, None, ("penultimate",), preprocessing, "cpu")
        load = functools.partial(decode_image, draft_to=preprocessing.draft_to)
        started = time.perf_counter()
        result = embed_images(finer if "95" in decode else datas, load, config, 64)
        print(f"embedded {len(datas)} photos, {decode}: {time.perf_counter() - started:.1f} s")
        assert len(result.ok) == len(datas), result.failures
        features[decode] = result.features["penultimate"]
    full, dct = features["full"], features["dct"]
    relative = np.linalg.norm(dct - full, axis=1) / np.linalg.norm(full, axis=1)
    q95 = features.pop("full, quality 95")
    reencoded = np.linalg.norm(q95 - full, axis=1) / np.linalg.norm(full, axis=1)
    # Chance: how far the probe's accuracy moves when only the folds change.
    scores: dict[str, list[float]] = {}
    chance: list[float] = []
    for seed in range(5):
        folds = StratifiedKFold(5, shuffle=True, random_state=seed)
        for decode, values in features.items():
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000))
            accuracy = float(np.mean(cross_val_score(probe, values, labels, cv=folds)))
            scores.setdefault(decode, []).append(accuracy)
        chance.append(scores["full"][-1])
    delta = float(np.mean(scores["dct"]) - np.mean(scores["full"]))
    noise = float(np.std(chance))
    return {
        "photos": len(datas),
        "classes": len(set(labels)),
        "large_photos": int(large.sum()),
        "relative_feature_difference": {
            "median": round(float(np.median(relative)), 4),
            "p95": round(float(np.percentile(relative, 95)), 4),
            "imagenet_size_median": round(float(np.median(relative[~large])), 4),
            "large_median": round(float(np.median(relative[large])), 4),
            "large_p95": round(float(np.percentile(relative[large], 95)), 4),
        },
        "reference_quality_95_against_90_full_decode": {
            "median": round(float(np.median(reencoded)), 4),
            "p95": round(float(np.percentile(reencoded, 95)), 4),
            "large_median": round(float(np.median(reencoded[large])), 4),
        },
        "probe_accuracy": {k: round(float(np.mean(v)), 4) for k, v in scores.items()},
        "probe_accuracy_by_fold_seed": scores,
        "accuracy_delta_dct_minus_full": round(delta, 4),
        "noise_std_over_fold_seeds": round(noise, 4),
        "within_noise": bool(abs(delta) <= max(2 * noise, 0.005)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller corpus")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts")
    args = parser.parse_args()
    parts = args.parts.split(",")
    started = time.time()
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="photos-") as folder:
        work = Path(folder)
        print("writing the corpus", flush=True)
        kinds = KINDS if "feed" in parts else SCALING_KINDS
        files = corpus(work, args.quick, kinds) if {"feed", "scaling"} & set(parts) else {}
        feed = measure_feed(files) if "feed" in parts else None
        scaling = measure_scaling(files) if "scaling" in parts else None
        effect = measure_effect(args.quick) if "effect" in parts else None
    command = "python benchmarks/photos.py" + (" --quick" if args.quick else "")
    if args.parts != ",".join(PARTS):
        command += f" --parts {args.parts}"
    record = {
        "what": "photo decoding: feed rate per core by size class and format, full against "
        "DCT-domain decode, scaling over cores, and the fast decode's effect on features "
        "and a probe",
        "command": command,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "total_seconds": round(time.time() - started, 1),
        "machine": {
            "platform": platform.platform(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
            "note": "2 shared cores: read ratios, not rates",
        },
        "image_size": SIZE,
        "feed_images_per_s_one_core": feed,
        "scaling_images_per_s": scaling,
        "effect": effect,
        "targets": _targets(feed),
    }
    record = {k: v for k, v in record.items() if v is not None}  # the parts not run
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("effect", "targets") if k in record}, indent=2))
    print(f"wrote {path}")


def _targets(feed: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    if feed is None:
        return None
    per_core = feed["imagenet/jpeg"]
    best = max(per_core["full"], per_core["dct"])
    return [
        {
            "target": "CPU feed of ImageNet-size JPEGs at 224 px >= 650 images/s per core",
            "value": best,
            "met": bool(best >= FEED_TARGET),
            "detail": f"read, decode, resize, normalise on the CPU; without the CPU "
            f"normalise (a GPU run normalises on the GPU): {per_core['dct_to_uint8']}",
        },
    ]


if __name__ == "__main__":
    main()
