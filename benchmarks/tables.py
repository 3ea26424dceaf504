"""The benchmark tables of the docs, built from ``benchmarks/results/*.json``.

A page holds each table between two markers::

    <!-- table: sweep_screens -->
    | ... the generated table ... |
    <!-- /table -->

``python benchmarks/tables.py`` rewrites every marked table from its results files;
``python benchmarks/tables.py --check`` rewrites nothing and exits 1 naming each page and
table that disagrees with its results (or names a table this script does not know, or
leaves a known table on no page). The numbers a page prints are then the numbers its
benchmark wrote, and a rerun of a benchmark is one command away from its page.

Each table has one generator in ``TABLES``: the results files it reads and a function from
their parsed JSON to markdown rows.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "docs" / "pages"
RESULTS = ROOT / "benchmarks" / "results"

Json = dict[str, Any]
Rows = list[list[str]]

MARKED = re.compile(
    r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL
)


# --- formatting -------------------------------------------------------------------------


def fixed(value: float, digits: int = 0) -> str:
    """A number with thousands separators, halves rounded up as a reader does: 0.9015 ->
    0.902 (binary floats would print 0.901)."""
    exact = Decimal(repr(value)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{exact:,.{digits}f}"


def signed(value: float, digits: int) -> str:
    return ("+" if value >= 0 else "") + fixed(value, digits)


def sig(value: float, digits: int = 3) -> str:
    """Rounded to significant digits, as rates on a shared machine deserve: 5,830; 14."""
    if value == 0:
        return "0"
    places = digits - 1 - math.floor(math.log10(abs(value)))
    return fixed(round(value, places), max(places, 0))


def rate(value: float) -> str:
    """Images per second: one decimal below 30 (1.1, 26.5), whole numbers above (424)."""
    return fixed(value, 1) if value < 30 else fixed(value)


def seconds(value: float) -> str:
    """Seconds: one decimal below 100 (8.6 s), whole seconds above (312 s)."""
    return f"{fixed(value, 1) if value < 100 else fixed(value)} s"


def c_value(value: float) -> str:
    """A regularisation strength as the grid prints it: 0.32, 3.2e-3, 1e-3."""
    if value >= 0.01:
        return f"{value:.2g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def accuracy_ci(result: Json, digits: int = 3) -> str:
    """Accuracy with its bootstrap 95% interval, an en dash between: 0.902 (0.895-0.907)."""
    low, high = (fixed(bound, digits) for bound in result["accuracy_ci95"])
    return f"{fixed(result['accuracy'], digits)} ({low}\N{EN DASH}{high})"


def span(values: Sequence[float], show: Callable[[float], str]) -> str:
    """The range of some measurements: 0.34-0.61, or one value when they agree."""
    low, high = show(min(values)), show(max(values))
    return low if low == high else f"{low}-{high}"


def markdown(header: Sequence[str], rows: Rows, align: Sequence[str] | None = None) -> str:
    """A markdown table; ``align`` holds "---" or "---:" per column."""
    rule = align or ["---"] * len(header)
    lines = [header, rule, *rows]
    return "".join(f"| {' | '.join(line)} |\n" for line in lines)


# --- the layer names and widths of EfficientNet-Lite0 ------------------------------------


def layer_label(layer: str) -> str:
    """penultimate+stages.6+stages.5+stages.4 -> penultimate + stages 6, 5, 4."""
    parts = layer.split("+")
    stages = [p.removeprefix("stages.") for p in parts if p.startswith("stages.")]
    named = [p for p in parts if not p.startswith("stages.")]
    if len(parts) == 1:
        return layer
    return " + ".join([*named, f"stages {', '.join(stages)}"] if stages else named)


def width(capacity: Json, layer: str) -> int:
    """Features of a layer, or of layers side by side (a+b), as capacity.json measured."""
    return sum(int(capacity["layers"][part]["dim"]) for part in layer.split("+"))


# --- one generator per table ---------------------------------------------------------------


def store_layout(results: Sequence[Json]) -> str:
    (record,) = results
    largest = str(max(record["measured_rows"]))
    rows = []
    for name, layout in record["layouts"].items():
        measured = layout["measured"][largest]
        rows.append(
            [
                name,
                fixed(layout["per_million_images"]["objects"]),
                fixed(layout["per_ten_million_images"]["objects"]),
                f"{measured['objects_under_20kb']} of {measured['objects']}",
                fixed(layout["per_ten_million_images"]["reads_open_and_sample_id"]),
                fixed(layout["per_million_images"]["bytes"] / 1e9, 2),
            ]
        )
    header = [
        "layout",
        "objects per 1M images (extrapolated)",
        "objects per 10M",
        f"under 20 KB (of {int(largest) // 1000}k rows)",
        "requests to open + read sample_id at 10M",
        "GB per 1M",
    ]
    return markdown(header, rows, ["---", "---:", "---:", "---:", "---:", "---:"])


def met(flag: bool) -> str:
    return "met" if flag else "**missed**"


def pipeline_rerun(results: Sequence[Json]) -> str:
    (record,) = results
    images = fixed(record["parameters"]["limit"])
    reruns = ", ".join(f"{fixed(s, 2)}" for s in sorted(record["reruns_seconds"]))
    target = record["target_met"]
    rows = [
        [
            f"cold run (embed {images}, fit 6 heads), worker pick-up → Completed",
            seconds(record["cold_seconds"]),
            "",
        ],
        [
            "rerun over unchanged data (0 embedded, heads up to date), pick-up → Completed, "
            f"median of {len(record['reruns_seconds'])} ({reruns} s)",
            f"{seconds(record['rerun_seconds'])} (**{fixed(record['ratio'], 3)}** of cold)",
            f"< 15 s: {met(target['rerun_under_15_s'])}; "
            f"< 10 %: {met(target['rerun_under_10_percent'])}",
        ],
        [
            "the same rerun, flow Running → Completed",
            f"{seconds(record['rerun_flow_seconds'])} ({fixed(record['ratio_flow'], 3)} of cold)",
            "",
        ],
        [
            "CLI `transfer-pipe embed` rerun against `serve`, process start → exit",
            seconds(record["cli_rerun_seconds"]),
            f"< 15 s: {met(target['cli_rerun_under_15_s'])}",
        ],
        [
            "the same CLI rerun with Prefect's temporary server instead",
            seconds(record["cli_rerun_without_server_seconds"]),
            "",
        ],
    ]
    return markdown(["measure", "result", "target"], rows)


def taps(results: Sequence[Json]) -> str:
    (record,) = results
    rows = []
    for name in ("top", "penultimate"):
        runs = record["runs"][name]
        rows.append(
            [
                f"`--layers {name}`: {', '.join(runs[0]['layers'])}",
                f"{fixed(record['median_seconds'][name], 2)} (median of {len(runs)})",
                fixed(record["bytes_per_image"][name]),
            ]
        )
    rows.append(
        [
            "top ÷ penultimate",
            f"**{fixed(record['top_over_penultimate_seconds'], 2)}x**",
            f"**{fixed(record['top_over_penultimate_bytes'], 1)}x**",
        ]
    )
    header = [f"{fixed(record['limit'])} images, {record['image_size']} px", "seconds"]
    header.append("store bytes per image")
    return markdown(header, rows, ["---", "---:", "---:"])


HEADS_ORDER = ("logreg", "svm", "mlp", "torch-linear", "ridge", "knn")


def chosen(head: Json) -> str:
    """The hyperparameter the protocol chose, as the head's grid names it."""
    picked = head["chosen"]
    if "C" in picked:
        return f"C={c_value(picked['C'])}"
    if "alpha" in picked:
        return f"alpha={picked['alpha']:g}"
    if "n_neighbors" in picked:
        return f"k={picked['n_neighbors']}"
    return f"{picked['max_epochs']} epochs"


