"""Nightly increments as a user pays for them: the CLI against a running server, night by
night, with the library-only figure beside it.

A folder of ``--images`` (default 20,000) PNG files written from Fashion-MNIST train
images (``class<label>/img<index:05d>.png``), embedded cold with EfficientNet-Lite0 (the
default backbone) at 64 px, then 8 nights: nights 1-7 each add 1 % new files, night 8
removes 0.5 % of the files (random, seeded) and rewrites another 0.5 % with the pixels of
another Fashion-MNIST image (same name, new content). ``transfer-pipe serve`` is started
once (its start-up reported, not counted per night), with its Dask worker: torch
imported, the model kept loaded between runs, every run's shards sent to it. Each night
is one ``transfer-pipe embed FOLDER --store S --image-size 64 --json`` subprocess, timed
from its start to its exit (interpreter, imports, listing and hashing, model check,
Prefect, the shards); its own process imports no torch. Its
phases are read off Prefect's log lines: start-up (process start to the flow run's first
line), prepare, shards, finalize, the flow's end and the process's exit. A run on the
unchanged folder (a night without changes) is timed after the cold run, after night 4
and after night 8; their median is the no-change figure. The cold run is timed once more
at the end (the last folder into a fresh store): the cores are shared, and a cold figure
taken under load makes every time target easier, so each time target is also checked
against that one. Every CLI run also records its CPU seconds (the process and its
children) and the load average before it.

Beside each CLI night: the same night through the library's steps in this process (the
calls ``transfer_pipe.steps.embed.embed`` makes, timed one by one: check (listing,
hashing, model check), prepare, shards, finalize) on a copy of the store as it was before
the night; and a clean embed of the night's folder into a fresh store, whose features
every version of the nightly store must equal bit for bit (compared by sample id after
the 8 nights, and the last version again after ``gc``). The library cold figure is the
clean embed of the first folder (a fresh store is a copy of the empty one).

After the nights, side by side on the same store: +1 % nights alternately on serve's
worker and on a cluster the run starts in its own process (``DASK_SCHEDULER_ADDRESS=``
empty: what every night paid before serve had a worker), 3 of each.

Per night: CLI seconds and their ratio to the cold run; bytes written (the version's
``new_bytes``, and the store's growth by ``du -sb``) over the version's size (``nbytes``,
what it reads); the store's size. Targets, each met or not with its numbers:

- time: night <= no-change + (added + changed) / cold rows x cold + 0.03 x cold;
- bytes: written <= (added + changed) / rows x version bytes + 0.01 x version bytes;
- the store after the 8 nights <= 1.2 x the last version's bytes, and <= 1.1 x after
  ``transfer-pipe gc --keep-last 1`` (through the CLI);
- every version equals a clean embed of its night's folder, bit for bit;
- Fashion-MNIST IDX (``fashion-mnist``), through the CLI against the same server: cold
  ``--limit 63000``, then all 70,000, then a no-change rerun: increment <= no-change +
  0.13 x cold (``--skip-idx`` leaves it out: the longest part);
- reading all rows of the last version (``store.load(key, layer="penultimate")``, a
  fresh store object each time) at least 0.9 x as fast as the previous release's layout
  (commit 85aa910, checked out at /tmp/oldrel): the same rows written with that code's
  own API (create, write_shard, mark_complete) and read by it, each layout in its own
  long-lived process (PYTHONPATH picks the code), rounds alternating; a plain Zarr read
  of the old layout's contiguous array is the floor.

    .venv/bin/python benchmarks/nightly.py                          # 10-20 min on 2 cores
    .venv/bin/python benchmarks/nightly.py --images 2000 --skip-idx  # smoke run, 2-4 min

While the library is being edited, measure a snapshot of it (transfer_pipe/, flows/,
deploy/ copied to SNAP), run from SNAP so that every subprocess imports it too:

    cd SNAP && PYTHONPATH=SNAP /work/main/.venv/bin/python /work/main/benchmarks/nightly.py

Writes benchmarks/results/nightly.json (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

import transfer_pipe
from transfer_pipe.config import EmbedConfig
from transfer_pipe.data.idx import find_idx_dataset, read_idx
from transfer_pipe.data.sources import _fashion_mnist_root
from transfer_pipe.run_context import RunContext
from transfer_pipe.steps.embed import (
    check_embed_inputs,
    compute_shards,
    finalize_embedding,
    prepare_embedding,
    release_claim,
)
from transfer_pipe.store import open_store

sys.path.insert(0, str(Path(__file__).parent))
from serve_stack import Stack, serve_stack

REPO = Path(__file__).resolve().parent.parent
# Where the transfer_pipe measured here lives: the repository, or a snapshot of it first on
# PYTHONPATH (the CLI subprocesses and the read worker inherit it).
LIBRARY = Path(transfer_pipe.__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "nightly.json"
SIZE = 64
LAYER = "penultimate"
SEED = 0
ADD_NIGHTS = 7
WARM_ROUNDS = 3  # +1 % nights on serve's worker and on the run's own cluster, alternately
ADD_SHARE, REMOVE_SHARE, REWRITE_SHARE = 0.01, 0.005, 0.005
NOCHANGE_AFTER = (0, 4, 8)  # nights after which the unchanged folder is run again
IDX_LIMITS = (63_000, 70_000)
OLD_RELEASE, OLD_COMMIT = Path("/tmp/oldrel"), "85aa910"
READ_ROUNDS = 5
TIME_SLACK, BYTES_SLACK, IDX_SHARE = 0.03, 0.01, 0.13
STORE_NO_GC, STORE_GC, READ_FLOOR = 1.2, 1.1, 0.9

# Runs in a process of its own (``python -c``), with PYTHONPATH choosing whose
# transfer_pipe it imports: this release's or the previous one's. Both read with the
# same call. One request per line: "load URL KEY" or "zarr ROOT ARRAY_PATH"; one answer
# per line: seconds, rows, a digest of the values (what was read, beyond its timing).
READ_WORKER = """
import hashlib, sys, time
import numpy as np
import pandas as pd
import zarr, zarr.storage
from transfer_pipe.store.zarr_store import ZarrFeatureStore

