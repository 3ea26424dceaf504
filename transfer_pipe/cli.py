"""The ``transfer-pipe`` command.

The one place in the package that reaches the Prefect flows (imported lazily, so ``ls``,
``show`` and ``backbones`` answer instantly without starting a Prefect server).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from transfer_pipe.config import DEFAULT_BACKBONE, DEFAULT_STORE, EmbedConfig
from transfer_pipe.errors import TransferPipeError


def _default_store() -> str:
    return os.environ.get("TRANSFER_PIPE_STORE", DEFAULT_STORE)


def _layers(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.replace(",", " ").split() if part)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transfer-pipe",
        description="Transfer learning on images: embed once into a feature store, reuse.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed a dataset into the feature store")
    embed.add_argument(
        "source",
        help="image folder, CSV/Parquet manifest, IDX folder, fsspec URL, or 'fashion-mnist'",
    )
    embed.add_argument("--store", default=_default_store(), help="feature store folder or URL")
    embed.add_argument("--backbone", default=DEFAULT_BACKBONE, help="backbone id (see backbones)")
    embed.add_argument("--weights-file", help="local state dict for the backbone")
    embed.add_argument(
        "--layers",
        type=_layers,
        default=(),
        help="comma-separated layers to pool ('penultimate' default, 'stages' = every stage)",
    )
    embed.add_argument("--image-size", type=int, help="input size (default: the backbone's)")
    embed.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    embed.add_argument("--shard-size", type=int, default=512, help="images per shard task")
    embed.add_argument("--batch-size", type=int, default=64)
    embed.add_argument("--limit", type=int, help="embed only N images (each split its share)")
    embed.add_argument("--dask-address", help="existing Dask scheduler (or DASK_SCHEDULER_ADDRESS)")
    embed.add_argument(
        "--workers",
        type=int,
        help="threads of the local Dask worker (default: one per core, at most 4)",
    )
    embed.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    embed.add_argument("--autocast", choices=["none", "bf16", "fp16"], default="none")
    embed.add_argument("--json", action="store_true", help="end with one JSON summary line")

    ls = commands.add_parser("ls", help="list the feature sets in a store")
    ls.add_argument("--store", default=_default_store())
    ls.add_argument("--json", action="store_true")

    show = commands.add_parser("show", help="print a feature set's provenance and failures")
    show.add_argument("key")
    show.add_argument("--store", default=_default_store())
    show.add_argument("--json", action="store_true")

    commands.add_parser("backbones", help="list registered backbone ids")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(_COMMANDS[args.command](args))
    except TransferPipeError as err:
        print(f"transfer-pipe: error: {err}", file=sys.stderr)
        return 2


def _embed(args: argparse.Namespace) -> int:
    config = EmbedConfig(
        source=args.source,
        store=args.store,
        backbone=args.backbone,
        weights_file=args.weights_file,
        layers=args.layers,
        image_size=args.image_size,
        dtype=args.dtype,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        limit=args.limit,
        dask_address=args.dask_address,
        workers=args.workers,
        device=args.device,
        autocast=args.autocast,
    )
    # A temporary Prefect server needs 20-40 s to start on a small machine, and offline it
    # cannot send telemetry (it would log an error on every run).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from transfer_pipe.steps import check_embed_inputs

    check_embed_inputs(config)  # seconds, where a failed flow run would take a server start
    from flows.embed import embed_flow

    summary = embed_flow(config)
    _print_summary(summary)
    if args.json:
        print(json.dumps(summary))
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    print(
        f"feature set {summary['feature_set']} ({summary['status']}): {summary['rows']} rows, "
        f"{summary['embedded']} embedded now, {summary['reused']} reused, "
        f"{summary['failed']} failed; backbone {summary['backbone']}, "
        f"layers {', '.join(summary['layers'])}; store {summary['store']}"
    )


def _ls(args: argparse.Namespace) -> int:
    from transfer_pipe.store import open_store

    infos = open_store(args.store).catalog()
    if args.json:
        print(json.dumps([dataclasses.asdict(info) for info in infos]))
        return 0
    if not infos:
        print(f"no feature sets in {args.store}")
        return 0
    header = ("KEY", "STATUS", "ROWS", "FAILED", "MB", "BACKBONE", "LAYERS", "SOURCE")
    rows = [
        (
            i.key,
            i.status,
            str(i.rows),
            str(i.failed),
            f"{i.nbytes / 1e6:.1f}",
            i.backbone,
            ",".join(i.layers),
            i.source,
        )
        for i in infos
    ]
    widths = [max(len(r[c]) for r in (header, *rows)) for c in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _show(args: argparse.Namespace) -> int:
    from transfer_pipe.store import open_store

    store = open_store(args.store)
    provenance = store.provenance(args.key)
    failures = store.failures(args.key)
    provenance["failures"] = failures.to_dict(orient="records")
    if args.json:
        print(json.dumps(provenance))
    else:
        print(json.dumps(provenance, indent=2))
    return 0


def _backbones(args: argparse.Namespace) -> int:
    from transfer_pipe.backbones import list_backbones

    for backbone_id in list_backbones():
        print(backbone_id)
    return 0


_COMMANDS = {"embed": _embed, "ls": _ls, "show": _show, "backbones": _backbones}

if __name__ == "__main__":
    sys.exit(main())
