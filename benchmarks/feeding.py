"""Feeding rate: how fast the pipeline turns stored images into model inputs, next to how
fast the model eats them, so that a reader sees which of the two bounds a run.

With a registered backbone that costs nothing (``bench/zero_cost``: a global average pool
and a fixed 3 -> 1280 projection, so that the store writes as many bytes per image as
EfficientNet-Lite0's penultimate layer), measured side by side on one machine:

- ``feed``: read -> decode -> resize -> normalise (``prepare_pixels`` + ``normalize``), in
  1, 2 (.. all cores) threads and processes, each on its own slice of the images;
- ``kernel``: one ``embed_images`` call (the feeder thread, ``decoders`` decode threads,
  pinned memory and non-blocking copies on CUDA, the zero-cost forward on ``--device``);
- ``pipeline``: the whole embed (Dask worker threads, shard tasks, Zarr writes) with the
  zero-cost backbone, with 1 and 2 worker threads;
- ``raw_forward``: EfficientNet-Lite0 at the same size and batch on pre-decoded tensors
  already on the device, measured before and after the feeding runs (on CPU also in one
  stream per core; the faster of the two is the bound compared with).

On Fashion-MNIST (the IDX files, ``fashion-mnist``) and on a folder of PNG files written
from it. Writes benchmarks/results/feeding.json (or ``--out``).

    .venv/bin/python benchmarks/feeding.py [--device cpu|cuda] [--images 10000] [--pngs 5000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from transfer_pipe.app.cli import add_options
from transfer_pipe.backbones import get_backbone
from transfer_pipe.backbones.registry import BackboneEntry, register
from transfer_pipe.backbones.taps import LayerTap
from transfer_pipe.backbones.weights import RandomInit
from transfer_pipe.config import EmbedConfig, with_defaults
from transfer_pipe.data.batch import prepare_pixels
from transfer_pipe.data.read import read_image
from transfer_pipe.data.sources import load_manifest
from transfer_pipe.features.batch import embed_images
from transfer_pipe.features.tasks import EmbedderConfig

BACKBONE = "efficientnet_lite0.in1k"
ZERO_COST = "bench/zero_cost"
WIDTH = 1280  # EfficientNet-Lite0's penultimate width: the same bytes written per image
RESULTS = Path(__file__).parent / "results" / "feeding.json"


class ZeroCost(nn.Module):
    """A backbone that costs nothing next to decoding: pool, then 3 -> 1280 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.project = nn.Linear(3, WIDTH)
        self.classifier = nn.Linear(WIDTH, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.project(torch.flatten(self.pool(x), 1)))
        return logits


