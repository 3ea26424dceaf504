"""The GPU options of an embed run, measured on a CUDA machine (``benchmarks/gpu.sh``):

- ``nvjpeg``: the feed of photos at 224 px (the photo corpus of ``benchmarks/photos.py``:
  ImageNet-size baseline and progressive JPEGs, 1.9-3.1-megapixel and 12-megapixel JPEGs)
  decoded on the CPU (Pillow, ``--decode dct`` and ``full``, all cores' threads, the uint8
  batch copied to the GPU) against ``--decode nvjpeg`` (batched nvJPEG and the resize on
  the GPU; the CPU only reads and looks at headers), images/s; then the whole kernel
  (``embed_images``, EfficientNet-Lite0) with each decode; and how far nvJPEG's pixels
  and features are from Pillow's full decode (nvJPEG's IDCT and chroma upsampling are
  its own).
- ``compile``: the frozen forward pass, eager against ``--compile`` (torch.compile of the
  cached model, ``features.embedder``), at two batch sizes, float32 and bf16 autocast:
  images/s, the first (compiling) batch's seconds, and the features' relative difference.

Writes one JSON per part (``--out``). Without CUDA, ``nvjpeg`` runs its feed on the CPU
(torchvision's libjpeg-turbo standing in for nvJPEG: a smoke test, not a measurement) and
``compile`` refuses.

    python3 benchmarks/gpu_options.py nvjpeg --out benchmarks/results/nvjpeg_gpu.json
    python3 benchmarks/gpu_options.py compile --out benchmarks/results/compile_gpu.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.photos import corpus
from transfer_pipe.backbones import get_backbone
from transfer_pipe.data.batch import prepare_pixels, prepare_pixels_on
from transfer_pipe.data.decode import decode_image
from transfer_pipe.features.batch import embed_images
from transfer_pipe.features.embedder import Embedder
from transfer_pipe.features.tasks import EmbedderConfig
from transfer_pipe.preprocessing import Preprocessing

BACKBONE = "efficientnet_lite0.in1k"
SIZE = 224
BATCH = 64
ROWS = (("imagenet", "jpeg"), ("imagenet", "progressive"), ("large", "jpeg"), ("phone", "jpeg"))


def _preprocessing(decode: str) -> Preprocessing:
    return get_backbone(BACKBONE).preprocessing.replace(image_size=SIZE, decode=decode)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(work: Callable[[], int], device: torch.device) -> float:
    """Images/s of ``work`` (it returns how many), after one warming call."""
    work()
    _synchronize(device)
    started = time.perf_counter()
    count = work()
    _synchronize(device)
    return count / (time.perf_counter() - started)


def feed_rates(datas: Sequence[bytes], device: torch.device, threads: int) -> dict[str, float]:
    """Images/s of 224 px uint8 batches on ``device``: decoded by Pillow in ``threads``
    threads and copied there, or decoded there."""
    rates: dict[str, float] = {}
    with ThreadPoolExecutor(threads) as pool:
        for decode in ("dct", "full", "nvjpeg"):
            preprocessing = _preprocessing(decode)

            def work(decode: str = decode, preprocessing: Preprocessing = preprocessing) -> int:
                for start in range(0, len(datas), BATCH):
                    batch = datas[start : start + BATCH]
                    if decode == "nvjpeg":
                        prepare_pixels_on(batch, bytes, preprocessing, device, pool.map)
                    else:
                        load = functools.partial(decode_image, draft_to=preprocessing.draft_to)
                        pixels = prepare_pixels(batch, load, preprocessing, pool.map)
                        pixels.pixels.to(device)
                return len(datas)

            rates[decode] = round(_rate(work, device), 1)
    return rates


def kernel_rates(datas: Sequence[bytes], device: torch.device) -> dict[str, float]:
    """Images/s of the whole kernel (``embed_images``: feeder thread, decoders, forward
    pass of EfficientNet-Lite0) with each decode."""
    rates: dict[str, float] = {}
    for decode in ("dct", "nvjpeg"):
        preprocessing = _preprocessing(decode)
        config = EmbedderConfig(BACKBONE, None, ("penultimate",), preprocessing, str(device))
        load = functools.partial(decode_image, draft_to=preprocessing.draft_to)

        def work(config: EmbedderConfig = config, load: Any = load) -> int:
            return len(embed_images(datas, load, config, BATCH, read=bytes).ok)

        rates[decode] = round(_rate(work, device), 1)
    return rates


def agreement(datas: Sequence[bytes], device: torch.device) -> dict[str, float]:
    """How far the device decode's pixels and features are from Pillow's full decode."""
    full, nvjpeg = _preprocessing("full"), _preprocessing("nvjpeg")
    reference = prepare_pixels(datas[:BATCH], decode_image, full).pixels.to(device)
    pixels = prepare_pixels_on(datas[:BATCH], bytes, nvjpeg, device).pixels
    levels = (pixels.to(torch.int16) - reference.to(torch.int16)).abs().float()
    config = EmbedderConfig(BACKBONE, None, ("penultimate",), full, str(device))
    embedder = Embedder(config)
    a, b = (embedder.embed_pixels(p)["penultimate"] for p in (reference, pixels))
    relative = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    return {
        "pixel_levels_mean": round(float(levels.mean()), 3),
        "pixel_levels_max": float(levels.max()),
        "feature_relative_difference_median": round(float(np.median(relative)), 5),
        "feature_relative_difference_max": round(float(relative.max()), 5),
    }


def measure_nvjpeg(device: torch.device, quick: bool) -> dict[str, Any]:
    threads = os.cpu_count() or 1
    results: dict[str, Any] = {"decoder_threads": threads}
    with tempfile.TemporaryDirectory(prefix="nvjpeg-") as folder:
        files = corpus(Path(folder), quick, ("jpeg", "progressive"), ("jpeg",))
        for size_class, kind in ROWS:
            datas = [path.read_bytes() for path in files[size_class][kind]]
            datas = (datas * (BATCH // len(datas) + 1))[: 2 * BATCH if quick else 4 * BATCH]
            row: dict[str, Any] = {"images": len(datas), "feed": feed_rates(datas, device, threads)}
            if device.type == "cuda":
                row["kernel"] = kernel_rates(datas, device)
                row["agreement_with_full_decode"] = agreement(datas, device)
            results[f"{size_class}/{kind}"] = row
            print(f"nvjpeg {size_class}/{kind}: {row}", flush=True)
    return results


def measure_compile(device: torch.device, quick: bool) -> dict[str, Any]:
    """Eager against compiled forward passes of EfficientNet-Lite0 on ``device``."""
    if device.type != "cuda":
        raise SystemExit("compile: a CUDA device is needed (--compile compiles on CUDA only)")
    results: dict[str, Any] = {}
    for batch in (64,) if quick else (64, 256):
        images = torch.rand(batch, 3, SIZE, SIZE, device=device)
        for autocast in ("none", "bf16"):
            row: dict[str, Any] = {}
            outputs = {}
            for compiled in (False, True):
                config = EmbedderConfig(
                    BACKBONE,
                    None,
                    ("penultimate",),
                    _preprocessing("dct"),
                    str(device),
                    autocast,
                    compile=compiled,
                )
                embedder = Embedder(config)
                started = time.perf_counter()
                outputs[compiled] = embedder(images)["penultimate"]  # compiles, when asked
                _synchronize(device)
                name = "compiled" if compiled else "eager"
                row[f"{name}_first_batch_s"] = round(time.perf_counter() - started, 2)
                steps = 10 if quick else 30
                work = functools.partial(_repeat, embedder, images, steps)
                row[f"{name}_images_per_s"] = round(_rate(work, device), 1)
            a, b = outputs[False], outputs[True]
            relative = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
            row["speedup"] = round(row["compiled_images_per_s"] / row["eager_images_per_s"], 2)
            row["feature_relative_difference_max"] = float(relative.max())
            results[f"batch {batch}, autocast {autocast}"] = row
            print(f"compile batch {batch} autocast {autocast}: {row}", flush=True)
    return results


def _repeat(embedder: Embedder, images: torch.Tensor, steps: int) -> int:
    for _ in range(steps):
        embedder(images)
    return steps * images.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("nvjpeg", "compile"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer images and batch sizes")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    started = time.time()
    measure = measure_nvjpeg if args.part == "nvjpeg" else measure_compile
    results = measure(device, args.quick)
    record = {
        "what": f"GPU option {args.part}: see benchmarks/gpu_options.py",
        "command": " ".join(["python3", "benchmarks/gpu_options.py", *sys.argv[1:]]),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "total_seconds": round(time.time() - started, 1),
        "machine": {
            "platform": platform.platform(),
            "cores": os.cpu_count(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
        },
        "results": results,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
