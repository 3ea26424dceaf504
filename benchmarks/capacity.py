"""What a feature set costs per image, measured on real features: the inputs of
deploy/SCALING.md's arithmetic.

From a complete feature set (EfficientNet-Lite0 on Fashion-MNIST, every stage and the
penultimate layer; embedded here at ``--limit`` images unless ``--store`` holds one):
- stored bytes per row of each layer, as written (float32), and the same rows encoded
  again as float16 with the store's own codecs (one Zarr shard of ``--rows`` rows);
- stored bytes per row of the row columns and the Parquet table;
- objects per shard task (one per layer, plus its record), and all objects counted;
- the driver's memory per row of the manifest (the table it holds while it plans).

Writes benchmarks/results/capacity.json.

    python benchmarks/capacity.py [--store STORE] [--limit 10000] [--rows 8192]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from transfer_pipe.app.cli import add_options
from transfer_pipe.config import EmbedConfig, with_defaults
from transfer_pipe.data.sources import load_manifest
from transfer_pipe.steps.embed import embed
from transfer_pipe.store import open_store

RESULT = Path(__file__).parent / "results" / "capacity.json"


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def encoded_bytes(array: zarr.Array, values: np.ndarray, dtype: str) -> int:
    """Bytes of ``values`` written as one Zarr shard with ``array``'s codecs in ``dtype``."""
    with tempfile.TemporaryDirectory() as folder:
        target = zarr.create_array(
            folder,
            shape=values.shape,
            dtype=dtype,
            shards=values.shape,
            chunks=array.chunks,
            compressors=array.compressors,
            serializer=array.serializer,
        )
        target[:] = values.astype(dtype)
        return folder_bytes(Path(folder) / "c")  # the data, not the metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="a store holding the feature set (default: embed one)")
    add_options(parser, with_defaults(EmbedConfig, ("limit",), limit=10_000))
    parser.add_argument("--rows", type=int, default=8192, help="rows re-encoded per layer")
    options = parser.parse_args()
    store_url = options.store or tempfile.mkdtemp(prefix="capacity-")
    config = EmbedConfig(
        source="fashion-mnist",
        store=store_url,
        image_size=64,
        layers=("penultimate", "stages"),
        limit=None if options.store else options.limit,
    )
    key = embed(config).feature_set
    store = open_store(store_url)
    spec = store.spec(key)
    # A first version's rows are its lineage's: the lineage's arrays are its bytes.
    folder = Path(store_url) / "lineages" / spec.lineage
    layers: dict[str, Any] = {}
    for layer, dim in spec.layer_dims.items():
        array = zarr.open_array(str(folder / "features" / layer), mode="r")
        sample = np.asarray(array[: min(options.rows, spec.rows)])
        stored = folder_bytes(folder / "features" / layer) / spec.rows
        layers[layer] = {
            "dim": int(dim),
            "float32_stored_bytes_per_row": stored,
            "float32_raw_bytes_per_row": 4 * int(dim),
            "float16_bytes_per_row": encoded_bytes(array, sample, "float16") / len(sample),
            "float32_reencoded_bytes_per_row": encoded_bytes(array, sample, "float32")
            / len(sample),
        }
    columns = {
        path.name: folder_bytes(path) / spec.rows
        for path in folder.iterdir()
        if path.is_dir() and path.name != "features"
    }
    version = Path(store_url) / "versions" / key / "table"
    columns["version table (rows.parquet, appended.parquet)"] = folder_bytes(version) / spec.rows
    manifest = load_manifest("fashion-mnist")
    manifest_bytes = int(manifest.table.memory_usage(deep=True).sum())
    result = {
        "benchmark": "capacity",
        "feature_set": key,
        "rows": spec.rows,
        "backbone": spec.backbone,
        "image_size": 64,
        "shard_size": spec.shard_size,
        "layers": layers,
        "row_columns_bytes_per_row": columns,
        "objects_per_shard_task": len(spec.layers) + 1,
        "objects_counted": sum(1 for f in folder.rglob("*") if f.is_file()),
        "manifest_bytes_per_row": manifest_bytes / len(manifest.table),
        "manifest_columns": list(manifest.table.columns),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
