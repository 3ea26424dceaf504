"""Embed benchmark: throughput vs. the raw forward pass, warm/incremental reruns, memory.

Measured side by side in one run on one machine (ratios, not absolute times, are the
result on a shared machine). Writes benchmarks/results/embed_throughput.json.

    .venv/bin/python benchmarks/embed_throughput.py [--image-size 64] [--limit N]
        [--memory-images 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from transfer_pipe.app.cli import add_options
from transfer_pipe.backbones import get_backbone
from transfer_pipe.backbones.taps import LayerTap
from transfer_pipe.config import EmbedConfig, with_defaults
from transfer_pipe.data.read import read_image
from transfer_pipe.data.sources import load_manifest
from transfer_pipe.store import open_store

BACKBONE = "efficientnet_lite0.in1k"
RESULTS = Path(__file__).parent / "results" / "embed_throughput.json"


def raw_forward_rate(image_size: int, batch_size: int, images: int) -> float:
    """Images/s of the bare model on pre-decoded, preprocessed tensors (all cores)."""
    spec = get_backbone(BACKBONE)
    preprocessing = spec.preprocessing.replace(image_size=image_size)
    uris = load_manifest("fashion-mnist").table["uri"].tolist()[:images]
    tensors = torch.stack([preprocessing(read_image(u)) for u in uris])
    torch.set_num_threads(os.cpu_count() or 1)
    tap = LayerTap(spec.build(), ["penultimate"])
    with torch.inference_mode():
        tap(tensors[:batch_size].contiguous(memory_format=torch.channels_last))  # warm-up
        started = time.perf_counter()
        for start in range(0, len(tensors), batch_size):
            batch = tensors[start : start + batch_size].contiguous(
                memory_format=torch.channels_last
            )
            tap(batch)
        return len(tensors) / (time.perf_counter() - started)


def raw_streams_rate(image_size: int, batch_size: int, images: int) -> float:
    """Images/s of the bare model in one stream per core, each with one torch thread
    (the layout of the local Dask worker). Unlike one stream on all cores, it does not
    collapse when other processes load the machine (OpenMP's threads wait for each other)."""
    spec = get_backbone(BACKBONE)
    preprocessing = spec.preprocessing.replace(image_size=image_size)
    uris = load_manifest("fashion-mnist").table["uri"].tolist()[:images]
    tensors = torch.stack([preprocessing(read_image(u)) for u in uris])
    tensors = tensors.contiguous(memory_format=torch.channels_last)
    streams = os.cpu_count() or 1
    ready = threading.Barrier(streams + 1)

    def stream(part: torch.Tensor) -> None:
        torch.set_num_threads(1)
        tap = LayerTap(spec.build(), ["penultimate"])
        with torch.inference_mode():
            tap(part[:batch_size])  # warm-up
            ready.wait()
            for start in range(0, len(part), batch_size):
                tap(part[start : start + batch_size])

    per = len(tensors) // streams
    threads = [
        threading.Thread(target=stream, args=(tensors[k * per : (k + 1) * per],))
        for k in range(streams)
    ]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return per * streams / (time.perf_counter() - started)


class PeakMemory:
    """Peak resident memory of a process tree (the CLI plus its Dask workers)."""

    def __init__(self, pid: int) -> None:
        self.peak = 0
        self._root = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self._root, *self._root.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_cli(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `transfer-pipe embed ... --json`; returns its summary, wall time, peak memory."""
    command = [sys.executable, "-m", "transfer_pipe.app.cli", "embed", *args, "--json"]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    memory = PeakMemory(process.pid)
    stdout, _ = process.communicate()
    wall = time.perf_counter() - started
    peak = memory.stop()
    if process.returncode != 0:
        raise SystemExit(f"{command} failed with {process.returncode}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"summary": summary, "wall_s": wall, "peak_rss_bytes": peak}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_prefect_server(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home)}
    prefect = str(Path(sys.executable).with_name("prefect"))
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    for _ in range(300):
        try:
            import urllib.request

            urllib.request.urlopen(f"{url}/health", timeout=1)
            return server, url
        except OSError:
            time.sleep(1)
    server.kill()
    raise SystemExit("the Prefect server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    embedding = ("image_size", "batch_size", "limit")  # no limit: all 70,000 images
    add_options(parser, with_defaults(EmbedConfig, embedding, image_size=64))
    parser.add_argument("--raw-images", type=int, default=8192, help="images for the raw rate")
    parser.add_argument(
        "--memory-images", type=int, default=10_000, help="the smaller cold run (peak memory)"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tp-bench-"))
    total = args.limit or len(load_manifest("fashion-mnist"))
    base = ["fashion-mnist", "--image-size", str(args.image_size)]
    base += ["--batch-size", str(args.batch_size)]
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect-home")}
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "300"
    server, api = start_prefect_server(work / "prefect-server-home")
    served = {**env, "PREFECT_API_URL": api}
    try:
        results: dict[str, Any] = {}
        # 1. The raw forward rate of the same model, size and batch, measured just before
        #    and just after the cold run (the machine is shared: the load drifts).
        raw_before = raw_forward_rate(args.image_size, args.batch_size, args.raw_images)
        # 2. Cold run of the whole dataset against a running server, as scheduled runs are.
        cold = run_cli([*base, "--store", str(work / "full"), "--limit", str(total)], served)
        raw_after = raw_forward_rate(args.image_size, args.batch_size, args.raw_images)
        raw = (raw_before + raw_after) / 2
        # 2b. A cold run of a smaller part, for peak memory against the size of the data
        #     (it must stay flat), between two more raw measures (their spread is the noise).
        small = min(args.memory_images, total)
        cold_small = run_cli([*base, "--store", str(work / "small"), "--limit", str(small)], served)
        raw_last = raw_forward_rate(args.image_size, args.batch_size, args.raw_images)
        raws = (raw_before, raw_after, raw_last)
        raw_streams = raw_streams_rate(args.image_size, args.batch_size, args.raw_images)
        # 3. Warm rerun: same data, same server.
        warm = run_cli([*base, "--store", str(work / "full"), "--limit", str(total)], served)
        # 4. The same warm rerun with a temporary server: what the start-up costs.
        ephemeral = run_cli([*base, "--store", str(work / "full"), "--limit", str(total)], env)
        # 5. Incremental: a cold run on 10/11 of the data, then the whole (10% new images).
        part = round(total / 1.1)
        inc_store = str(work / "incremental")
        part_cold = run_cli([*base, "--store", inc_store, "--limit", str(part)], served)
        incremental = run_cli([*base, "--store", inc_store, "--limit", str(total)], served)

        key = cold["summary"]["feature_set"]
        store = open_store(str(work / "full"))
        end_to_end = total / cold["wall_s"]
        steady = cold["summary"]["steady_images_per_s"]
        results = {
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            },
            "setup": {
                "backbone": BACKBONE,
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "images": total,
                "raw_forward_images": args.raw_images,
            },
            "raw_forward_images_per_s": raw,
            "raw_forward_before_after": [raw_before, raw_after],
            "cli_end_to_end_images_per_s": end_to_end,
            "steady_state_images_per_s": steady,
            "ratio_cli_vs_raw": end_to_end / raw,
            "ratio_steady_vs_raw": steady / raw,
            "cold_wall_s": cold["wall_s"],
            "warm_wall_s": warm["wall_s"],
            "ratio_warm_vs_cold": warm["wall_s"] / cold["wall_s"],
            "warm_embedded": warm["summary"]["embedded"],
            "startup_without_server_s": ephemeral["wall_s"],
            "incremental_base_wall_s": part_cold["wall_s"],
            "incremental_wall_s": incremental["wall_s"],
            "incremental_new_images": incremental["summary"]["embedded"],
            "ratio_incremental_vs_cold": incremental["wall_s"] / cold["wall_s"],
            "ratio_incremental_vs_base_cold": incremental["wall_s"] / part_cold["wall_s"],
            "raw_forward_spread": [min(raws), max(raws)],
            "raw_forward_after_small_run": raw_last,
            "raw_forward_one_stream_per_core_images_per_s": raw_streams,
            "ratio_steady_vs_raw_streams": steady / raw_streams,
            "peak_rss_bytes": cold["peak_rss_bytes"],
            "peak_rss_bytes_by_images": {
                str(small): cold_small["peak_rss_bytes"],
                str(total): cold["peak_rss_bytes"],
            },
            "small_cold_steady_images_per_s": cold_small["summary"]["steady_images_per_s"],
            "store_bytes_per_image": store.nbytes(key) / total,
        }
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