def head_cell(head: Json, full: bool) -> str:
    cell = accuracy_ci(head)
    if full:
        cell += f", F1 {fixed(head['macro_f1'], 3)}, ECE {fixed(head['ece'], 3)}"
    return f"{cell}, {chosen(head)}"


def heads_probe_column(record: Json, capacity: Json) -> str:
    layer = record["layer"]
    return f"{record['image_size']} px, {layer_label(layer)} ({fixed(width(capacity, layer))})"


def walk_cost(record: Json) -> str:
    ratio = record["sweep_over_embed"]
    share = (
        f"**{fixed(ratio, 1)}x** the embed" if ratio >= 1 else f"**{fixed(ratio, 2)}** of the embed"
    )
    return f"{seconds(record['sweep_seconds'])} ({share})"


def heads_probe(results: Sequence[Json]) -> str:
    *records, capacity = results
    by_head = [{h["head"]: h for h in record["heads"]} for record in records]
    rows = [
        [
            "**logreg (the probe)**" if name == "logreg" else name,
            *(head_cell(heads[name], name == "logreg") for heads in by_head),
        ]
        for name in HEADS_ORDER
    ]
    rows.append(
        ["logreg on raw pixels", *(head_cell(r["raw_pixels_logreg"], False) for r in records)]
    )
    rows.append(
        [
            f"embed all {fixed(records[0]['embed']['images_embedded'])} images",
            *(seconds(r["embed"]["seconds"]) for r in records),
        ]
    )
    grid = grid_size(records[0]["protocol"]["c_grid"])
    rows.append(
        [f"the probe's {grid}-value C sweep (the solver of that run)", *map(walk_cost, records)]
    )
    header = ["head, test set", *(heads_probe_column(r, capacity) for r in records)]
    return markdown(header, rows)


def walk_choice(walk: Json) -> str:
    return f"{c_value(walk['chosen_C'])}, {fixed(walk['accuracy'], 4)}"


def probe_walk_row(layer: Json, grid: int) -> list[str]:
    walk, whole, before = layer["walk"], layer.get("whole_walk"), layer["before"]
    choice, walked = walk_choice(walk), seconds(walk["seconds"]["select"])
    if whole:
        same = layer["same_choice_as_whole_walk"]
        choice += " (whole walk: the same)" if same else f" (whole walk: {walk_choice(whole)})"
        walked += f" (whole: {seconds(whole['seconds']['select'])})"
    earlier = "not recorded"
    if before:
        took = before["seconds"]
        earlier = f"{walk_choice(before)}; {seconds(took['select'])}, {seconds(took['refit'])}"
    label = layer_label(layer["layer"])
    return [
        f"{label} ({fixed(layer['features'])})",
        choice,
        f"{walk['values_walked']} of {grid}",
        walked,
        seconds(walk["seconds"]["refit"]),
        f"{fixed(layer['walk_over_embed'], 2)}",
        earlier,
    ]


def grid_size(protocol: str) -> int:
    """How many values of C a protocol's text names (``"45 values of C, ..."``)."""
    return int(re.match(r"(\d+) values", protocol).group(1))  # type: ignore[union-attr]


def probe_walk(results: Sequence[Json]) -> str:
    (record,) = results
    grid = grid_size(record["protocol"])
    rows = [probe_walk_row(layer, grid) for layer in record["layers"]]
    header = [
        "layer (features)",
        "chosen C, test accuracy",
        "values walked",
        "walk",
        "refit",
        "walk ÷ embed",
        "before: chosen C, accuracy; walk, refit",
    ]
    return markdown(header, rows)


