"""Steady-state shard throughput of the local Dask worker layouts against the raw forward
pass, measured alternately (raw, layouts, raw, layouts) with no Prefect server running.

    .venv/bin/python benchmarks/worker_layouts.py [--images 10000] [--repeats 2]

Writes benchmarks/results/worker_layouts.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from embed_throughput import raw_forward_rate

from transfer_pipe import steps
from transfer_pipe.config import EmbedConfig
from transfer_pipe.steps.embed import steady_rate

RESULTS = Path(__file__).parent / "results" / "worker_layouts.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tp-layouts-"))
    rounds = []
    try:
        for repeat in range(args.repeats):
            raw = raw_forward_rate(args.image_size, 64, 4096)
            layouts = {}
            for workers in (1, 2, 3):
                config = EmbedConfig(
                    source="fashion-mnist",
                    store=str(work / f"{repeat}-{workers}"),
                    image_size=args.image_size,
                    limit=args.images,
                    workers=workers,
                )
                results = steps.compute_shards(steps.prepare_embedding(config))
                steady = steady_rate(results) or 0.0
                layouts[f"{workers}_worker_threads"] = {
                    "steady_images_per_s": steady,
                    "ratio_vs_raw": steady / raw,
                }
            rounds.append({"raw_forward_images_per_s": raw, "layouts": layouts})
            print(json.dumps(rounds[-1], indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.write_text(json.dumps({"images": args.images, "rounds": rounds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
