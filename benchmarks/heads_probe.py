"""Heads benchmark: linear-probe accuracy on Fashion-MNIST's full 60,000 / 10,000 split.

One run, one machine, side by side:
- embed all 70,000 images with EfficientNet-Lite0 at ``--image-size`` into a fresh store
  (timed: the embed time of the feature set the heads read);
- with several ``--layers`` candidates: the probe on each, and the one with the best
  *validation* accuracy (never test) is the layer every head then reads;
- every head by the protocol on the cached features (the probe's ``C`` sweep timed alone);
- logistic regression on raw pixels with the same protocol and the same split.

Writes benchmarks/results/heads_probe_<image size>px.json.

    .venv/bin/python benchmarks/heads_probe.py [--image-size 96] [--heads logreg,knn,...]
        [--embed-layers penultimate,stages] [--layers penultimate,stages.6+penultimate]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer_pipe.app.cli import add_options
from transfer_pipe.config import DEFAULT_HEADS, EmbedConfig, with_defaults
from transfer_pipe.data.idx import read_idx, split_idx_uri
from transfer_pipe.data.sources import load_manifest
from transfer_pipe.heads.options import ProtocolOptions
from transfer_pipe.heads.protocol import fit_head
from transfer_pipe.heads.tasks import SplitOptions, SplitRows, Task, TaskData, load_task
from transfer_pipe.steps import embed
from transfer_pipe.store import open_store

RESULTS = Path(__file__).parent / "results" / "heads_probe_{size}px.json"


def raw_pixel_task(features_task: TaskData) -> TaskData:
    """The same rows and split as ``features_task``, with raw pixels (0..1) as features."""
    table = load_manifest("fashion-mnist").table.set_index("sample_id")

    def pixels(rows: SplitRows) -> SplitRows:
        values = []
        for uri in table.loc[rows.sample_ids, "uri"]:
            file_url, index = split_idx_uri(uri)  # type: ignore[misc]
            values.append(read_idx(file_url)[index].reshape(-1))
        return replace(rows, features=np.stack(values).astype(np.float32) / 255.0)

    return replace(
        features_task,
        train=pixels(features_task.train),
        val=pixels(features_task.val),
        test=pixels(features_task.test),
    )


def head_summary(name: str, data: TaskData, options: ProtocolOptions) -> dict[str, Any]:
    started = time.perf_counter()
    fitted = fit_head(name, data, options)
    total = time.perf_counter() - started
    metrics = fitted.metrics
    row = {
        "head": name,
        "layer": data.layer,
        "best_val_accuracy": max(
            (p["val_accuracy"] for p in fitted.validation if "val_accuracy" in p), default=None
        ),
        "accuracy": metrics.accuracy,
        "accuracy_ci95": list(metrics.accuracy_ci95),
        "macro_f1": metrics.macro_f1,
        "ece": metrics.ece,
        "chosen": fitted.chosen,
        "seconds": {**fitted.seconds, "total": total},
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, with_defaults(EmbedConfig, ("image_size",), image_size=96))
    parser.add_argument("--heads", default=",".join(DEFAULT_HEADS))
    parser.add_argument("--embed-layers", default="penultimate")
    parser.add_argument("--layers", default="penultimate", help="candidates, comma-separated")
    parser.add_argument("--store", help="reuse this store (default: a fresh temporary one)")
    parser.add_argument(
        "--skip-raw",
        action="store_true",
        help="no raw-pixel baseline (it does not depend on the image size)",
    )
    args = parser.parse_args()

    store = args.store or tempfile.mkdtemp(prefix="heads-probe-store-")
    config = EmbedConfig(
        source="fashion-mnist",
        store=store,
        image_size=args.image_size,
        layers=tuple(args.embed_layers.split(",")),
    )
    started = time.perf_counter()
    summary = embed(config)
    embed_seconds = time.perf_counter() - started
    print(f"embedded {summary.embedded} images in {embed_seconds:.1f} s", flush=True)

    options = ProtocolOptions()
    candidates = {}
    for layer in args.layers.split(","):
        data = load_task(open_store(store), summary.feature_set, Task(), layer, SplitOptions())
        candidates[layer] = (data, head_summary("logreg", data, options))
    layer = max(candidates, key=lambda name: candidates[name][1]["best_val_accuracy"])
    data = candidates[layer][0]
    heads = [
        candidates[layer][1] if name == "logreg" else head_summary(name, data, options)
        for name in args.heads.split(",")
    ]
    raw = None if args.skip_raw else head_summary("logreg", raw_pixel_task(data), options)
    probe = next((h for h in heads if h["head"] == "logreg"), None)
    result = {
        "dataset": "Fashion-MNIST (Debian dataset-fashion-mnist)",
        "split": {**data.sizes(), "origin": data.split_origin},
        "backbone": summary.backbone,
        "image_size": args.image_size,
        "layer": layer,
        "layer_candidates": {name: row for name, (_, row) in candidates.items()},
        "layer_choice": "the candidate whose probe scored best on validation",
        "embed": {
            "images_embedded": summary.embedded,
            "seconds": embed_seconds,
            "note": "no Prefect; a fresh store, so every image is embedded",
        },
        "protocol": {
            "c_grid": f"{options.c_values} values {options.c_min:g}..{options.c_max:g}",
            "max_iter_per_c": options.max_iter,
            "refit_max_iter": options.refit_max_iter,
        },
        "heads": heads,
        "raw_pixels_logreg": raw,
        "probe_minus_raw_pixels": probe["accuracy"] - raw["accuracy"] if probe and raw else None,
        "sweep_seconds": probe["seconds"]["select"] if probe else None,
        "sweep_over_embed": probe["seconds"]["select"] / embed_seconds if probe else None,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
    out = Path(str(RESULTS).format(size=args.image_size))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("probe_minus_raw_pixels", "sweep_over_embed")}))


if __name__ == "__main__":
    main()