def finetune_column(record: Json) -> str:
    device = record["device"]
    machine = f"{record['cpu_cores']} CPU cores" if device == "cpu" else device
    return f"{machine}, {record['image_size']} px, `{record['policy']}`"


def finetune_embed(record: Json) -> str:
    embed = record["embed"]
    if embed["images"] == 0:
        return "reused from the heads benchmark's store"
    steady = fixed(embed["steady_images_per_s"])
    return f"{fixed(embed['images_per_s'])} images/s ({steady} steady)"


def finetune_training(record: Json) -> str:
    epochs = [e["train_images_per_s"] for e in record["history"]]
    low, high = fixed(min(epochs)), fixed(max(epochs))
    return f"{fixed(statistics.median(epochs))} images/s (median epoch; {low}-{high})"


def finetune_epochs(record: Json) -> str:
    done = record["finetune"]
    budget = fixed(record["time_budget_s"])
    planned = f"{done['epochs']} of {record['epochs_requested']}"
    return f"{planned}, stopped by {done['stopped']} (budget {budget} s)"


def finetune(results: Sequence[Json]) -> str:
    rows: list[list[str]] = [
        ["linear probe (logreg, C chosen on validation)"],
        ["**fine-tuned**"],
        ["gain over the probe"],
        ["epochs (done of planned; what stopped them)"],
        [f"embed {fixed(sum(results[0]['splits'].values()))} images"],
        ["training"],
        ["wall time: embed, probe, fine-tune"],
    ]
    for record in results:
        tuned = record["finetune"]
        took = record["seconds"]
        cells = [
            f"{fixed(record['probe']['accuracy'], 3)}",
            f"{accuracy_ci(tuned)}, macro F1 {fixed(tuned['macro_f1'], 3)}",
            f"{signed(tuned['gain_over_probe'] * 100, 1)} points",
            finetune_epochs(record),
            finetune_embed(record),
            finetune_training(record),
            ", ".join(f"{fixed(took[p])} s" for p in ("embed", "probe", "finetune")),
        ]
        for row, cell in zip(rows, cells, strict=True):
            row.append(cell)
    header = ["EfficientNet-Lite0, LP-FT, test set", *map(finetune_column, results)]
    return markdown(header, rows)


def nightly(results: Sequence[Json]) -> str:
    (record,) = results
    cold = record["nights"][0]["cli"]["seconds"]
    rows = [
        [
            str(night["night"]),
            night["what"].replace("cold: ", "cold, "),
            fixed(night["rows"]),
            f"{fixed(night['cli']['seconds'], 2)}",
            f"{fixed(night['cli']['seconds'] / cold, 3)}",
            f"{fixed(night['library']['seconds'], 1)}",
            f"{fixed(night['new_bytes'] / night['version_bytes'], 4)}",
            f"{fixed(night['store_bytes'] / 1e6, 1)}",
        ]
        for night in record["nights"]
    ]
    header = ["night", "change", "rows", "CLI s", "÷ cold", "library s", "written ÷ version"]
    header.append("store MB")
    return markdown(header, rows, ["---:", "---", *["---:"] * 6])


def finetune_history(results: Sequence[Json]) -> str:
    """Validation accuracy and training rate per epoch, the runs side by side."""
    longest = max(len(record["history"]) for record in results)
    rows = []
    for epoch in range(longest):
        row = [str(epoch + 1)]
        for record in results:
            history = record["history"]
            if epoch < len(history):
                done = history[epoch]
                row += [fixed(done["val_accuracy"], 4), fixed(done["train_images_per_s"])]
            else:
                row += ["", ""]
        rows.append(row)
    header = ["epoch"]
    for record in results:
        column = finetune_column(record)
        header += [f"{column}: validation accuracy", "images/s"]
    return markdown(header, rows, ["---:"] * len(header))


def night_targets(record: Json, kind: str) -> list[tuple[int, float, float, bool]]:
    """(night, value, limit, met) of each night's target of one kind ("seconds", ...)."""
    found = []
    for target in record["targets"]:
        night, _, what = target["target"].partition(": ")
        if night.startswith("night ") and what == kind:
            found.append((int(night.split()[1]), target["value"], target["limit"], target["met"]))
    return found


def nights_cell(
    found: list[tuple[int, float, float, bool]], show: Callable[[float], str], unit: str
) -> str:
    """Nights grouped by outcome: nights 1-7: 4.29-4.43 s against 4.53 s (met); ..."""
    groups: list[list[tuple[int, float, float, bool]]] = []
    for entry in found:
        if groups and groups[-1][-1][3] == entry[3]:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    parts = []
    for group in groups:
        first, last = group[0][0], group[-1][0]
        nights = f"night {first}" if first == last else f"nights {first}-{last}"
        values = span([g[1] for g in group], show)
        limits = span([g[2] for g in group], show)
        parts.append(f"{nights}: {values} {unit} against {limits} {unit} ({met(group[0][3])})")
    return "; ".join(parts)


def tally(found: list[tuple[int, float, float, bool]]) -> str:
    passed = sum(1 for entry in found if entry[3])
    return "met, every night" if passed == len(found) else f"met {passed} of {len(found)} nights"


