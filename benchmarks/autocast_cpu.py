"""A bfloat16 forward pass on the CPU (``--autocast bf16``) against float32, side by side.

One run, one machine: the raw forward rate of EfficientNet-Lite0 at ``--image-size`` on
pre-decoded tensors, float32 and bfloat16 in alternation (three rounds: this machine's
speed swings); then ``--limit`` Fashion-MNIST images embedded both ways into one fresh
store (timed, no Prefect), the features' relative difference, and the logistic probe
(the heads flow's protocol, the source's split) on each. Writes
benchmarks/results/autocast_cpu.json.

    .venv/bin/python benchmarks/autocast_cpu.py [--image-size 64] [--limit 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer_pipe.app.cli import add_options
from transfer_pipe.backbones import get_backbone
from transfer_pipe.backbones.taps import LayerTap
from transfer_pipe.config import Autocast, EmbedConfig, with_defaults
from transfer_pipe.heads.options import ProtocolOptions
from transfer_pipe.heads.protocol import fit_head
from transfer_pipe.heads.tasks import SplitOptions, Task, load_task
from transfer_pipe.steps.embed import embed
from transfer_pipe.store import open_store

RESULTS = Path(__file__).parent / "results" / "autocast_cpu.json"
BACKBONE = "efficientnet_lite0.in1k"
PRECISIONS: tuple[Autocast, ...] = ("none", "bf16")


def forward_rates(image_size: int, batch: int = 64, batches: int = 8) -> list[dict[str, float]]:
    """Images/s of the bare model, float32 then bfloat16, three rounds."""
    torch.set_num_threads(os.cpu_count() or 1)
    tap = LayerTap(get_backbone(BACKBONE).build(), ["penultimate"]).eval()
    x = torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    rounds = []
    for _ in range(3):
        rates = {}
        for name, enabled in (("float32", False), ("bf16", True)):
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=enabled):
                tap(x)  # warm-up
                started = time.perf_counter()
                for _ in range(batches):
                    tap(x)
                rates[name] = batch * batches / (time.perf_counter() - started)
        rounds.append(rates)
    return rounds


def embed_and_probe(store: str, image_size: int, limit: int, autocast: Autocast) -> dict[str, Any]:
    config = EmbedConfig(
        source="fashion-mnist", store=store, image_size=image_size, limit=limit, autocast=autocast
    )
    started = time.perf_counter()
    summary = embed(config)
    seconds = time.perf_counter() - started
    data = load_task(open_store(store), summary.feature_set, Task(), "penultimate", SplitOptions())
    probe = fit_head("logreg", data, ProtocolOptions())
    return {
        "feature_set": summary.feature_set,
        "embedded": summary.embedded,
        "embed_seconds": seconds,
        "probe": {
            "accuracy": probe.metrics.accuracy,
            "accuracy_ci95": probe.metrics.accuracy_ci95,
            "chosen_C": probe.chosen["C"],
            "test_rows": len(data.test),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    embedding = with_defaults(EmbedConfig, ("image_size", "limit"), image_size=64, limit=20_000)
    add_options(parser, embedding)
    args = parser.parse_args()

    rounds = forward_rates(args.image_size)
    print("forward", json.dumps(rounds), flush=True)
    store = tempfile.mkdtemp(prefix="autocast-store-")
    runs = {}
    for autocast in PRECISIONS:
        runs[autocast] = embed_and_probe(store, args.image_size, args.limit, autocast)
        print(autocast, json.dumps(runs[autocast]), flush=True)
    features = open_store(store)
    half = features.load(runs["bf16"]["feature_set"])
    single = features.load(runs["none"]["feature_set"], sample_ids=list(half.sample_ids))
    difference = float(
        np.linalg.norm(half.features - single.features) / np.linalg.norm(single.features)
    )
    ratios = [r["bf16"] / r["float32"] for r in rounds]
    result = {
        "benchmark": "autocast_cpu",
        "backbone": BACKBONE,
        "image_size": args.image_size,
        "images": args.limit,
        "forward_images_per_s": rounds,
        "forward_bf16_over_float32": {"median": float(np.median(ratios)), "all": ratios},
        "embed_float32_over_bf16_seconds": runs["none"]["embed_seconds"]
        / runs["bf16"]["embed_seconds"],
        "features_relative_difference": difference,
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "bf16_instructions": " avx512_bf16" in Path("/proc/cpuinfo").read_text(),
            "torch": torch.__version__,
        },
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