def register_zero_cost() -> None:
    """Register ``bench/zero_cost`` in this process (the benchmark's LocalCluster runs its
    worker threads in this process, so shard tasks find it too)."""
    lite0 = get_backbone(BACKBONE)
    register(
        BackboneEntry(
            id=ZERO_COST,
            architecture=ZeroCost,
            weights=RandomInit(arch=ZERO_COST),
            preprocessing=lite0.preprocessing,
            metadata={"architecture": "zero_cost", "feature_dim": WIDTH, "source": __file__},
            stages=lambda: ["pool"],
        )
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_forward_rate(device: torch.device, image_size: int, batch: int, images: int) -> float:
    """Images/s of EfficientNet-Lite0 on pre-decoded, normalised tensors already on
    ``device`` (channels_last, all cores), as ``embed_throughput.raw_forward_rate``."""
    spec = get_backbone(BACKBONE)
    preprocessing = spec.preprocessing.replace(image_size=image_size)
    uris = load_manifest("fashion-mnist").table["uri"].tolist()[:batch]
    one = torch.stack([preprocessing(read_image(u)) for u in uris])
    tensors = one.repeat(images // batch, 1, 1, 1).to(device)
    tensors = tensors.contiguous(memory_format=torch.channels_last)
    torch.set_num_threads(os.cpu_count() or 1)
    tap = LayerTap(spec.build().to(device).to(memory_format=torch.channels_last), ["penultimate"])
    with torch.inference_mode():
        for _ in range(3 if device.type == "cuda" else 1):  # warm-up (cuDNN picks kernels)
            tap(tensors[:batch])
        synchronize(device)
        started = time.perf_counter()
        for start in range(0, len(tensors), batch):
            tap(tensors[start : start + batch])
        synchronize(device)
        return len(tensors) / (time.perf_counter() - started)


def _feed_slice(args: tuple[Sequence[str], int, int]) -> int:
    """Read, decode, resize and normalise ``uris`` in batches on CPU; returns the count."""
    uris, image_size, batch = args
    torch.set_num_threads(1)
    preprocessing = get_backbone(BACKBONE).preprocessing.replace(image_size=image_size)
    done = 0
    for start in range(0, len(uris), batch):
        pixels = prepare_pixels(uris[start : start + batch], read_image, preprocessing)
        done += len(preprocessing.normalize(pixels.pixels))
    return done


def _in_threads(work: Callable[[Any], Any], parts: Sequence[Any]) -> None:
    threads = [threading.Thread(target=work, args=(part,)) for part in parts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _split(uris: Sequence[str], n: int) -> list[Sequence[str]]:
    return [uris[i::n] for i in range(n)]


def feed_rate(uris: Sequence[str], image_size: int, batch: int, n: int, processes: bool) -> float:
    """Images/s of read -> decode -> resize -> normalise in ``n`` threads or processes."""
    parts = [(part, image_size, batch) for part in _split(uris, n)]
    if processes:
        # spawn, not fork: a CUDA run has initialised CUDA (and threads) by now.
        context = multiprocessing.get_context("spawn")
        with context.Pool(n) as pool:
            pool.map(_feed_slice, [(p[0][:batch], image_size, batch) for p in parts])  # warm
            started = time.perf_counter()
            pool.map(_feed_slice, parts, chunksize=1)
            return len(uris) / (time.perf_counter() - started)
    _feed_slice((uris[:batch], image_size, batch))  # warm the IDX cache and the imports
    started = time.perf_counter()
    _in_threads(_feed_slice, parts)
    return len(uris) / (time.perf_counter() - started)


def kernel_rate(uris: Sequence[str], config: EmbedderConfig, batch: int, decoders: int) -> float:
    """Images/s of one ``embed_images`` call with the zero-cost backbone."""
    embed_images(uris[:batch], read_image, config, batch)  # builds the model
    started = time.perf_counter()
    result = embed_images(uris, read_image, config, batch, decoders=decoders)
    assert len(result.ok) == len(uris), result.failures
    return len(uris) / (time.perf_counter() - started)


def pipeline_rate(
    source: str, store: Path, args: argparse.Namespace, workers: int
) -> dict[str, Any]:
    """The whole embed with the zero-cost backbone: end to end (the shard tasks, from the
    first submitted to the last written) and steady (after the first shard)."""
    from transfer_pipe import steps
    from transfer_pipe.config import EmbedConfig
    from transfer_pipe.steps.embed import steady_rate

    config = EmbedConfig(
        source=source,
        store=str(store),
        backbone=ZERO_COST,
        image_size=args.image_size,
        batch_size=args.batch_size,
        limit=args.images,
        workers=workers,
        device=args.device,
    )
    plan = steps.prepare_embedding(config)
    started = time.perf_counter()
    results = steps.compute_shards(plan)
    seconds = time.perf_counter() - started
    images = sum(r.rows for r in results)
    return {"images_per_s": images / seconds, "steady_images_per_s": steady_rate(results)}


def write_pngs(root: Path, count: int) -> Path:
    """``count`` Fashion-MNIST images as PNG files in class folders under ``root``."""
    table = load_manifest("fashion-mnist").table.head(count)
    for n, (uri, label) in enumerate(zip(table["uri"], table["label"], strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(read_image(uri))[:, :, 0]).save(folder / f"{n:05d}.png")
    return root


def measure_source(
    name: str, source: str, images: int, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    uris = load_manifest(source).table["uri"].tolist()[:images]
    cores = os.cpu_count() or 1
    counts = sorted({1, 2, cores})
    preprocessing = get_backbone(ZERO_COST).preprocessing.replace(image_size=args.image_size)
    config = EmbedderConfig(ZERO_COST, None, ("penultimate",), preprocessing, args.device)
    torch.set_num_threads(1)
    result: dict[str, Any] = {"images": len(uris)}
    result["feed_threads"] = {
        n: feed_rate(uris, args.image_size, args.batch_size, n, False) for n in counts
    }
    result["feed_processes"] = {
        n: feed_rate(uris, args.image_size, args.batch_size, n, True) for n in counts
    }
    result["feed_per_core"] = result["feed_processes"][1]
    result["kernel_zero_cost"] = {
        f"decoders_{n}": kernel_rate(uris, config, args.batch_size, n) for n in counts
    }
    result["pipeline_zero_cost"] = {
        f"{w}_worker_threads": pipeline_rate(source, work / f"{name}-{w}", args, w)
        for w in sorted({1, 2, min(cores, 4)})
    }
    print(json.dumps({name: result}, indent=2), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    embedding = ("device", "image_size", "batch_size")
    add_options(parser, with_defaults(EmbedConfig, embedding, device="cpu", image_size=64))
    parser.add_argument("--images", type=int, default=10_000, help="Fashion-MNIST images")
    parser.add_argument("--pngs", type=int, default=5_000, help="PNG files written")
    parser.add_argument("--raw-images", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    register_zero_cost()
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="tp-feeding-"))
    try:
        raw_before = raw_forward_rate(device, args.image_size, args.batch_size, args.raw_images)
        print(f"raw forward {raw_before:.0f} images/s", flush=True)
        sources = {
            "fashion_mnist_idx": measure_source("idx", "fashion-mnist", args.images, args, work),
            "png_folder": measure_source(
                "png", str(write_pngs(work / "pngs", args.pngs)), args.pngs, args, work
            ),
        }
        raw_after = raw_forward_rate(device, args.image_size, args.batch_size, args.raw_images)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw = (raw_before + raw_after) / 2
    cores = os.cpu_count() or 1
    # On CPU, also one stream per core with one torch thread each (the local worker's
    # layout), which holds up where one stream on every core collapses under load.
    streams = None
    if device.type == "cpu":
        from embed_throughput import raw_streams_rate

        streams = raw_streams_rate(args.image_size, args.batch_size, args.raw_images)
        raw = max(raw, streams)
    for measured in sources.values():
        best_feed = max(measured["feed_threads"][cores], measured["feed_processes"][cores])
        measured["feed_all_cores_vs_raw_forward"] = best_feed / raw
        measured["bound_by"] = "forward pass" if best_feed > raw else "feeding"
    results = {
        "machine": {
            "cpus": cores,
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        },
        "setup": {
            "device": args.device,
            "backbone": BACKBONE,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "torch": torch.__version__,
        },
        "raw_forward_images_per_s": raw,
        "raw_forward_before_after": [raw_before, raw_after],
        "raw_forward_one_stream_per_core": streams,
        "sources": sources,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
