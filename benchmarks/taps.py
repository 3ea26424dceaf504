"""What ``train --layer auto`` costs at embed time: the penultimate layer alone against the
top taps (``--layers top``: the penultimate layer and the last three stages, one forward
pass), through the CLI a user runs (start-up included), alternately in fresh stores so
both see the same load. Bytes per image are the stored arrays' size on disk divided by
the rows.

    python benchmarks/taps.py [--limit 10000] [--image-size 64] [--rounds 2]

Writes ``benchmarks/results/taps.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transfer_pipe.app.cli import add_options
from transfer_pipe.config import EmbedConfig, with_defaults

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "taps.json"
CLI = str(Path(sys.executable).with_name("transfer-pipe"))
TAPS = {"penultimate": "penultimate", "top": "top"}


def _embed(store: Path, layers: str, limit: int, image_size: int) -> tuple[float, dict]:
    command = [CLI, "embed", "fashion-mnist", "--store", str(store), "--layers", layers,
               "--limit", str(limit), "--image-size", str(image_size), "--json"]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.monotonic() - started
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return seconds, summary


def _bytes_on_disk(store: Path) -> int:
    arrays = [p for p in store.rglob("*") if p.is_file() and "cache" not in p.parts]
    return sum(p.stat().st_size for p in arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    embedding = with_defaults(EmbedConfig, ("limit", "image_size"), limit=10_000, image_size=64)
    add_options(parser, embedding)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULT)
    options = parser.parse_args()
    load = os.getloadavg()
    runs: dict[str, list[dict]] = {name: [] for name in TAPS}
    base = Path(tempfile.mkdtemp(prefix="transfer-pipe-taps-"))
    try:
        for round_ in range(options.rounds):
            for name, layers in TAPS.items():
                store = base / f"{name}-{round_}"
                seconds, summary = _embed(store, layers, options.limit, options.image_size)
                runs[name].append(
                    {"seconds": round(seconds, 2), "bytes": _bytes_on_disk(store),
                     "rows": summary["rows"], "layers": summary.get("layers")}
                )  # fmt: skip
                print(f"{name}: {seconds:.1f} s", flush=True)
                shutil.rmtree(store, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    median = {
        name: sorted(r["seconds"] for r in found)[len(found) // 2] for name, found in runs.items()
    }
    per_image = {name: found[0]["bytes"] / found[0]["rows"] for name, found in runs.items()}
    result = {
        "benchmark": "taps",
        "limit": options.limit,
        "image_size": options.image_size,
        "runs": runs,
        "median_seconds": median,
        "top_over_penultimate_seconds": round(median["top"] / median["penultimate"], 3),
        "bytes_per_image": {name: round(value) for name, value in per_image.items()},
        "top_over_penultimate_bytes": round(per_image["top"] / per_image["penultimate"], 3),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores (load {load[0]:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end), Python {platform.python_version()}"
        ),
    }
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