for line in sys.stdin:
    what, url, name = line.split()
    started = time.perf_counter()
    if what == "load":
        values = ZarrFeatureStore(url).load(name, layer="penultimate").features
    else:
        store = zarr.storage.LocalStore(url, read_only=True)
        values = zarr.open_array(store, path=name, mode="r")[:]
    seconds = time.perf_counter() - started
    values = np.ascontiguousarray(values)
    digest = hashlib.sha256(values.tobytes()).hexdigest()[:16]
    print(seconds, values.shape[0], digest, flush=True)
"""

# The previous release writes one feature set with its own API (run with its code first
# on PYTHONPATH): argv URL KEY ROWS_PARQUET FEATURES_NPY SHARD_SIZE.
OLD_BUILD = """
import sys
import numpy as np, pandas as pd
from transfer_pipe.store import FeatureSetSpec, ShardStats, ZarrFeatureStore

url, key, rows_file, features_file, shard_size = sys.argv[1:]
rows, features = pd.read_parquet(rows_file), np.load(features_file)
spec = FeatureSetSpec(
    key=key, embedding_key="nightly", source="nightly", backbone="efficientnet_lite0.in1k",
    weights_digest="w", preprocessing={}, layers=("penultimate",),
    layer_dims={"penultimate": features.shape[1]}, dtype="float32", data_digest="d",
    rows=len(rows), shard_size=int(shard_size),
)
store = ZarrFeatureStore(url)
store.create(spec, rows)
for shard in range(spec.n_shards):
    span = spec.shard_rows(shard)
    block = features[span.start : span.stop]
    store.write_shard(key, shard, {"penultimate": block}, [""] * len(span), ShardStats(0, 0, 0.0))
