"""The ``transfer-pipe`` command.

The one place in the package that reaches the Prefect flows (imported lazily, so ``ls``,
``show`` and ``backbones`` answer instantly without starting a Prefect server).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from transfer_pipe.config import (
    AUGMENTATIONS,
    DEFAULT_BACKBONE,
    DEFAULT_HEADS,
    DEFAULT_STORE,
    FREEZE_POLICY_HINT,
    EmbedConfig,
    FinetuneConfig,
    TrainConfig,
)
from transfer_pipe.errors import TransferPipeError

if TYPE_CHECKING:  # importing transfer_pipe.steps loads torch: not for `ls`
    from transfer_pipe.records import Record
    from transfer_pipe.steps.results import EmbedSummary


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

    finetuned = commands.add_parser("finetuned", help="list fine-tuning runs and their results")
    finetuned.add_argument("--store", default=_default_store())
    finetuned.add_argument("--json", action="store_true")
    _add_train(commands)
    _add_finetune(commands)
    heads = commands.add_parser("heads", help="fitted heads in a store")
    heads_commands = heads.add_subparsers(dest="heads_command", required=True)
    heads_ls = heads_commands.add_parser("ls", help="list fitted heads and their test metrics")
    heads_ls.add_argument("--store", default=_default_store())
    heads_ls.add_argument("--feature-set", help="only heads of this feature set")
    heads_ls.add_argument("--json", action="store_true")
    _add_predict(commands)
    return parser


def _add_train(commands: Any) -> None:
    train = commands.add_parser(
        "train", help="fit and evaluate heads on a cached feature set (embedding it if needed)"
    )
    train.add_argument("target", help="feature set key, or a source to embed first (see `embed`)")
    train.add_argument("--store", default=_default_store(), help="feature store folder or URL")
    train.add_argument(
        "--task",
        default="source",
        help="'source' (the source's labels), 'fashion-mnist-groups', a JSON task file, or a "
        "CSV/Parquet file of sample_id,label",
    )
    train.add_argument(
        "--heads",
        type=_layers,
        default=DEFAULT_HEADS,
        help=f"comma-separated heads (default {','.join(DEFAULT_HEADS)})",
    )
    train.add_argument(
        "--layer",
        help="feature layer (default: the feature set's first); 'a+b' puts layers side by side",
    )
    _add_split_options(train)
    train.add_argument("--shots", type=int, help="few-shot: labelled training rows per class")
    train.add_argument("--shot-seeds", type=int, default=5, help="few-shot repeats")
    train.add_argument("--c-min", type=float, default=1e-6, help="logreg C grid start")
    train.add_argument("--c-max", type=float, default=1e5, help="logreg C grid end")
    train.add_argument("--c-values", type=int, default=45, help="logreg C grid size")
    train.add_argument("--max-iter", type=int, default=100, help="L-BFGS iterations per C")
    train.add_argument("--bootstrap", type=int, default=1000, help="resamples for the CI")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda ... (torch heads)")
    _add_source_options(train)
    train.add_argument("--json", action="store_true", help="end with one JSON summary line")


def _add_split_options(parser: argparse.ArgumentParser) -> None:
    """How rows become train / validation / test: the heads and fine-tuning flows share it."""
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.2, help="when no source split")
    parser.add_argument("--split-seed", type=int, default=0)


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    """What to embed first when the target is a source rather than a feature set key."""
    embedding = parser.add_argument_group("when TARGET is a source")
    embedding.add_argument("--backbone", default=DEFAULT_BACKBONE)
    embedding.add_argument("--weights-file")
    embedding.add_argument("--image-size", type=int)
    embedding.add_argument("--limit", type=int)


def _add_finetune(commands: Any) -> None:
    finetune = commands.add_parser(
        "finetune",
        help="fine-tune the backbone for a task and compare it with the linear probe",
    )
    finetune.add_argument("target", help="feature set key, or a source to embed first")
    finetune.add_argument("--store", default=_default_store(), help="feature store folder or URL")
    finetune.add_argument("--task", default="source", help="as for `train`")
    finetune.add_argument(
        "--policy", default="top-2", help=f"what to train: {FREEZE_POLICY_HINT} (default top-2)"
    )
    finetune.add_argument(
        "--lp-ft", action="store_true", help="start from the linear probe's weights (LP-FT)"
    )
    finetune.add_argument("--epochs", type=int, default=10)
    finetune.add_argument("--batch-size", type=int, default=128)
    finetune.add_argument("--accumulate", type=int, default=1, help="micro-batches per step")
    finetune.add_argument(
        "--lr",
        type=float,
        default=1e-4,
        help="learning rate at the top of the backbone (a new head: 10x; LP-FT's head: 1x)",
    )
    finetune.add_argument(
        "--lr-decay", type=float, default=0.7, help="learning-rate factor per stage downwards"
    )
    finetune.add_argument("--weight-decay", type=float, default=0.05)
    finetune.add_argument("--warmup-epochs", type=float, default=1.0)
    finetune.add_argument("--label-smoothing", type=float, default=0.1)
    finetune.add_argument("--augment", choices=AUGMENTATIONS, default="auto")
    finetune.add_argument("--patience", type=int, default=3, help="early-stopping epochs")
    finetune.add_argument(
        "--bn",
        choices=["frozen", "train"],
        default="frozen",
        help="BatchNorm statistics: keep the pretrained ones, or update them in trained blocks",
    )
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--time-budget", type=float, help="seconds; stop after that epoch")
    _add_split_options(finetune)
    finetune.add_argument("--device", default="auto", help="auto, cpu, cuda ...")
    finetune.add_argument("--autocast", choices=["none", "bf16", "fp16"], default="bf16")
    finetune.add_argument(
        "--publish",
        action="store_true",
        help="re-embed the dataset with the fine-tuned backbone into a new feature set",
    )
    _add_source_options(finetune)
    finetune.add_argument("--json", action="store_true", help="end with one JSON summary line")


def _add_predict(commands: Any) -> None:
    predict = commands.add_parser("predict", help="classify image files with a fitted head")
    predict.add_argument("paths", nargs="+", help="image files or URLs")
    predict.add_argument("--store", default=_default_store())
    predict.add_argument("--head", required=True, help="head id (see `heads ls`)")
    predict.add_argument("--out", required=True, help="predictions file, .csv or .parquet")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--weights-file", help="the local weights the feature set used")
    predict.add_argument("--device", default="auto")


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
    _prefect_settings()
    from transfer_pipe.steps import check_embed_inputs

    check_embed_inputs(config)  # seconds, where a failed flow run would take a server start
    from flows.embed import embed_flow

    summary = embed_flow(config)
    _print_summary(summary)
    if args.json:
        print(summary.to_json())
    return 0


def _prefect_settings() -> None:
    # A temporary Prefect server needs 20-40 s to start on a small machine, and offline it
    # cannot send telemetry (it would log an error on every run).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _target(
    args: argparse.Namespace, layers: tuple[str, ...] = ()
) -> tuple[str | None, EmbedConfig | None]:
    """``args.target`` as (feature-set key, None) when the store holds it, else as
    (None, the embed run that makes it from a source)."""
    from transfer_pipe.store import open_store

    if open_store(args.store).status(args.target) != "missing":
        return args.target, None
    if re.fullmatch(r"[0-9a-f]{16}", args.target) and not os.path.exists(args.target):
        raise TransferPipeError(
            f"feature set {args.target} is not in {args.store}; "
            f"`transfer-pipe ls --store {args.store}` lists the feature sets it holds."
        )
    embed = EmbedConfig(
        source=args.target,
        store=args.store,
        backbone=args.backbone,
        weights_file=args.weights_file,
        layers=layers,
        image_size=args.image_size,
        limit=args.limit,
    )
    return None, embed


def _train(args: argparse.Namespace) -> int:
    feature_set, embed = _target(args, tuple(args.layer.split("+")) if args.layer else ())
    config = TrainConfig(
        feature_set=feature_set,
        embed=embed,
        store=args.store,
        task=args.task,
        heads=args.heads,
        layer=args.layer,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
        shots=args.shots,
        shot_seeds=args.shot_seeds,
        c_min=args.c_min,
        c_max=args.c_max,
        c_values=args.c_values,
        max_iter=args.max_iter,
        device=args.device,
        bootstrap=args.bootstrap,
    )
    _prefect_settings()
    from transfer_pipe.heads.protocol import head_kind
    from transfer_pipe.heads.tasks import parse_task

    for name in config.heads:  # seconds, where a failed flow run would take a server start
        head_kind(name)
    parse_task(config.task)
    if embed is not None:
        from transfer_pipe.steps import check_embed_inputs

        check_embed_inputs(embed)
    from flows.train import train_flow
    from transfer_pipe.report import terminal_table

    summary = train_flow(config)
    print(
        f"task {summary.task} on feature set {summary.feature_set} "
        f"(layer {summary.layer}; train/val/test {summary.splits['train']}/"
        f"{summary.splits['val']}/{summary.splits['test']}, {summary.split_origin}); "
        f"{summary.embedded} images embedded by this run"
    )
    print(terminal_table(summary.table))
    if args.json:
        print(summary.to_json(exclude=("table",)))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    feature_set, embed = _target(args)
    if feature_set is not None and (args.image_size or args.limit):
        raise TransferPipeError(
            "--image-size and --limit choose what to embed; a feature set already fixes both. "
            "Pass the source instead of the feature set key."
        )
    config = FinetuneConfig(
        feature_set=feature_set,
        embed=embed,
        store=args.store,
        task=args.task,
        policy=args.policy,
        lp_ft=args.lp_ft,
        epochs=args.epochs,
        batch_size=args.batch_size,
        accumulate=args.accumulate,
        lr=args.lr,
        lr_decay=args.lr_decay,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        augment=args.augment,
        patience=args.patience,
        bn=args.bn,
        seed=args.seed,
        device=args.device,
        autocast=args.autocast,
        time_budget_s=args.time_budget,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
        publish=args.publish,
    )
    _prefect_settings()
    from transfer_pipe.heads.tasks import parse_task

    parse_task(config.task)  # seconds, where a failed flow run would take a server start
    if embed is not None:
        from transfer_pipe.steps import check_embed_inputs

        check_embed_inputs(embed)
    from flows.finetune import finetune_flow
    from transfer_pipe.report import terminal_table

    summary = finetune_flow(config)
    print(
        f"fine-tuned {summary.run_id} ({summary.policy}"
        f"{', LP-FT' if summary.lp_ft else ''}) on feature set {summary.feature_set}: "
        f"{summary.epochs} epochs (best {summary.best_epoch}, stopped by "
        f"{summary.stopped}) on {summary.device}; {summary.embedded} images embedded "
        f"by this run, {summary.skipped_images} images skipped as undecodable"
    )
    print(terminal_table(summary.table))
    print(f"accuracy {summary.accuracy:.4f} vs probe {summary.probe_accuracy:.4f}")
    if summary.published_feature_set:
        print(f"published as feature set {summary.published_feature_set}")
    if args.json:
        print(summary.to_json(exclude=("table",)))
    return 0


def _finetuned(args: argparse.Namespace) -> int:
    from transfer_pipe.finetune.card import FinetuneListing
    from transfer_pipe.finetune.persist import list_cards

    rows = [FinetuneListing.of(card) for card in list_cards(args.store)]
    return _print_rows(rows, args.json, f"no fine-tuning runs in {args.store}")


def _heads(args: argparse.Namespace) -> int:
    from transfer_pipe.heads.card import HeadListing
    from transfer_pipe.heads.persist import list_cards

    cards = list_cards(args.store)
    if args.feature_set:
        cards = [card for card in cards if card.feature_set == args.feature_set]
    rows = [HeadListing.of(card) for card in cards]
    return _print_rows(rows, args.json, f"no fitted heads in {args.store}")


def _print_rows(listing: Sequence[Record], as_json: bool, empty: str) -> int:
    """A listing as JSON, as an aligned table, or as the ``empty`` message."""
    rows = [row.to_dict() for row in listing]
    if as_json:
        print(json.dumps(rows))
    elif not rows:
        print(empty)
    else:
        from transfer_pipe.report import terminal_table

        print(terminal_table(rows))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from transfer_pipe.steps.predict import predict

    summary = predict(
        args.store,
        args.head,
        args.paths,
        args.out,
        top_k=args.top_k,
        weights_file=args.weights_file,
        device=args.device,
    )
    print(
        f"{summary.rows} predictions written to {summary.out}: {summary.cached} from "
        f"cached embeddings, {summary.embedded} embedded now, {summary.failed} failed"
    )
    return 0


def _print_summary(summary: EmbedSummary) -> None:
    print(
        f"feature set {summary.feature_set} ({summary.status}): {summary.rows} rows, "
        f"{summary.embedded} embedded now, {summary.reused} reused, "
        f"{summary.failed} failed; backbone {summary.backbone}, "
        f"layers {', '.join(summary.layers)}; store {summary.store}"
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


_COMMANDS = {
    "embed": _embed,
    "ls": _ls,
    "show": _show,
    "backbones": _backbones,
    "train": _train,
    "finetune": _finetune,
    "finetuned": _finetuned,
    "heads": _heads,
    "predict": _predict,
}

if __name__ == "__main__":
    sys.exit(main())