def nightly_targets(results: Sequence[Json]) -> str:
    (record,) = results
    targets = {t["target"]: t for t in record["targets"]}
    seconds_found = night_targets(record, "seconds")
    bytes_found = night_targets(record, "bytes written (new_bytes)")
    kept = targets["store after the nights, no gc: store bytes / last version bytes"]
    collected = targets["store after gc --keep-last 1: store bytes / last version bytes"]
    exact = targets["every version bit-identical to a clean embed of its night's folder"]
    reading = targets["reading all rows of the last version vs the previous layout"]
    read = record["read_speed"]["median_seconds"]
    idx = record["idx"]
    increment = targets["IDX +10 %: increment seconds"]
    rows = [
        [
            "a night ≤ a no-change night + its change's share of the cold run + 3 % of it",
            nights_cell(seconds_found, lambda s: fixed(s, 2), "s"),
            tally(seconds_found),
        ],
        [
            "a night writes at most its change + 1 % of the version's bytes",
            nights_cell(bytes_found, lambda b: fixed(b / 1e6, 2), "MB"),
            tally(bytes_found),
        ],
        [
            f"store after {len(record['nights']) - 1} nights ≤ {kept['limit']}x the last "
            "version, no gc",
            f"{fixed(kept['value'], 2)}x",
            met(kept["met"]),
        ],
        [
            f"store after `gc --keep-last 1` ≤ {collected['limit']}x",
            f"{fixed(collected['value'], 2)}x",
            met(collected["met"]),
        ],
        [
            "every version equals a clean embed of its night's folder, bit for bit",
            exact["detail"],
            met(exact["met"]),
        ],
        [
            "reading all rows of a version "
            f"{reading['limit'].replace('>=', '≥')}x as fast as the previous layout",
            f"{fixed(reading['value'], 2)}x ({fixed(read['new'], 2)} s vs "
            f"{fixed(read['old'], 2)} s; a plain Zarr slice {fixed(read['zarr'], 2)} s)",
            met(reading["met"]),
        ],
        [
            f"+10 % on Fashion-MNIST IDX ({fixed(idx['cold']['result']['rows'])} → "
            f"{fixed(idx['increment']['result']['rows'])}) ≤ no-change + 0.13 x cold",
            f"{fixed(increment['value'], 2)} s against {fixed(increment['limit'], 2)} s "
            f"(cold {fixed(idx['cold']['seconds'], 1)} s, no-change "
            f"{fixed(idx['nochange']['seconds'], 2)} s; "
            f"{fixed(idx['ratio_increment_over_cold'], 2)} of cold)",
            met(increment["met"]),
        ],
    ]
    return markdown(["target", "measured", ""], rows)


STORAGE_DESIGNS = {
    "a_icechunk_sharded_aligned": "Icechunk {icechunk}, each night from a new chunk",
    "a_icechunk_chunks512": "Icechunk, appending into the last chunk (512-row chunks)",
    "a_icechunk_sharded": "Icechunk, appending into the last chunk (sharded)",
    "b_append_zarr_parquet": "appended Zarr + Parquet tables (chosen)",
    "c_full_copy": "one full copy per night (the previous layout)",
}


def storage_designs(results: Sequence[Json]) -> str:
    (record,) = results
    rows = []
    for key, label in STORAGE_DESIGNS.items():
        design = record["designs"][key]
        written = [n["bytes_written"] / 1e6 for n in design["nights"] if n["night"] > 0]
        no_gc = design["store_over_last_version_no_gc"]
        after = design["store_over_last_version_after_gc"]
        rows.append(
            [
                label.format(**record["packages"]),
                span(written, lambda mb: f"{fixed(mb, 2)}"),
                f"{fixed(no_gc, 3)} / {fixed(after, 3)}",
                f"{fixed(design['read_speed_vs_c'], 2)}",
            ]
        )
    header = [
        "design",
        "MB written per night (1-8)",
        "store ÷ last version, no gc / after gc",
        "read all rows ÷ a full copy's",
    ]
    return markdown(header, rows, ["---", "---:", "---", "---:"])


def feeding(results: Sequence[Json]) -> str:
    (record,) = results
    sources = [record["sources"]["fashion_mnist_idx"], record["sources"]["png_folder"]]
    raw = sig(record["raw_forward_one_stream_per_core"])
    rows = [
        ["feed per core (1 process)", *(sig(s["feed_per_core"]) for s in sources)],
        [
            "feed, 2 threads / 2 processes",
            *(f"{sig(s['feed_threads']['2'])} / {sig(s['feed_processes']['2'])}" for s in sources),
        ],
        [
            "zero-cost backbone, whole embed with writes, 2 worker threads, steady",
            *(
                sig(s["pipeline_zero_cost"]["2_worker_threads"]["steady_images_per_s"])
                for s in sources
            ),
        ],
        [
            f"all-cores feed ÷ raw Lite0 forward ({raw} images/s, one stream per core)",
            *(f"{sig(s['feed_all_cores_vs_raw_forward'], 2)}x" for s in sources),
        ],
    ]
    setup = record["setup"]
    header = [
        f"{setup['image_size']} px, {record['machine']['cpus']} CPU cores, images/s",
        "IDX (Fashion-MNIST)",
        f"folder of {fixed(sources[1]['images'])} PNG files",
    ]
    return markdown(header, rows, ["---", "---:", "---:"])


PHOTO_KINDS = {
    "jpeg": "JPEG",
    "progressive": "progressive JPEG",
    "exif": "JPEG, EXIF-rotated",
    "p3": "JPEG, Display P3 profile",
    "heic": "HEIC",
    "webp": "WebP",
    "avif": "AVIF",
    "png": "PNG",
}


def photo_row(name: str, feed: Json) -> list[str]:
    size, kind = name.split("/")
    where = (
        "ImageNet-size" if size == "imagenet" else f"{fixed(feed['mean_megapixels'], 0)}-megapixel"
    )
    row = [f"{where} {PHOTO_KINDS[kind]}", rate(feed["full"])]
    if "dct" in feed:
        row += [
            f"{rate(feed['dct'])} ({fixed(feed['dct_speedup'], 1)}x)",
            rate(feed["dct_to_uint8"]),
        ]
    else:
        row += ["", ""]
    return row


