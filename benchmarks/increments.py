"""Increments: a cold embed and a +10 % increment, side by side, on two sources.

(a) Fashion-MNIST IDX (``fashion-mnist``): ``--limit`` 18,000 then 19,800 (``--idx-full``:
    63,000 then all 70,000, about 15 minutes on 2 shared cores); raising the limit only
    adds rows, but within each split the first rows by sample_id are kept, so the new
    test images sort among the known ones and shift the train rows after them: those
    shards copy rows, not objects;
(b) a folder of PNG files written from Fashion-MNIST train images, ``class<label>/
    img<index>.png``: 18,000 files, then 1,800 more (indices 18,000-19,799: appended to
    every class folder, so they sort among the known files of all classes but the last).

After the cold run the store is copied, and the increment runs twice on the two copies:
as it is (the hash cache recognises the known files) and with ``--rehash`` (every file
read, as before the cache).

EfficientNet-Lite0 at 64 px, the library's steps without Prefect, in this one process
(imports paid once, before the first timing; each run starts its own local Dask cluster,
as a CLI run does). Per run: check (listing, content hashes, model check), plan, shards
(copy vs compute, summed over shard tasks), finalize; ratios increment / cold.

    .venv/bin/python benchmarks/increments.py [--repeats 1] [--idx-only | --folder-only]

Writes benchmarks/results/increments.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from transfer_pipe.config import EmbedConfig
from transfer_pipe.data.idx import find_idx_dataset, read_idx
from transfer_pipe.data.sources import _fashion_mnist_root
from transfer_pipe.steps.embed import (
    check_embed_inputs,
    compute_shards,
    finalize_embedding,
    prepare_embedding,
)

RESULTS = Path(__file__).parent / "results" / "increments.json"
BACKBONE, SIZE = "efficientnet_lite0.in1k", 64
FOLDER_BASE, FOLDER_NEW = 18_000, 1_800
IDX_LIMITS = (18_000, 19_800)
IDX_FULL_LIMITS = (63_000, 70_000)


def run(config: EmbedConfig) -> dict[str, Any]:
    """One embed, timed step by step."""
    t0 = time.perf_counter()
    check_embed_inputs(config)  # the manifest (listing, hashes) and the model check
    t1 = time.perf_counter()
    plan = prepare_embedding(config)  # takes the checked manifest; plans the shards
    t2 = time.perf_counter()
    results = compute_shards(plan)
    t3 = time.perf_counter()
    summary = finalize_embedding(plan, results)
    t4 = time.perf_counter()
    return {
        "seconds": round(t4 - t0, 2),
        "check_manifest_hash": round(t1 - t0, 2),
        "plan": round(t2 - t1, 2),
        "shards_wall": round(t3 - t2, 2),
        "finalize": round(t4 - t3, 2),
        "shard_task_seconds_copy": round(sum(r.copy_seconds for r in results), 2),
        "shard_task_seconds_compute": round(sum(r.seconds - r.copy_seconds for r in results), 2),
        "shards": summary.shards,
        "shards_computed": summary.shards_computed,
        "shards_copied_whole": sum(1 for r in results if r.copied),
        "rows": summary.rows,
        "embedded": summary.embedded,
        "reused": summary.reused,
        "failed": summary.failed,
    }


def pair(
    name: str, cold: EmbedConfig, grown: EmbedConfig, before_grow: Any = None
) -> dict[str, Any]:
    """The cold run, then the increment on a copy of its store with the hash cache and
    with ``rehash`` on another copy."""
    logging.info("%s: cold", name)
    first = run(cold)
    if before_grow is not None:
        before_grow()
    rehash_store = f"{grown.store}-rehash"
    shutil.copytree(grown.store, rehash_store)
    logging.info("%s: +10 %%", name)
    second = run(grown)
    logging.info("%s: +10 %%, --rehash", name)
    rehashed = run(replace(grown, store=rehash_store, rehash=True))
    shutil.rmtree(rehash_store, ignore_errors=True)
    grown_share = second["rows"] / first["rows"]
    return {
        "source": name,
        "cold": first,
        "increment": second,
        "increment_rehash": rehashed,
        "ratio_increment_over_cold": round(second["seconds"] / first["seconds"], 3),
        # the cold run of the grown data was not run (time): scaled from the smaller one
        "ratio_increment_over_cold_of_grown_estimate": round(
            second["seconds"] / (first["seconds"] * grown_share), 3
        ),
        "ratio_increment_rehash_over_cold": round(rehashed["seconds"] / first["seconds"], 3),
    }


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, start: int, stop: int) -> None:
    old = time.time() - 3600  # files of an existing folder, not being written now
    for i in range(start, stop):
        path = folder / f"class{int(labels[i])}" / f"img{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(path, format="PNG")
        os.utime(path, (old, old))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--idx-only", action="store_true")
    parser.add_argument("--folder-only", action="store_true")
    parser.add_argument("--idx-full", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="forget earlier runs' results")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="increments-"))
    common = {"backbone": BACKBONE, "image_size": SIZE, "batch_size": 64}
    pairs: list[dict[str, Any]] = []
    started = time.time()
    for repeat in range(args.repeats):
        if not args.folder_only:
            store = work / f"store-idx-{repeat}"
            small, large = IDX_FULL_LIMITS if args.idx_full else IDX_LIMITS
            base = EmbedConfig(source="fashion-mnist", store=str(store), limit=small, **common)
            full = replace(base, limit=large)
            name = f"fashion-mnist IDX --limit {small:,} -> {large:,}"
            pairs.append({"repeat": repeat, **pair(name, base, full)})
            shutil.rmtree(store, ignore_errors=True)
        if not args.idx_only:
            root = _fashion_mnist_root()
            files = find_idx_dataset(root)["train"]
            images, labels = read_idx(files[0]), read_idx(files[1])
            folder, store = work / f"pngs-{repeat}", work / f"store-png-{repeat}"
            write_pngs(folder, images, labels, 0, FOLDER_BASE)
            config = EmbedConfig(source=str(folder), store=str(store), **common)
            grow = functools.partial(
                write_pngs, folder, images, labels, FOLDER_BASE, FOLDER_BASE + FOLDER_NEW
            )
            name = f"folder of PNG files {FOLDER_BASE:,} -> {FOLDER_BASE + FOLDER_NEW:,}"
            pairs.append({"repeat": repeat, **pair(name, config, config, grow)})
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
    run_record = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": "python benchmarks/increments.py "
        + " ".join(f"--{k.replace('_', '-')}" for k, v in vars(args).items() if v is True),
        "load_average_after": os.getloadavg()[0],
        "total_seconds": round(time.time() - started, 1),
        "pairs": pairs,
    }
    # Runs accumulate (the machine is shared and noisy: read them side by side);
    # --fresh starts the file over.
    runs = []
    if RESULTS.exists() and not args.fresh:
        runs = json.loads(RESULTS.read_text()).get("runs", [])
    result = {
        "what": "cold embed vs +10 % increment (library steps, no Prefect, one process)",
        "backbone": BACKBONE,
        "image_size": SIZE,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other users)",
        "runs": [*runs, run_record],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(run_record, indent=2))


if __name__ == "__main__":
    main()