store.mark_complete(key, {})
print(store.status(key))
"""


class CommandFailed(SystemExit):
    """A CLI command failed: its stderr was printed; the benchmark stops."""


# --- the folder --------------------------------------------------------------------------


class Folder:
    """The PNG folder and what each file holds: name -> Fashion-MNIST train index."""

    def __init__(self, root: Path, images: np.ndarray, labels: np.ndarray) -> None:
        self.root, self.images, self.labels = root, images, labels
        self.files: dict[str, int] = {}
        self.used: set[int] = set()  # every image any file ever held

    def name_of(self, index: int) -> str:
        return f"class{int(self.labels[index])}/img{index:05d}.png"

    def write(self, name: str, index: int, stamp: float) -> None:
        """``name`` with the pixels of image ``index``, modified at ``stamp`` (a file
        that arrived during the day: older than the hash cache's racy window)."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.images[index]).save(path, format="PNG")
        os.utime(path, (stamp, stamp))
        self.files[name] = index
        self.used.add(index)

    def unused(self, count: int) -> list[int]:
        """``count`` images no file ever held (their contents are new to every lineage)."""
        return [i for i in range(len(self.images)) if i not in self.used][:count]

    def add(self, indices: Sequence[int]) -> None:
        stamp = time.time() - 600
        for index in indices:
            self.write(self.name_of(index), index, stamp)

    def remove(self, names: Sequence[str]) -> None:
        for name in names:
            (self.root / name).unlink()
            del self.files[name]

    def rewrite(self, names: Sequence[str], indices: Sequence[int]) -> None:
        stamp = time.time() - 600
        for name, index in zip(names, indices, strict=True):
            self.write(name, index, stamp)


# --- measuring ---------------------------------------------------------------------------


def du_bytes(path: Path) -> int:
    """``du -sb``: apparent bytes of everything under ``path``."""
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _prefect_marks(stderr: str, started: float) -> dict[str, float]:
    """Epoch seconds of Prefect's lines (``HH:MM:SS.mmm | INFO | ...``, local time): the
    flow run's first line, each task's end, the flow's end."""
    marks: dict[str, float] = {}
    day = datetime.fromtimestamp(started).replace(hour=0, minute=0, second=0, microsecond=0)
    for line in stderr.splitlines():
        if " | " not in line or len(line) < 12:
            continue
        try:
            clock = datetime.strptime(line[:12], "%H:%M:%S.%f")
        except ValueError:
            continue
        stamp = day + timedelta(
            hours=clock.hour,
            minutes=clock.minute,
            seconds=clock.second,
            microseconds=clock.microsecond,
        )
        epoch = stamp.timestamp()
        if epoch < started - 3600:  # past midnight
            epoch += 86400
        if "Beginning flow run" in line:
            marks.setdefault("begin", epoch)
        elif "Task run 'prepare-" in line and "Finished in state" in line:
            marks["prepare"] = epoch
        elif "Task run 'shards-" in line and "Finished in state" in line:
            marks["shards"] = epoch
        elif "Task run 'finalize-" in line and "Finished in state" in line:
            marks["finalize"] = epoch
        elif "Flow run '" in line and "Finished in state" in line:
            marks["flow_end"] = epoch
    return marks


def cli_phases(stderr: str, started: float, ended: float) -> dict[str, float]:
    """Seconds of a CLI embed's phases: ``startup`` (process start to the flow run's
    first line: interpreter, imports, listing and hashing, model check, Prefect set-up,
    the flow run created), ``prepare``, ``shards`` (none on a run with nothing to
    embed), ``finalize``, ``flow_end`` (artifacts, final state) and ``exit``."""
    marks = _prefect_marks(stderr, started)
    if not {"begin", "prepare", "finalize", "flow_end"} <= set(marks):
        return {}
    shards_end = marks.get("shards", marks["prepare"])
    return {
        "startup": round(marks["begin"] - started, 2),
        "prepare": round(marks["prepare"] - marks["begin"], 2),
        "shards": round(shards_end - marks["prepare"], 2),
        "finalize": round(marks["finalize"] - shards_end, 2),
        "flow_end": round(marks["flow_end"] - marks["finalize"], 2),
        "exit": round(ended - marks["flow_end"], 2),
    }


@dataclass
class CliRun:
    """One CLI command: its wall seconds (start-up included), last JSON line, phases, and
    its CPU seconds (less sensitive than wall seconds to what else the cores run)."""

    command: list[str]
    seconds: float
    result: Any
    phases: dict[str, float] = field(default_factory=dict)
    load_average_before: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0  # user + system of the process and its children


def run_cli(stack: Stack, *args: str, env: dict[str, str] | None = None) -> CliRun:
    """``transfer-pipe ARGS`` as a user runs it against ``stack``, timed; stops the
    benchmark with the command's stderr when it fails."""
    before = load_average()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    process = stack.cli(*args, env=env)
    ended = time.time()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    command = ["transfer-pipe", *args]
    if process.returncode != 0:
        print(process.stderr[-8000:], file=sys.stderr)
        raise CommandFailed(f"`{' '.join(command)}` failed (exit {process.returncode}): see above")
    lines = [line for line in process.stdout.splitlines() if line.startswith(("{", "["))]
    if not lines:
        print(process.stdout[-4000:], process.stderr[-4000:], file=sys.stderr)
        raise CommandFailed(f"`{' '.join(command)}` printed no JSON line")
    return CliRun(
        command=command,
        seconds=round(ended - started, 2),
        result=json.loads(lines[-1]),
        phases=cli_phases(process.stderr, started, ended),
        load_average_before=before,
        cpu_seconds=round(cpu, 2),
    )


def library_embed(config: EmbedConfig) -> dict[str, Any]:
    """One embed through the library's steps in this process, as ``embed(config)`` runs
    them, each timed."""
    context = RunContext()
    t0 = time.perf_counter()
    check_embed_inputs(config, context=context)  # listing, content hashes, model, store
    t1 = time.perf_counter()
    plan = prepare_embedding(config, context)  # the checked manifest; the version planned
    try:
        t2 = time.perf_counter()
        results = compute_shards(plan)  # a local Dask cluster: only the new shards
        t3 = time.perf_counter()
        summary = finalize_embedding(plan, results)
        t4 = time.perf_counter()
    finally:
        release_claim(plan)
    return {
        "seconds": round(t4 - t0, 2),
        "phases": {
            "check": round(t1 - t0, 2),
            "prepare": round(t2 - t1, 2),
            "shards": round(t3 - t2, 2),
            "finalize": round(t4 - t3, 2),
        },
        "key": summary.feature_set,
        "embedded": summary.embedded,
        "reused": summary.reused,
        "rows": summary.rows,
    }


def embed_config(folder: Path, store: Path) -> EmbedConfig:
    """What ``transfer-pipe embed FOLDER --store STORE --image-size 64`` runs."""
    return EmbedConfig(source=str(folder), store=str(store), image_size=SIZE)


def embed_args(source: str, store: Path, *extra: str) -> list[str]:
    return ["embed", source, "--store", str(store), "--image-size", str(SIZE), *extra, "--json"]


# --- the nights --------------------------------------------------------------------------


@dataclass
class Night:
    """One night: the CLI run, the library's, the version it wrote, the store around it."""

    night: int
    what: str
    files: int
    cli: CliRun
    library: dict[str, Any]
    clean: dict[str, Any]  # the night's folder embedded into a fresh store
    key: str
    rows: int
    added: int
    removed: int
    changed: int
    new_bytes: int
    version_bytes: int
    du_growth_bytes: int
    store_bytes: int  # FeatureStore.store_nbytes() after the night
    store_du_bytes: int


def night_plan(images: int, total: int) -> list[tuple[str, int, int, int]]:
    """(what, added, removed, rewritten) per night: 7 nights of +1 %, one of -0.5 % and
    0.5 % rewritten."""
    add, remove, rewrite = (round(images * s) for s in (ADD_SHARE, REMOVE_SHARE, REWRITE_SHARE))
    if images + ADD_NIGHTS * add + rewrite > total:
        raise SystemExit(f"--images {images}: Fashion-MNIST train has only {total} images")
    plan = [(f"+{add} new files", add, 0, 0) for _ in range(ADD_NIGHTS)]
    plan.append((f"-{remove} files, {rewrite} rewritten", 0, remove, rewrite))
    return plan


def version_info(store: Path, key: str) -> dict[str, int]:
    info = open_store(str(store)).info(key)
    return {
        "rows": info.rows,
        "added": info.added,
        "removed": info.removed,
        "changed": info.changed,
        "new_bytes": info.new_bytes,
        "version_bytes": info.nbytes,
    }


def run_night(
    stack: Stack,
    work: Path,
    folder: Folder,
    store: Path,
    night: int,
    what: str,
) -> Night:
    """The night on the folder as it is now: the CLI run, the library's on a copy of the
    store as it was before, and a clean embed into a fresh store."""
    copy = work / "store-library"
    if night > 0:
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(store, copy)
    du_before = du_bytes(store) if store.exists() else 0
    print(f"night {night} ({what}): CLI embed of {len(folder.files):,} files", flush=True)
    cli = run_cli(stack, *embed_args(str(folder.root), store))
    key = str(cli.result["feature_set"])
    store_du = du_bytes(store)
    info = version_info(store, key)
    print(f"  {cli.seconds:.1f} s, {cli.result['embedded']} embedded; clean embed", flush=True)
    clean = library_embed(embed_config(folder.root, work / f"clean-{night}"))
    if night > 0:
        print("  library embed on a copy of the store", flush=True)
        library = library_embed(embed_config(folder.root, copy))
        shutil.rmtree(copy, ignore_errors=True)
    else:  # a copy of the empty store is a fresh store: the clean embed is the same run
        library = clean
    if library["key"] != key or clean["key"] != key:
        raise SystemExit(f"night {night}: CLI {key}, library {library['key']}, {clean['key']}")
    return Night(
        night=night,
        what=what,
        files=len(folder.files),
        cli=cli,
        library=library,
        clean=clean,
        key=key,
        **info,
        du_growth_bytes=store_du - du_before,
        store_bytes=open_store(str(store)).store_nbytes(),
        store_du_bytes=store_du,
    )


def differing_rows(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Rows where two arrays differ in any bit (NaN rows equal NaN rows)."""
    same = np.all(ours == theirs, axis=1) | np.all(np.isnan(ours) & np.isnan(theirs), axis=1)
    return ~same


def max_abs_diff(ours: np.ndarray, theirs: np.ndarray) -> float:
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    return float(np.nanmax(diff)) if diff.size else 0.0


def compare(
    store: Path, key: str, clean_store: Path, clean_key: str, appended_by: dict[int, int]
) -> dict[str, Any]:
    """Version ``key`` read back against the clean embed, by sample id, bit for bit; the
    rows that differ counted by the night that appended them (``appended_by``: lineage
    shard -> night)."""
    nightly_store = open_store(str(store))
    mine = nightly_store.load(key, layer=LAYER)
    clean = open_store(str(clean_store)).load(
        clean_key, layer=LAYER, sample_ids=list(mine.sample_ids)
    )
    ours, theirs = np.asarray(mine.features), np.asarray(clean.features)
    clean_ids = set(open_store(str(clean_store)).row_table(clean_key, ["sample_id"])["sample_id"])
    differ = differing_rows(ours, theirs)
    table = nightly_store.row_table(key, ["sample_id"]).set_index("sample_id")
    shard_size = nightly_store.spec(key).shard_size
    shards = table.loc[mine.sample_ids[differ], "row"].to_numpy() // shard_size
    by_night: dict[str, int] = {}
    for shard in shards.tolist():
        night = str(appended_by.get(int(shard), "?"))
        by_night[night] = by_night.get(night, 0) + 1
    return {
        "key": key,
        "rows": len(ours),
        "same_sample_ids": clean_ids == set(mine.sample_ids),
        "bit_identical": bool(np.array_equal(ours, theirs, equal_nan=True)),
        "rows_differing": int(differ.sum()),
        "rows_differing_by_night_appended": by_night,
        "max_abs_diff": max_abs_diff(ours, theirs),
        "max_abs_value": float(np.nanmax(np.abs(theirs))) if theirs.size else 0.0,
    }


def clean_agreement(first: tuple[Path, str], second: tuple[Path, str]) -> dict[str, Any]:
    """Two clean embeds (fresh stores, other folders) on the images they share (same
    sample id, same content): does the same image give the same bits in both?"""
    loaded = []
    for path, key in (first, second):
        store = open_store(str(path))
        hashes = store.row_table(key, ["sample_id", "content_hash"]).set_index("sample_id")
        features = store.load(key, layer=LAYER)
        ids = pd.Index(features.sample_ids)
        loaded.append((ids, hashes["content_hash"], np.asarray(features.features)))
    (ids_a, hash_a, values_a), (ids_b, hash_b, values_b) = loaded
    common = ids_a.intersection(ids_b)
    common = common[(hash_a.loc[common].to_numpy() == hash_b.loc[common].to_numpy())]
    ours, theirs = values_a[ids_a.get_indexer(common)], values_b[ids_b.get_indexer(common)]
    return {
        "rows_compared": len(common),
        "rows_differing": int(differing_rows(ours, theirs).sum()),
        "max_abs_diff": max_abs_diff(ours, theirs),
    }


# --- reading against the previous release ------------------------------------------------


class Reader:
    """A long-lived ``READ_WORKER`` process with one release's code."""

    def __init__(self, pythonpath: Path, cwd: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", READ_WORKER],
            env=env,
            cwd=cwd,  # not the repository: '' on sys.path must not find this release
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, what: str, url: Path, name: str) -> tuple[float, int, str]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{what} {url} {name}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the read worker ({what} {url} {name}) died")
        seconds, rows, digest = line.split()
        return float(seconds), int(rows), digest

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(60)


def read_speed(work: Path, store: Path, key: str) -> dict[str, Any]:
    """``load`` of all rows of version ``key`` against the same rows in the previous
    release's layout, rounds alternating; and a plain Zarr read of those rows."""
    if not (OLD_RELEASE / "transfer_pipe" / "store" / "zarr_store.py").exists():
        return {"skipped": f"the previous release is not checked out at {OLD_RELEASE}"}
    feature_store = open_store(str(store))
    loaded = feature_store.load(key, layer=LAYER)
    table = feature_store.row_table(key).set_index("sample_id").loc[list(loaded.sample_ids)]
    rows = table.reset_index().loc[:, ["sample_id", "uri", "label", "split", "content_hash"]]
    rows_file, features_file = work / "old-rows.parquet", work / "old-features.npy"
    rows.astype(str).to_parquet(rows_file, index=False)
    np.save(features_file, np.asarray(loaded.features, dtype=np.float32))
    old_store, old_key = work / "store-old-layout", "nightly-old-layout"
    shard_size = feature_store.spec(key).shard_size
    paths = [str(rows_file), str(features_file), str(shard_size)]
    built = subprocess.run(
        [sys.executable, "-c", OLD_BUILD, str(old_store), old_key, *paths],
        env={**os.environ, "PYTHONPATH": str(OLD_RELEASE)},
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0 or built.stdout.split()[-1:] != ["complete"]:
        print(built.stderr[-4000:], file=sys.stderr)
        raise SystemExit("writing the old layout with the previous release's code failed")
    old, new = Reader(OLD_RELEASE, work), Reader(LIBRARY, work)
    floor_path = f"feature_sets/{old_key}/features/{LAYER}"
    times: dict[str, list[float]] = {"new": [], "old": [], "zarr": []}
    digests: dict[str, set[str]] = {"new": set(), "old": set(), "zarr": set()}
    try:
        jobs = {
            "new": lambda: new.ask("load", store, key),
            "old": lambda: old.ask("load", old_store, old_key),
            "zarr": lambda: new.ask("zarr", old_store, floor_path),
        }
        for job in jobs.values():  # warm: imports, page cache
            job()
        for round_ in range(READ_ROUNDS):
            order = ["old", "new", "zarr"] if round_ % 2 == 0 else ["new", "old", "zarr"]
            for name in order:
                seconds, count, digest = jobs[name]()
                times[name].append(round(seconds, 4))
                digests[name].add(f"{count}:{digest}")
    finally:
        old.close()
        new.close()
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "rows": len(rows),
        "dim": int(np.asarray(loaded.features).shape[1]),
        "shard_size": shard_size,
        "lineage_shards_read": len(feature_store.shards_of(key)),
        "old_release": f"{OLD_COMMIT} ({OLD_RELEASE})",
        "seconds": times,
        "median_seconds": median,
        "same_values_read": len(set().union(*digests.values())) == 1,
        "speed_new_over_old": round(median["old"] / median["new"], 3),
        "speed_new_over_plain_zarr": round(median["zarr"] / median["new"], 3),
        "old_layout_bytes": du_bytes(old_store),
    }


# --- targets -----------------------------------------------------------------------------


def target(name: str, value: float, limit: float, detail: str) -> dict[str, Any]:
    return {
        "target": name,
        "value": round(value, 4),
        "limit": round(limit, 4),
        "met": bool(value <= limit),
        "detail": detail,
    }


def night_targets(
    night: Night, cold: Night, nochange_s: float, cold_at_end_s: float
) -> list[dict[str, Any]]:
    """The time and bytes targets of one night; the time target also against the cold
    run measured again at the end (scaled to the cold rows)."""
    computed = night.added + night.changed

    def time_limit(cold_s: float) -> float:
        return nochange_s + computed / cold.rows * cold_s + TIME_SLACK * cold_s

    share = computed / night.rows
    bytes_limit = share * night.version_bytes + BYTES_SLACK * night.version_bytes
    seconds = target(
        f"night {night.night}: seconds",
        night.cli.seconds,
        time_limit(cold.cli.seconds),
        f"{nochange_s:.1f} no-change + {computed}/{cold.rows} x {cold.cli.seconds:.1f} cold + "
        f"{TIME_SLACK} x cold",
    )
    seconds["limit_with_cold_at_end"] = round(time_limit(cold_at_end_s), 4)
    seconds["met_with_cold_at_end"] = bool(night.cli.seconds <= time_limit(cold_at_end_s))
    return [
        seconds,
        target(
            f"night {night.night}: bytes written (new_bytes)",
            night.new_bytes,
            bytes_limit,
            f"({computed}/{night.rows} + {BYTES_SLACK}) x {night.version_bytes:,} version bytes",
        ),
        target(
            f"night {night.night}: bytes written (du growth)",
            night.du_growth_bytes,
            bytes_limit,
            "the same limit, the store's growth by du -sb (hash cache and metadata included)",
        ),
    ]


# --- the parts ---------------------------------------------------------------------------


def nightly(
    stack: Stack, work: Path, images: int
) -> tuple[list[Night], list[CliRun], CliRun, Folder]:
    """The cold run and the 8 nights (with no-change runs), on one store; then the cold
    run once more (the last folder, a fresh store): the machine is shared, and a cold
    figure taken under load makes every time target easier."""
    root = _fashion_mnist_root()
    idx_files = find_idx_dataset(root)["train"]
    pixels, labels = read_idx(idx_files[0]), read_idx(idx_files[1])
    folder = Folder(work / "pngs", pixels, labels)
    store = work / "store"
    rng = np.random.default_rng(SEED)
    print(f"writing {images:,} PNG files", flush=True)
    folder.add(range(images))
    next_index = images
    nights = [run_night(stack, work, folder, store, 0, f"cold: {images} files")]
    nochange: list[CliRun] = []
    for number, (what, add, remove, rewrite) in enumerate(night_plan(images, len(pixels)), 1):
        if number - 1 in NOCHANGE_AFTER:
            nochange.append(no_change(stack, folder, store, number - 1))
        folder.add(range(next_index, next_index + add))
        next_index += add
        names = sorted(folder.files)
        picked = rng.choice(len(names), size=remove + rewrite, replace=False)
        folder.remove([names[i] for i in picked[:remove]])
        unused = rng.choice(np.arange(next_index, len(pixels)), size=rewrite, replace=False)
        folder.rewrite([names[i] for i in picked[remove:]], [int(i) for i in unused])
        nights.append(run_night(stack, work, folder, store, number, what))
    nochange.append(no_change(stack, folder, store, len(nights) - 1))
    print("cold run again: the last folder into a fresh store", flush=True)
    fresh = work / "store-cold-again"
    cold_again = run_cli(stack, *embed_args(str(folder.root), fresh))
    shutil.rmtree(fresh, ignore_errors=True)
    return nights, nochange, cold_again, folder


def no_change(stack: Stack, folder: Folder, store: Path, after: int) -> CliRun:
    print(f"no-change run after night {after}", flush=True)
    run = run_cli(stack, *embed_args(str(folder.root), store))
    if run.result["embedded"] != 0:
        raise SystemExit(f"a rerun on the unchanged folder embedded {run.result['embedded']}")
    return run


# A run's own cluster instead of serve's: an empty address (``plan_cluster``).
OWN_CLUSTER = {"DASK_SCHEDULER_ADDRESS": ""}


def warm_against_own(
    stack: Stack, folder: Folder, store: Path, rounds: int = WARM_ROUNDS
) -> dict[str, Any]:
    """+1 % nights alternately on serve's Dask worker (warm: torch imported, the model
    built) and on a cluster the run starts in its own process (what every night paid
    before serve had one), side by side on the same store and folder."""
    add = max(1, len(folder.files) // 100)
    seconds: dict[str, list[float]] = {"serve_worker": [], "own_cluster": []}
    for _ in range(rounds):
        for where, env in (("own_cluster", OWN_CLUSTER), ("serve_worker", None)):
            folder.add(folder.unused(add))
            run = run_cli(stack, *embed_args(str(folder.root), store), env=env)
            assert run.result["embedded"] == add, run.result
            seconds[where].append(run.seconds)
    medians = {where: statistics.median(values) for where, values in seconds.items()}
    return {
        "added_per_night": add,
        "seconds": seconds,
        "median_seconds": medians,
        "own_over_serve": round(medians["own_cluster"] / medians["serve_worker"], 2),
    }


def idx_increment(stack: Stack, work: Path) -> dict[str, Any]:
    """Fashion-MNIST IDX through the CLI: cold 63,000, all 70,000, no-change rerun."""
    store = work / "store-idx"
    small, large = IDX_LIMITS
    print(f"IDX: cold --limit {small}", flush=True)
    cold = run_cli(stack, *embed_args("fashion-mnist", store, "--limit", str(small)))
    print(f"IDX: --limit {large}", flush=True)
    grown = run_cli(stack, *embed_args("fashion-mnist", store, "--limit", str(large)))
    print("IDX: no-change rerun", flush=True)
    again = run_cli(stack, *embed_args("fashion-mnist", store, "--limit", str(large)))
    limit = again.seconds + IDX_SHARE * cold.seconds
    key = str(grown.result["feature_set"])
    info = version_info(store, key)
    shutil.rmtree(store, ignore_errors=True)
    return {
        "cold": asdict(cold),
        "increment": asdict(grown),
        "nochange": asdict(again),
        "increment_version": info,
        "ratio_increment_over_cold": round(grown.seconds / cold.seconds, 3),
        "target": target(
            "IDX +10 %: increment seconds",
            grown.seconds,
            limit,
            f"{again.seconds:.1f} no-change + {IDX_SHARE} x {cold.seconds:.1f} cold",
        ),
    }


IMPORTS = {
    "cli": "transfer_pipe.app.cli",
    "flow_with_prefect": "flows.embed",
    "shard_code_with_torch_timm": "transfer_pipe.features.shard",
}


def import_seconds(repeats: int = 3) -> dict[str, float]:
    """Median seconds of a fresh interpreter importing what a CLI night imports (each
    alone, so they overlap: the flow imports part of the others)."""
    seconds = {}
    for name, module in IMPORTS.items():
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {module}"], cwd=LIBRARY, check=True)
            times.append(time.perf_counter() - started)
        seconds[name] = round(statistics.median(times), 2)
    return seconds


def library_sources() -> dict[str, Any]:
    """Which code was measured: its folder and a digest of its sources."""
    files = sorted([*LIBRARY.glob("transfer_pipe/**/*.py"), *LIBRARY.glob("flows/**/*.py")])
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(LIBRARY).as_posix().encode())
        digest.update(path.read_bytes())
    newest = max(path.stat().st_mtime for path in files)
    return {
        "path": str(LIBRARY),
        "sources_sha256": digest.hexdigest()[:16],
        "newest_source_modified": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(newest)),
    }


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import torch

    return {
        "platform": platform.platform(),
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "note": "2 cores shared with other processes (test runs): expect noise",
    }


# --- the report --------------------------------------------------------------------------


def megabytes(value: float) -> str:
    return f"{value / 1e6:.1f}"


def table_lines(nights: Sequence[Night], targets: dict[str, dict[str, Any]]) -> Iterator[str]:
    cold = nights[0]
    yield (
        f"{'night':<6}{'change':<28}{'rows':>7}{'CLI s':>8}{'/cold':>7}{'lib s':>7}"
        f"{'new/ver':>9}{'du/ver':>8}{'store MB':>10}{'time':>6}{'t(end)':>7}{'bytes':>7}"
        f"{'CPU s':>7}"
    )
    for night in nights:
        seconds = targets.get(f"night {night.night}: seconds", {})
        time_ok, time_end_ok = seconds.get("met"), seconds.get("met_with_cold_at_end")
        bytes_ok = targets.get(f"night {night.night}: bytes written (new_bytes)", {}).get("met")
        mark = {True: "met", False: "NOT", None: "-"}
        yield (
            f"{night.night:<6}{night.what:<28}{night.rows:>7}{night.cli.seconds:>8.1f}"
            f"{night.cli.seconds / cold.cli.seconds:>7.3f}{night.library['seconds']:>7.1f}"
            f"{night.new_bytes / night.version_bytes:>9.4f}"
            f"{night.du_growth_bytes / night.version_bytes:>8.4f}"
            f"{megabytes(night.store_bytes):>10}{mark[time_ok]:>6}{mark[time_end_ok]:>7}"
            f"{mark[bytes_ok]:>7}{night.cli.cpu_seconds:>7.1f}"
        )


def median_phases(phases: Sequence[dict[str, float]]) -> str:
    names = list(phases[0]) if phases else []
    return ", ".join(
        f"{name} {statistics.median(p.get(name, 0.0) for p in phases):.2f}" for name in names
    )


def phase_lines(nights: Sequence[Night], nochange: Sequence[CliRun]) -> list[str]:
    """Where a night's time goes: median seconds per phase over nights 1-8."""
    return [
        "CLI night phases, median s: " + median_phases([n.cli.phases for n in nights[1:]]),
        "CLI no-change phases, median s: " + median_phases([r.phases for r in nochange]),
        "library night phases, median s: "
        + median_phases([n.library["phases"] for n in nights[1:]]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20_000, help="files of the first folder")
    parser.add_argument("--skip-idx", action="store_true", help="leave out the IDX +10 %% part")
    parser.add_argument("--workdir", default=None, help="default: a new temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out", default=str(RESULTS), help=f"default: {RESULTS.relative_to(REPO)}")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="nightly-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    started = time.time()
    print(f"work folder {work}", flush=True)
    imports = import_seconds()
    try:
        result = measure(work, args.images, args.skip_idx)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    command = (
        "python benchmarks/nightly.py"
        + (f" --images {args.images}" if args.images != 20_000 else "")
        + (" --skip-idx" if args.skip_idx else "")
    )
    record = {
        "what": "nightly increments through the CLI against transfer-pipe serve, and the "
        "library's steps in-process beside them",
        "command": command,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "total_seconds": round(time.time() - started, 1),
        "machine": {
            **machine(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
        "library": library_sources(),
        "backbone": "efficientnet_lite0.in1k (the default)",
        "image_size": SIZE,
        "fresh_interpreter_import_seconds": imports,
        **result,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {path}\n")
    print("\n".join(record["table"]))


def check_subprocess_library() -> None:
    """The CLI subprocesses (this environment, this working folder) import the code this
    process measures, not another copy."""
    code = "import transfer_pipe; print(transfer_pipe.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    found = Path(out.stdout.strip()).resolve().parent.parent
    if found != LIBRARY:
        raise SystemExit(f"subprocesses import transfer_pipe from {found}, this one {LIBRARY}")


def measure(work: Path, images: int, skip_idx: bool) -> dict[str, Any]:
    """Everything, against one ``transfer-pipe serve``."""
    check_subprocess_library()
    serve_started = time.perf_counter()
    with serve_stack(work, work / "store-serve") as stack:
        serve_s = round(time.perf_counter() - serve_started, 2)
        print(f"serve ready in {serve_s} s", flush=True)
        nights, nochange, cold_again, folder = nightly(stack, work, images)
        store = work / "store"
        listing = run_cli(stack, "ls", "--store", str(store), "--json")
        print("comparing every version with its clean embed", flush=True)
        appended_by = {
            shard: n.night
            for n in nights
            for shard in open_store(str(store)).spec(n.key).new_shards
        }
        identical = [
            {
                "night": n.night,
                **compare(store, n.key, work / f"clean-{n.night}", n.clean["key"], appended_by),
            }
            for n in nights
        ]
        cleans = [(work / f"clean-{n.night}", str(n.clean["key"])) for n in nights]
        agreement = [
            {"nights": [a.night, b.night], **clean_agreement(x, y)}
            for a, b, x, y in zip(nights, nights[1:], cleans, cleans[1:], strict=False)
        ]
        last = nights[-1]
        store_before_gc = open_store(str(store)).store_nbytes()
        du_before_gc = du_bytes(store)
        print("reading the last version against the previous release's layout", flush=True)
        reads = read_speed(work, store, last.key)
        print("gc --keep-last 1", flush=True)
        gc = run_cli(stack, "gc", "--store", str(store), "--keep-last", "1", "--json")
        store_after_gc = open_store(str(store)).store_nbytes()
        last_after_gc = open_store(str(store)).nbytes(last.key)
        after_gc = compare(
            store, last.key, work / f"clean-{last.night}", last.clean["key"], appended_by
        )
        print("+1 % nights on serve's Dask worker and on the run's own cluster", flush=True)
        warm = warm_against_own(stack, folder, store)
        idx = None if skip_idx else idx_increment(stack, work)
    nochange_s = statistics.median(run.seconds for run in nochange)
    cold_at_end_s = cold_again.seconds * nights[0].rows / cold_again.result["rows"]
    targets = [
        t
        for night in nights[1:]
        for t in night_targets(night, nights[0], nochange_s, cold_at_end_s)
    ]
    targets += [
        target(
            "store after the nights, no gc: store bytes / last version bytes",
            store_before_gc / last.version_bytes,
            STORE_NO_GC,
            f"{store_before_gc:,} / {last.version_bytes:,} (du -sb: {du_before_gc:,})",
        ),
        target(
            "store after gc --keep-last 1: store bytes / last version bytes",
            store_after_gc / last_after_gc,
            STORE_GC,
            f"{store_after_gc:,} / {last_after_gc:,} (gc's report: "
            f"{gc.result.get('store_bytes_after', 0):,})",
        ),
        {
            "target": "every version bit-identical to a clean embed of its night's folder",
            "met": all(c["bit_identical"] and c["same_sample_ids"] for c in identical)
            and after_gc["bit_identical"],
            "detail": f"{sum(c['bit_identical'] for c in identical)}/{len(identical)} versions; "
            f"max abs diff {max(c['max_abs_diff'] for c in identical):.3g}; rows differing "
            f"{sum(c['rows_differing'] for c in identical)}",
        },
    ]
    if "speed_new_over_old" in reads:
        speed = reads["speed_new_over_old"]
        targets.append(
            {
                "target": "reading all rows of the last version vs the previous layout",
                "value": speed,
                "limit": f">= {READ_FLOOR}",
                "met": bool(speed >= READ_FLOOR),
                "detail": f"old median seconds / new median seconds, {reads['median_seconds']}",
            }
        )
    if idx is not None:
        targets.append(idx["target"])
    by_name = {t["target"]: t for t in targets}
    lines = list(table_lines(nights, by_name))
    lines.append(
        f"serve start-up {serve_s} s (not counted); no-change runs "
        f"{[run.seconds for run in nochange]} s, median {nochange_s}; cold again at the end "
        f"{cold_again.seconds} s ({cold_again.result['rows']} rows; scaled {cold_at_end_s:.1f})"
    )
    for t in targets:
        value = t.get("value", "")
        lines.append(
            f"{'met    ' if t['met'] else 'NOT MET'} {t['target']}: {value} "
            f"(limit {t.get('limit', '-')}); {t['detail']}"
        )
    lines.append(
        f"+{warm['added_per_night']} files a night, median seconds: "
        f"{warm['median_seconds']} (the run's own cluster / serve's worker: "
        f"{warm['own_over_serve']})"
    )
    lines += phase_lines(nights, nochange)
    if "median_seconds" in reads:
        lines.append(f"read all rows, median seconds: {reads['median_seconds']}")
    return {
        "images": images,
        "serve_startup_seconds": serve_s,
        "serve_worker_against_own_cluster": warm,
        "nights": [asdict(n) for n in nights],
        "nochange_runs": [asdict(run) for run in nochange],
        "nochange_seconds_median": nochange_s,
        "cold_again_at_end": asdict(cold_again),
        "cold_again_seconds_scaled_to_cold_rows": round(cold_at_end_s, 2),
        "ls": listing.result,
        "gc": {**asdict(gc), "store_bytes_after_measured": store_after_gc},
        "store": {
            "bytes_before_gc": store_before_gc,
            "du_bytes_before_gc": du_before_gc,
            "bytes_after_gc": store_after_gc,
            "last_version_bytes": last.version_bytes,
            "last_version_bytes_after_gc": last_after_gc,
        },
        "bit_for_bit": {
            "versions": identical,
            "last_version_after_gc": after_gc,
            "clean_embeds_of_consecutive_nights": agreement,
        },
        "read_speed": reads,
        "idx": idx,
        "targets": targets,
        "table": lines,
        "folder_files_at_end": len(folder.files),
    }


if __name__ == "__main__":
    main()