def photos(results: Sequence[Json]) -> str:
    (record,) = results
    rows = [photo_row(n, f) for n, f in record["feed_images_per_s_one_core"].items()]
    header = [
        f"images/s per core, {record['image_size']} px",
        "full decode",
        "`--decode dct` (÷ full)",
        "dct, without the CPU normalise",
    ]
    return markdown(header, rows, ["---", "---:", "---:", "---:"])


SIZE_CLASSES = {
    "imagenet": "ImageNet (~500 x 375)",
    "large": "large (~1600 x 1200)",
    "phone": "12-megapixel phone",
}
SCALED_KINDS = ("jpeg", "progressive", "webp", "avif", "heic")


def scaling_cell(part: Json) -> str:
    threads = part["threads"]
    return f"{rate(threads['1'])} → {rate(threads['2'])} ({fixed(part['efficiency'], 2)})"


def photos_scaling(results: Sequence[Json]) -> str:
    (record,) = results
    parts = record["scaling_images_per_s"]
    rows = [
        [label, *(scaling_cell(parts[f"{size}/{kind}"]) for kind in SCALED_KINDS)]
        for size, label in SIZE_CLASSES.items()
    ]
    header = [
        "size class",
        *("baseline JPEG" if k == "jpeg" else PHOTO_KINDS[k] for k in SCALED_KINDS),
    ]
    return markdown(header, rows)


def gib(size: float) -> str:
    return f"{fixed(size / 2**30, 2)}"


def embed_throughput(results: Sequence[Json]) -> str:
    (record,) = results
    low, high = record["raw_forward_spread"]
    memory = record["peak_rss_bytes_by_images"]
    sizes = sorted(memory, key=int)
    rows = [
        [
            "raw forward pass on pre-decoded tensors, 2 torch threads (mean of before/after "
            "the cold run; spread over three measures)",
            f"{fixed(record['raw_forward_images_per_s'])} images/s ({fixed(low)}-{fixed(high)})",
        ],
        [
            "raw forward, one single-thread stream per core (the local worker's layout)",
            f"{fixed(record['raw_forward_one_stream_per_core_images_per_s'])} images/s",
        ],
        [
            "`transfer-pipe embed` end to end, start-up included",
            f"{fixed(record['cli_end_to_end_images_per_s'])} images/s "
            f"({fixed(record['ratio_cli_vs_raw'], 2)} of raw)",
        ],
        [
            "steady state (after the first shard)",
            f"{fixed(record['steady_state_images_per_s'])} images/s "
            f"({fixed(record['ratio_steady_vs_raw'], 2)} of raw, "
            f"{fixed(record['ratio_steady_vs_raw_streams'], 2)} of the streams)",
        ],
        [
            "warm rerun / cold run, both against a running Prefect server",
            f"{fixed(record['warm_wall_s'], 1)} s / {fixed(record['cold_wall_s'], 0)} s = "
            f"{fixed(record['ratio_warm_vs_cold'], 3)}, {record['warm_embedded']} embedded",
        ],
        [
            "the same warm rerun without a server (Prefect starts a temporary one)",
            f"{fixed(record['startup_without_server_s'], 1)} s",
        ],
        [
            f"incremental run, 10 % new images ({fixed(record['incremental_new_images'])} "
            f"embedded) / cold run of all {fixed(record['setup']['images'])}",
            f"{fixed(record['incremental_wall_s'])} s, "
            f"{fixed(record['ratio_incremental_vs_cold'], 2)}",
        ],
        [
            "peak resident memory of the run (CLI and its Dask worker), "
            + " / ".join(f"{fixed(int(s))}" for s in sizes)
            + " images",
            " / ".join(gib(memory[s]) for s in sizes) + " GiB",
        ],
        [
            "store bytes on disk per image (1280 float32, zstd)",
            f"{fixed(record['store_bytes_per_image'])} B",
        ],
    ]
    setup, machine = record["setup"], record["machine"]
    header = (
        f"measure (EfficientNet-Lite0, {setup['image_size']} px, batch {setup['batch_size']}, "
        f"all {fixed(setup['images'])} images, {machine['cpus']} cores, "
        f"{'no GPU' if machine['gpu'] is None else machine['gpu']})"
    )
    return markdown([header, "result"], rows)


RUN_PHASES = {
    "interpreter": "process start to the first line of Python",
    "import_cli": "`import transfer_pipe.app.cli`",
    "check": "checks before Prefect: config, backbone registry, the source listed and hashed, "
    "the store's status; cold also torch and the model",
    "prefect_setup": "the running server found, Prefect imported and its logging set up",
    "import_flow": "`from flows.embed import embed_flow`",
    "flow_start": 'the flow run created, to "Beginning flow run"',
    "flow_tasks": "the flow's tasks: prepare, the shards, finalize",
    "flow_end": "the last task to the flow's \"Finished\": artifacts, Prefect's heartbeat thread "
    "stopped (it sleeps in 1 s steps), final state",
    "flow_return": '"Finished" to the call\'s return',
    "exit": "exit: Prefect's event and log workers drained, interpreter teardown",
}


def run_phases(results: Sequence[Json]) -> str:
    (record,) = results
    cold, warm = record["cold"]["phases_s"], record["warm_median_phases_s"]
    rows = [
        [label, f"{fixed(cold[p], 2)}", f"{fixed(warm[p], 2)}"] for p, label in RUN_PHASES.items()
    ]
    rows.append(
        [
            "**whole run**",
            f"**{fixed(record['cold']['wall_s'], 1)}**",
            f"**{fixed(record['warm_median_wall_s'], 2)}** "
            f"({fixed(record['ratio_warm_vs_cold'], 3)} of cold)",
        ]
    )
    return markdown(["part", "cold", "warm"], rows, ["---", "---:", "---:"])


