"""Fine-tuning against the linear probe on Fashion-MNIST's full split, as one measured run:
embed every image, fit the probe (the heads flow's logreg), fine-tune, and write
throughput (images/s for the embed and for training) and test accuracies to JSON.

    # one CUDA GPU, the full run (about 5 minutes on an H100; benchmarks/gpu.sh sets it up):
    python benchmarks/finetune.py --device cuda
    # CPU, what a fixed time budget reaches:
    python benchmarks/finetune.py --device cpu --image-size 64 --policy top-2 --time-budget 1800

The JSON is rewritten after every phase and epoch, so a run cut short still leaves its
numbers. Splits are the source's: 54,000 train, 6,000 validation (from train, seed 0),
the official 10,000 test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from transfer_pipe.app.cli import add_options
from transfer_pipe.cluster import resolve_device
from transfer_pipe.config import EmbedConfig, FinetuneConfig, with_defaults
from transfer_pipe.steps.embed import embed, library_versions
from transfer_pipe.steps.finetune import (
    ensure_probe,
    finalize_finetune,
    prepare_finetune,
    run_finetune,
)

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="feature store (default: a temporary folder)")
    add_options(parser, with_defaults(EmbedConfig, ("image_size",), image_size=112))
    tuning = ("policy", "lp_ft", "epochs", "batch_size", "lr", "lr_decay", "patience", "bn")
    # The measured recipe: the whole network, for longer and in larger batches.
    recipe = {"policy": "full", "epochs": 15, "batch_size": 256, "lr": 3e-4, "lr_decay": 0.8}
    tuning_options = with_defaults(FinetuneConfig, (*tuning, "time_budget_s"), **recipe, patience=4)
    add_options(parser, tuning_options)
    add_options(parser, with_defaults(EmbedConfig, ("limit",)))  # smoke runs
    add_options(parser, with_defaults(FinetuneConfig, ("device",)))
    parser.add_argument("--out", type=Path, help="JSON path (default: results/finetune_*.json)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    out = args.out or RESULTS / f"finetune_{device.type}_{args.image_size}px.json"
    with tempfile.TemporaryDirectory() as tmp:
        run(args, args.store or tmp, device, out)


def run(args: argparse.Namespace, store: str, device: torch.device, out: Path) -> None:
    record: dict[str, Any] = {
        "command": "python benchmarks/finetune.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "libraries": library_versions(("torch", "torchvision", "numpy", "zarr", "dask")),
        "image_size": args.image_size,
        "policy": args.policy,
        "lp_ft": args.lp_ft,
        "epochs_requested": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_decay": args.lr_decay,
        "bn": args.bn,
        "time_budget_s": args.time_budget_s,
        "seconds": {},
    }

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")

    started = time.perf_counter()
    source = EmbedConfig(
        source="fashion-mnist",
        store=store,
        image_size=args.image_size,
        limit=args.limit,
        device=str(device),
        batch_size=256 if device.type == "cuda" else 64,
    )
    summary = embed(source)
    record["seconds"]["embed"] = time.perf_counter() - started
    record["embed"] = {
        "images": summary.embedded,
        "failed": summary.failed,
        "images_per_s": summary.embedded / record["seconds"]["embed"],
        "steady_images_per_s": summary.steady_images_per_s,
    }
    save()
    print(f"embedded {summary.embedded} images in {record['seconds']['embed']:.0f} s", flush=True)

    config = FinetuneConfig(
        feature_set=summary.feature_set,
        store=store,
        policy=args.policy,
        lp_ft=args.lp_ft,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_decay=args.lr_decay,
        patience=args.patience,
        bn=args.bn,
        device=str(device),
        time_budget_s=args.time_budget_s,
    )
    plan = prepare_finetune(config, summary.feature_set)
    record["splits"] = {name: len(split) for name, split in plan.splits.items()}
    phase = time.perf_counter()
    probe_card = ensure_probe(plan)
    probe = probe_card.result
    record["seconds"]["probe"] = time.perf_counter() - phase
    record["probe"] = {
        "head_id": probe.head_id,
        "accuracy": probe.metrics.accuracy,
        "macro_f1": probe.metrics.macro_f1,
        "chosen": probe.chosen,
    }
    save()
    print(f"probe accuracy {probe.metrics.accuracy:.4f}", flush=True)

    history: list[dict[str, Any]] = []

    def on_epoch(row: dict[str, Any]) -> None:
        history.append(row)
        record["history"] = history
        save()
        print(json.dumps(row), flush=True)

    phase = time.perf_counter()
    result = run_finetune(plan, probe_card, on_epoch)
    record["seconds"]["finetune"] = time.perf_counter() - phase
    final = finalize_finetune(plan, result)
    rates = [row["train_images_per_s"] for row in result.history]
    record["finetune"] = {
        "accuracy": final.accuracy,
        "macro_f1": final.macro_f1,
        "accuracy_ci95": final.accuracy_ci95,
        "gain_over_probe": final.gain,
        "epochs": final.epochs,
        "best_epoch": final.best_epoch,
        "stopped": final.stopped,
        "train_images_per_s": statistics.median(rates),
        "skipped_images": final.skipped_images,
    }
    record["history"] = result.history
    record["seconds"]["total"] = time.perf_counter() - started
    save()
    print(json.dumps({k: v for k, v in record.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
