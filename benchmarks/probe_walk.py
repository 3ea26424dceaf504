"""The probe's C walk against the embed time of the same feature set, side by side.

One run, one machine: embed all 70,000 Fashion-MNIST images with EfficientNet-Lite0 at
``--image-size`` (the penultimate layer and every stage; timed, no Prefect, a fresh
store), then on each ``--layers`` candidate the logistic probe's C walk as it runs by
default (stopping past the peak) and, on the ``--whole-walk`` layers, also the whole
45-value walk (``c_patience=0``; the wide layers' whole walk takes many minutes). For
each: the walk's seconds (selection only, the part the walk changes), the chosen C, the
number of values walked, test accuracy, and the walk's seconds over the embed's. The walk
of the solver before this one is read from ``heads_probe_<size>px.json`` (the whole walk,
recorded earlier on the same data, split and protocol): its chosen C and accuracy are the
result to keep; its seconds are a reference, not a side-by-side figure.

Writes benchmarks/results/probe_walk_<image size>px.json.

    .venv/bin/python benchmarks/probe_walk.py [--image-size 64] [--store STORE]
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
from transfer_pipe.config import EmbedConfig, with_defaults
from transfer_pipe.heads.options import ProtocolOptions
from transfer_pipe.heads.protocol import fit_head
from transfer_pipe.heads.tasks import SplitOptions, Task, load_task
from transfer_pipe.steps.embed import embed
from transfer_pipe.store import open_store

RESULTS = Path(__file__).parent / "results"
WIDEST = "penultimate+stages.6+stages.5+stages.4"  # 1,904 features at EfficientNet-Lite0


def walk(data: Any, options: ProtocolOptions) -> dict[str, Any]:
    fitted = fit_head("logreg", data, options)
    return {
        "c_patience": options.c_patience,
        "values_walked": len(fitted.validation),
        "chosen_C": fitted.chosen["C"],
        "accuracy": fitted.metrics.accuracy,
        "seconds": fitted.seconds,
    }


def gradient_layouts(features: np.ndarray, classes: int = 10, repeats: int = 3) -> dict[str, float]:
    """Seconds of one forward and backward pass of the probe's objective on ``features``
    with its weights row-major (``[classes, dim]``, as the solver keeps them) and
    transposed (a view of ``[dim, classes]``, as it kept them before): autograd forms the
    weights' gradient as ``grad @ X`` for the first, ``X.T @ grad.T`` for the second, an
    operand layout some BLAS builds run many times slower. Best of ``repeats``."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    targets = torch.randint(0, classes, (len(x),))
    seconds = {}
    for layout in ("row_major", "transposed"):
        best = float("inf")
        for _ in range(repeats):
            weights = torch.zeros(classes, x.shape[1])
            if layout == "transposed":
                weights = torch.zeros(x.shape[1], classes).T
            weights.requires_grad_(True)
            started = time.perf_counter()
            logits = weights @ x.T  # [classes, rows], as the solver computes them
            torch.log_softmax(logits, dim=0).gather(0, targets[None, :]).mean().backward()
            best = min(best, time.perf_counter() - started)
        seconds[f"{layout}_s"] = best
    seconds["transposed_over_row_major"] = seconds["transposed_s"] / seconds["row_major_s"]
    return seconds


def recorded_walk(image_size: int, layer: str) -> dict[str, Any] | None:
    """The walk of the solver before this one, from the heads benchmark's record."""
    path = RESULTS / f"heads_probe_{image_size}px.json"
    if not path.exists():
        return None
    row = json.loads(path.read_text()).get("layer_candidates", {}).get(layer)
    if row is None:
        return None
    return {"chosen_C": row["chosen"]["C"], "accuracy": row["accuracy"], "seconds": row["seconds"]}


_VECTOR_FLAGS = ((" avx512_bf16", "AVX-512 BF16"), (" avx512f", "AVX-512"), (" avx2", "AVX2"))


def _cpu_model() -> str:
    """The CPU's model name and its widest vector instructions (Linux): BLAS speed turns
    on both, so results from different machines are told apart by it."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("model name")), platform.machine())  # fmt: skip
    widest = next((name for flag, name in _VECTOR_FLAGS if flag in info), "no AVX2")
    return f"{model} ({widest})"


def main() -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, with_defaults(EmbedConfig, ("image_size",), image_size=64))
    parser.add_argument("--layers", default=f"stages.4,stages.6,penultimate,{WIDEST}")
    parser.add_argument("--whole-walk", default="stages.4,stages.6")
    parser.add_argument("--store", help="reuse this store (default: a fresh temporary one)")
    parser.add_argument("--out", type=Path, help="default: results/probe_walk_<size>px.json")
    args = parser.parse_args()

    store = args.store or tempfile.mkdtemp(prefix="probe-walk-store-")
    config = EmbedConfig(
        source="fashion-mnist",
        store=store,
        image_size=args.image_size,
        layers=("penultimate", "stages"),
    )
    started = time.perf_counter()
    summary = embed(config)
    embed_seconds = time.perf_counter() - started
    print(f"embedded {summary.embedded} images in {embed_seconds:.1f} s", flush=True)

    rows = []
    for layer in args.layers.split(","):
        data = load_task(open_store(store), summary.feature_set, Task(), layer, SplitOptions())
        options = ProtocolOptions()
        stopped = walk(data, options)
        row: dict[str, Any] = {
            "layer": layer,
            "features": int(data.train.features.shape[1]),
            "walk": stopped,
            "walk_over_embed": stopped["seconds"]["select"] / embed_seconds,
            "before": recorded_walk(args.image_size, layer),
        }
        if row["before"] is not None:
            row["same_choice_as_before"] = row["before"]["chosen_C"] == stopped["chosen_C"]
        if layer == "penultimate":
            row["gradient_layouts"] = gradient_layouts(data.train.features)
        if layer in args.whole_walk.split(","):
            whole = walk(data, replace(options, c_patience=0))
            row["whole_walk"] = whole
            row["same_choice_as_whole_walk"] = whole["chosen_C"] == stopped["chosen_C"]
            row["whole_walk_over_embed"] = whole["seconds"]["select"] / embed_seconds
        print(json.dumps(row), flush=True)
        rows.append(row)

    result = {
        "benchmark": "probe_walk",
        "dataset": "Fashion-MNIST (Debian dataset-fashion-mnist)",
        "backbone": summary.backbone,
        "image_size": args.image_size,
        "embed": {"images_embedded": summary.embedded, "seconds": embed_seconds},
        "protocol": "45 values of C, 1e-06..1e+05, 100 L-BFGS iterations per value",
        "target": "the walk's seconds <= 0.10 of the embed's, with the same chosen C",
        "layers": rows,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
    out = args.out or RESULTS / f"probe_walk_{args.image_size}px.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