def autocast_cpu(results: Sequence[Json]) -> str:
    (record,) = results
    rounds = record["forward_images_per_s"]
    runs = record["runs"]
    f32, bf16 = runs["none"], runs["bf16"]
    speedup = record["forward_bf16_over_float32"]["median"]
    rows = [
        [
            f"raw forward pass, images/s ({len(rounds)} alternating rounds)",
            span([r["float32"] for r in rounds], fixed),
            f"{span([r['bf16'] for r in rounds], fixed)} (**{fixed(speedup, 2)}x**)",
        ],
        [
            f"embed {fixed(record['images'])} Fashion-MNIST images end to end "
            "(library, no Prefect)",
            f"{fixed(f32['embed_seconds'], 1)} s",
            f"{fixed(bf16['embed_seconds'], 1)} s "
            f"(**{fixed(record['embed_float32_over_bf16_seconds'], 2)}x**)",
        ],
        [
            "features: relative difference from float32 (Frobenius norm, penultimate layer)",
            "",
            f"{fixed(record['features_relative_difference'] * 100, 1)} %",
        ],
        [
            f"the logistic probe on them, test accuracy ({fixed(f32['probe']['test_rows'])} "
            "test rows; C chosen on validation)",
            accuracy_ci(f32["probe"]),
            accuracy_ci(bf16["probe"]),
        ],
    ]
    return markdown(["measure", "float32", "bfloat16"], rows, ["---", "---:", "---:"])


SCREENS = {"knn": "k-NN accuracy ({rows} training rows, validation rows)"}
SCREENS["logme"] = "LogME evidence (all training rows)"


def sweep_screens(results: Sequence[Json]) -> str:
    (record,) = results
    tau = {(a["screen"], a["init"]): a["tau"] for a in record["agreement_over_every_layer"]}
    inits = ("pretrained", "random")
    best = {init: max(tau[(s, init)] for s in SCREENS) for init in inits}
    knn_rows = fixed(record["screens"][0]["knn_rows"])
    rows = []
    for screen, label in SCREENS.items():
        cells = [f"{signed(tau[(screen, init)], 2)}" for init in inits]
        cells = [
            f"**{cell}**" if tau[(screen, init)] == best[init] else cell
            for cell, init in zip(cells, inits, strict=True)
        ]
        rows.append([label.format(rows=knn_rows), *cells])
    return markdown(["screen", *inits], rows)


def sweep_depth(results: Sequence[Json]) -> str:
    (record,) = results
    probes = {(p["init"], p["layer"]): p for p in record["probe_all_depth"]}
    screens = {(s["init"], s["layer"]): s for s in record["screens"]}
    layers = [p["layer"] for p in record["probe_all_depth"] if p["init"] == "pretrained"]
    rows = []
    for layer in layers:
        pre, rand = probes[("pretrained", layer)], probes[("random", layer)]
        knn = [f"{fixed(screens[(i, layer)]['knn'], 3)}" for i in ("pretrained", "random")]
        mark = " (chosen)" if layer == record["recommended_layer"] else ""
        rows.append(
            [
                f"{layer}{mark}",
                fixed(pre["dim"]),
                accuracy_ci(pre),
                accuracy_ci(rand),
                " / ".join(knn),
            ]
        )
    header = [
        "layer",
        "features",
        "pretrained probe, test (95% interval)",
        "random weights' probe, test",
        "k-NN screen, pretrained / random",
    ]
    return markdown(header, rows, ["---", "---:", "---", "---", "---"])


def sweep_curve(results: Sequence[Json]) -> str:
    (record,) = results
    rows = []
    for point in record["curve"]:
        spread = point["accuracy_std"]
        score = f"{fixed(point['accuracy_mean'], 3)}"
        rows.append(
            [
                f"{point['fraction'] * 100:g} %",
                fixed(point["train_rows"]),
                str(point["seeds"]),
                score if spread is None else f"{score} ± {fixed(spread, 3)}",
            ]
        )
    layer = record["curve"][0]["layer"]
    header = ["share of the labels", "training rows", "seeds", f"test accuracy at {layer}"]
    return markdown(header, rows, ["---:", "---:", "---:", "---"])


def worker_layouts(results: Sequence[Json]) -> str:
    (record,) = results
    names = list(record["rounds"][0]["layouts"])
    rows = []
    for number, round_ in enumerate(record["rounds"], 1):
        ratios = [f"{fixed(round_['layouts'][n]['ratio_vs_raw'], 2)}" for n in names]
        rows.append([str(number), fixed(round_["raw_forward_images_per_s"]), *ratios])
    header = ["round", "raw images/s", *(n.replace("_", " ") + " ÷ raw" for n in names)]
    return markdown(header, rows, ["---:"] * len(header))


# --- the summary: one row per target, from the results of every script ----------------

# Earlier measurements, before the changes the summary reports; their results files were
# replaced by the runs the "now" column reads, so these stay as the history they are.
BEFORE = {
    "cli": "0.75",
    "steady": "0.84",
    "rerun": "0.069 (9.2 s)",
    "increment": "0.25 IDX; 0.38 folder",
    "sweep": "4.36 (4.34), every layer probed",
    "walk": "0.061 to 0.92 in the one before, on another machine",
}


def summary_throughput(embed: Json) -> Rows:
    low, high = embed["raw_forward_spread"]
    steady = embed["ratio_steady_vs_raw"]
    return [
        [
            f"CLI embed of {fixed(embed['setup']['images'])} images ÷ the raw forward pass, "
            "start-up included",
            BEFORE["cli"],
            f"**{fixed(embed['ratio_cli_vs_raw'], 2)}**",
            f"≥ 0.90 ({met(embed['ratio_cli_vs_raw'] >= 0.9)})",
            "`embed_throughput.py`",
        ],
        [
            "the same once the workers are warm (steady state)",
            BEFORE["steady"],
            f"**{fixed(steady, 2)}** of the mean raw rate; "
            f"{fixed(embed['ratio_steady_vs_raw_streams'], 2)} of one raw stream per core",
            f"≥ 0.97 ({met(steady >= 0.97)} against the mean raw rate; its spread was "
            f"{fixed(low)}-{fixed(high)} images/s)",
            "`embed_throughput.py`",
        ],
    ]


def summary_rerun(embed: Json, phases: Json) -> list[str]:
    cold, warm = phases["cold"]["wall_s"], phases["warm_median_wall_s"]
    floor = phases["warm_process_and_imports_s"]
    ratio = embed["ratio_warm_vs_cold"]
    return [
        "rerun on unchanged data ÷ cold run (running Prefect server)",
        BEFORE["rerun"],
        f"**{fixed(ratio, 3)}** ({fixed(embed['warm_wall_s'], 1)} s of "
        f"{fixed(embed['cold_wall_s'])} s); {fixed(phases['ratio_warm_vs_cold'], 3)} "
        f"({fixed(warm, 2)} s of {fixed(cold, 1)} s) in `run_phases.py`, whose process, imports "
        f"and Prefect set-up alone take {fixed(floor, 2)} s = {fixed(floor / cold, 3)}",
        f"≤ 0.02 ({met(ratio <= 0.02)}: below a fresh Prefect process's cost, see "
        "[Where a CLI run's time goes](run-phases.md))",
        "`embed_throughput.py`, `run_phases.py`",
    ]


def summary_increment(nights: Json) -> list[str]:
    idx = nights["idx"]
    increment = idx["target"]
    night, cold = nights["nights"][1], nights["nights"][0]["cli"]["seconds"]
    adding = [n for n in night_targets(nights, "seconds") if n[0] < len(nights["nights"]) - 1]
    over = increment["value"] - increment["limit"]
    verdict = met(increment["met"]) + (f" by {fixed(over, 2)} s" if over > 0 else "")
    return [
        "run with 10 % new images ÷ cold run",
        BEFORE["increment"],
        f"{fixed(idx['ratio_increment_over_cold'], 2)} IDX at "
        f"{fixed(idx['cold']['result']['rows'])} → {fixed(idx['increment']['result']['rows'])} "
        f"({fixed(increment['value'], 1)} s of {fixed(idx['cold']['seconds'], 1)} s, CLI against "
        f"`serve`); a night of +1 % files "
        f"{fixed(night['cli']['seconds'] / cold, 3)} "
        f"({fixed(night['cli']['seconds'], 1)} s of {fixed(cold, 1)} s, of which a no-change "
        f"run is {fixed(nights['nochange_seconds_median'], 2)} s)",
        f"≤ no-change + 0.13 (IDX: {verdict}; +1 % nights: "
        f"{met(all(n[3] for n in adding))}, see [Nights](nightly.md))",
        "`nightly.py`",
    ]


def summary_walk(walk: Json, wide: Json, narrow: Json, capacity: Json) -> list[str]:
    layers = walk["layers"]
    low = min(layers, key=lambda layer: layer["walk_over_embed"])
    high = max(layers, key=lambda layer: layer["walk_over_embed"])

    def named(layer: Json) -> str:
        label = (
            layer["layer"] if "+" not in layer["layer"] else f"{fixed(layer['features'])} features"
        )
        return f"{fixed(layer['walk_over_embed'], 2)} ({label})"

    return [
        f"the probe's {grid_size(walk['protocol'])}-value C walk ÷ the embed, the same C",
        f"{fixed(narrow['sweep_over_embed'], 2)} ({narrow['image_size']} px); "
        f"{fixed(wide['sweep_over_embed'], 1)} ({fixed(width(capacity, wide['layer']))} features)",
        f"{named(low)} to {named(high)} in the last run; {BEFORE['walk']}",
        f"≤ 0.10 ({met(low['walk_over_embed'] <= 0.1)} on the narrowest layer in the last run)",
        "`probe_walk.py`",
    ]


def summary_memory(embed: Json) -> list[str]:
    memory = embed["peak_rss_bytes_by_images"]
    sizes = sorted(memory, key=int)
    growth = memory[sizes[-1]] / memory[sizes[0]]
    return [
        f"peak resident memory, {' vs '.join(fixed(int(s)) for s in sizes)} images",
        "",
        f"{' vs '.join(gib(memory[s]) for s in sizes)} GiB: "
        + ("flat" if growth < 1.1 else f"{fixed(growth, 2)}x"),
        "flat",
        "`embed_throughput.py`",
    ]


def summary_photos(shots: Json) -> Rows:
    jpeg = shots["feed_images_per_s_one_core"]["imagenet/jpeg"]
    phone = shots["feed_images_per_s_one_core"]["phone/jpeg"]
    (target,) = shots["targets"]
    return [
        [
            f"CPU feed of ImageNet-size JPEG photos at {shots['image_size']} px, per core",
            "",
            f"{rate(jpeg['dct'])} images/s ({rate(jpeg['dct_to_uint8'])} without the CPU "
            "normalise, which a GPU run does on the GPU)",
            f"≥ 650 ({met(target['met'])} with the CPU normalise)",
            "`photos.py`",
        ],
        [
            "12-megapixel JPEG feed, DCT-domain decode ÷ full decode",
            "",
            f"{fixed(phone['dct_speedup'], 1)}x ({rate(phone['dct'])} against "
            f"{rate(phone['full'])} images/s per core)",
            "report",
            "`photos.py`",
        ],
    ]


def summary_sweep(sweep: Json) -> list[str]:
    probes = len(sweep["depth"])
    same = sweep["recommended_layer"] == sweep["probe_all_recommended_layer"]
    advice = "same advice as" if same else "other advice than"
    return [
        "full Fashion-MNIST sweep ÷ one embed, wall (CPU)",
        BEFORE["sweep"],
        f"**{fixed(sweep['sweep_over_embed'], 2)} ({fixed(sweep['sweep_over_embed_cpu'], 2)})**, "
        f"screens on every layer, {probes} probes; {advice} `--probe-all` "
        f"({sweep['probe_all_recommended_layer']})",
        f"≤ 2 ({met(sweep['target_met'])})",
        "`sweep.py`",
    ]


def summary_taps(taps_record: Json) -> list[str]:
    return [
        "embed with the four top taps ÷ the penultimate layer alone: time; bytes per image",
        "",
        f"{fixed(taps_record['top_over_penultimate_seconds'], 2)}x; "
        f"{fixed(taps_record['top_over_penultimate_bytes'], 1)}x",
        "report",
        "`taps.py`",
    ]


def summary(results: Sequence[Json]) -> str:
    embed, phases, nights, walk, wide, narrow, capacity, shots, sweep, taps_record = results
    rows = [
        *summary_throughput(embed),
        summary_rerun(embed, phases),
        summary_increment(nights),
        summary_walk(walk, wide, narrow, capacity),
        summary_memory(embed),
        *summary_photos(shots),
        summary_sweep(sweep),
        summary_taps(taps_record),
    ]
    return markdown(["measure", "before", "now", "target", "script"], rows)


# --- the registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A generated table: the results files it reads, in order, and its generator."""

    results: tuple[str, ...]
    build: Callable[[Sequence[Json]], str]


TABLES: dict[str, Table] = {
    "summary": Table(
        (
            "embed_throughput.json",
            "run_phases.json",
            "nightly.json",
            "probe_walk_64px.json",
            "heads_probe_64px.json",
            "heads_probe_128px.json",
            "capacity.json",
            "photos.json",
            "sweep.json",
            "taps.json",
        ),
        summary,
    ),
    "store_layout": Table(("store_layout.json",), store_layout),
    "pipeline_rerun": Table(("pipeline_rerun.json",), pipeline_rerun),
    "taps": Table(("taps.json",), taps),
    "heads_probe": Table(
        ("heads_probe_64px.json", "heads_probe_128px.json", "capacity.json"), heads_probe
    ),
    "probe_walk": Table(("probe_walk_64px.json",), probe_walk),
    "finetune": Table(("finetune_gpu_112px.json", "finetune_cpu_64px.json"), finetune),
    "finetune_history": Table(
        ("finetune_gpu_112px.json", "finetune_cpu_64px.json"), finetune_history
    ),
    "nightly": Table(("nightly.json",), nightly),
    "nightly_targets": Table(("nightly.json",), nightly_targets),
    "storage_designs": Table(("storage_designs.json",), storage_designs),
    "feeding": Table(("feeding.json",), feeding),
    "photos": Table(("photos.json",), photos),
    "photos_scaling": Table(("photos_scaling.json",), photos_scaling),
    "embed_throughput": Table(("embed_throughput.json",), embed_throughput),
    "worker_layouts": Table(("worker_layouts.json",), worker_layouts),
    "run_phases": Table(("run_phases.json",), run_phases),
    "autocast_cpu": Table(("autocast_cpu.json",), autocast_cpu),
    "sweep_screens": Table(("sweep.json",), sweep_screens),
    "sweep_depth": Table(("sweep.json",), sweep_depth),
    "sweep_curve": Table(("sweep.json",), sweep_curve),
}


# --- pages --------------------------------------------------------------------------------


def render(name: str, results_dir: Path = RESULTS) -> str:
    """The table ``name`` as its results files say it is."""
    table = TABLES[name]
    records = [json.loads((results_dir / f).read_text()) for f in table.results]
    return table.build(records)


def marked_tables(text: str) -> Iterator[re.Match[str]]:
    return MARKED.finditer(text)


def rewrite(text: str, results_dir: Path = RESULTS) -> str:
    """The page with every marked table regenerated."""

    def regenerate(match: re.Match[str]) -> str:
        if match.group("name") not in TABLES:  # left as it is: ``check`` names it
            return match.group(0)
        return match.group(1) + render(match.group("name"), results_dir) + match.group(4)

    return MARKED.sub(regenerate, text)


def pages(pages_dir: Path) -> list[Path]:
    return sorted(pages_dir.rglob("*.md"))


def check(pages_dir: Path = PAGES, results_dir: Path = RESULTS) -> list[str]:
    """One line per marked table that disagrees with its results files (or is unknown)."""
    problems = []
    for page in pages(pages_dir):
        for match in marked_tables(page.read_text()):
            name = match.group("name")
            where = f"{page.relative_to(pages_dir)}: table {name}"
            if name not in TABLES:
                problems.append(f"{where}: no such table in benchmarks/tables.py")
            elif match.group("body") != render(name, results_dir):
                sources = ", ".join(TABLES[name].results)
                problems.append(f"{where} disagrees with {sources}")
    return problems


def unplaced(pages_dir: Path = PAGES) -> list[str]:
    """Generated tables that no page shows: a generator whose page lost its markers."""
    placed = {m.group("name") for p in pages(pages_dir) for m in marked_tables(p.read_text())}
    return [f"table {name} is on no page" for name in TABLES if name not in placed]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 on drift")
    parser.add_argument("--pages", type=Path, default=PAGES)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.pages, args.results) + unplaced(args.pages)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    for page in pages(args.pages):
        text = page.read_text()
        new = rewrite(text, args.results)
        if new != text:
            page.write_text(new)
            print(f"rewrote {page.relative_to(args.pages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
