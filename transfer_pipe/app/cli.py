"""The ``transfer-pipe`` command.

The one place in the package that reaches the Prefect flows (imported lazily, so ``ls``,
``show`` and ``backbones`` answer instantly without starting a Prefect server).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import typing
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from transfer_pipe.app.serve import STORE_ENV, ServeOptions
from transfer_pipe.config import (
    REQUIRED,
    EmbedConfig,
    FinetuneConfig,
    GcConfig,
    HeadsListOptions,
    ListingOutput,
    Option,
    PredictConfig,
    ReportOutput,
    RunOutput,
    ShowOptions,
    StoreOptions,
    SweepConfig,
    TaskOptions,
    TrainConfig,
    VerifyOptions,
    options,
    run_options,
)
from transfer_pipe.errors import TransferPipeError

if typing.TYPE_CHECKING:  # importing transfer_pipe.steps loads torch: not for `ls`
    from transfer_pipe.records import Record
    from transfer_pipe.steps.results import EmbedSummary
    from transfer_pipe.store import FeatureSetInfo

T = TypeVar("T")


def _words(text: str) -> tuple[str, ...]:
    """A comma- (or space-) separated list, as the CLI takes layers and heads."""
    return tuple(part for part in text.replace(",", " ").split() if part)


def _numbers(text: str) -> tuple[float, ...]:
    """A comma- (or space-) separated list of numbers, e.g. ``0.01,0.1,1``."""
    try:
        return tuple(float(part) for part in _words(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers") from None


def add_options(parser: argparse.ArgumentParser | Any, offered: Iterable[Option]) -> None:
    """Offer config options (``transfer_pipe.config.option``) as arguments: name, type,
    default, choices and help all come from the config field."""
    for opt in offered:
        default = opt.default
        if opt.name == "store":  # a session-wide default store, without repeating --store
            default = os.environ.get(STORE_ENV, default)
        help_text = opt.help
        if not any(default is nothing for nothing in (None, False, (), REQUIRED)):
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            help_text += f" (default: {shown})"
        kwargs: dict[str, Any] = {"help": help_text.replace("%", "%%")}  # argparse formats it
        base = opt.base_type
        if base is bool:
            # An option that is on by default is turned off with --no-<flag>.
            kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
        elif typing.get_origin(base) is tuple and opt.positional:
            kwargs["nargs"] = "+" if opt.required else "*"
        elif typing.get_origin(base) is tuple and typing.get_args(base)[0] is float:
            kwargs["type"] = _numbers
        elif typing.get_origin(base) is tuple:
            kwargs["type"] = _words
        elif opt.choices is not None:
            kwargs["choices"] = opt.choices
        elif base in (int, float):
            kwargs["type"] = base
        if opt.positional:
            parser.add_argument(
                opt.name, **({} if opt.required else {"default": default}), **kwargs
            )
        elif opt.required:
            parser.add_argument(opt.flag, dest=opt.name, required=True, **kwargs)
        else:
            parser.add_argument(opt.flag, dest=opt.name, default=default, **kwargs)


def run_values_from(config_class: type, args: argparse.Namespace) -> dict[str, Any]:
    """The run's flat values (``config.run_options``) as parsed from the command line."""
    values = {o.name: getattr(args, o.name) for o in run_options(config_class)}
    # nargs="+" parses to a list; configs are frozen and hold tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def config_from(config_class: type[T], args: argparse.Namespace) -> T:
    """The config ``config_class`` of a command whose options ``add_options`` offered."""
    return config_class(**{o.name: getattr(args, o.name) for o in options(config_class)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transfer-pipe",
        description="Transfer learning on images: embed once into a feature store, reuse.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed a dataset into the feature store")
    add_options(embed, [*run_options(EmbedConfig), *options(RunOutput)])

    # The commands on a store: their options, then how they print (--json).
    for name, config_classes, help_text in (
        ("ls", (StoreOptions, ListingOutput), "list the feature sets in a store"),
        ("show", (ShowOptions, ListingOutput), "print a feature set's provenance and failures"),
        (
            "verify",
            (VerifyOptions, ReportOutput),
            "read a feature set end to end and name every damaged shard",
        ),
        (
            "gc",
            (GcConfig, ReportOutput),
            "remove old versions of feature sets and the rows only they hold",
        ),
        (
            "migrate",
            (StoreOptions, ReportOutput),
            "turn the feature sets an earlier release wrote (one copy each) into versions "
            "that share rows; every key stays valid",
        ),
        ("backbones", (), "list registered backbone ids"),
        ("finetuned", (StoreOptions, ListingOutput), "list fine-tuning runs and their results"),
    ):
        command = commands.add_parser(name, help=help_text)
        add_options(command, [o for config_class in config_classes for o in options(config_class)])

    for name, config_class, help_text in (
        (
            "train",
            TrainConfig,
            "fit and evaluate heads on a cached feature set (embedding it if needed)",
        ),
        (
            "finetune",
            FinetuneConfig,
            "fine-tune the backbone for a task and compare it with the linear probe",
        ),
        (
            "sweep",
            SweepConfig,
            "where to cut, and whether to fine-tune: the probe on every stage, pretrained "
            "vs random weights, and on shares of the labels",
        ),
    ):
        command = commands.add_parser(name, help=help_text)
        own = {o.name for o in options(config_class)}
        offered = run_options(config_class)
        add_options(command, [o for o in offered if o.name in own or o.positional])
        add_options(
            command.add_argument_group("how to embed SOURCE (when it is not a feature set key)"),
            [o for o in offered if o.name not in own and not o.positional],
        )
        outputs = ("json", "dry_run") if name in ("finetune", "sweep") else ("json",)
        add_options(command, options(RunOutput, only=outputs))

    heads = commands.add_parser("heads", help="fitted heads in a store")
    heads_commands = heads.add_subparsers(dest="heads_command", required=True)
    heads_ls = heads_commands.add_parser("ls", help="list fitted heads and their test metrics")
    add_options(heads_ls, [*options(HeadsListOptions), *options(ListingOutput)])

    predict = commands.add_parser("predict", help="classify image files with a fitted head")
    add_options(predict, [*run_options(PredictConfig), *options(RunOutput, only=("json",))])

    serve = commands.add_parser(
        "serve", help="run a Prefect server, work pools, deployments and a worker until Ctrl-C"
    )
    add_options(serve, options(ServeOptions))
    commands.add_parser(
        "automations",
        help="create or update, on the server of $PREFECT_API_URL, the automation that marks "
        "runs Crashed when their heartbeats stop (serve does it itself)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transfer_pipe.run_context import open_context

    try:
        with open_context():  # a command's checks hand their manifest to its embed run
            return int(_COMMANDS[args.command](args))
    except TransferPipeError as err:
        print(f"transfer-pipe: error: {err}", file=sys.stderr)
        return 2


def _run(config_class: type[T], args: argparse.Namespace) -> tuple[T, dict[str, Any]]:
    """The run's config, checked (the source's content included) before Prefect starts,
    and its flat values: the flow's parameters."""
    from transfer_pipe.steps.target import run_config

    values = run_values_from(config_class, args)
    config = run_config(config_class, values)
    _check_before_prefect(config)  # type: ignore[arg-type]
    return config, values


def _print_estimate(estimate: Record, messages: Sequence[str], as_json: bool) -> None:
    """What a run would cost, in words, then (a dry run's ``--json``) as its record."""
    print("\n".join(messages))
    if as_json:
        print(estimate.to_json())


def _embed(args: argparse.Namespace) -> int:
    if args.dry_run:  # checked as a real run is, but by checks that write nothing
        from transfer_pipe.steps.estimate import embed_estimate_message, estimate_embed
        from transfer_pipe.steps.target import run_config

        estimate = estimate_embed(run_config(EmbedConfig, run_values_from(EmbedConfig, args)))
        _print_estimate(estimate, [embed_estimate_message(estimate)], args.json)
        return 0
    _, values = _run(EmbedConfig, args)
    from flows.embed import embed_flow

    summary = embed_flow(**values)
    _print_summary(summary)
    if args.json:
        print(summary.to_json())
    return 0


def _check_before_prefect(config: EmbedConfig | TaskOptions) -> None:
    """Check every input, the source's content included, in seconds, before a Prefect
    server starts (20-40 s on a small machine); then set Prefect up for the run."""
    from transfer_pipe.steps.checks import check_inputs

    check_inputs(config)
    prepare_prefect()


def prepare_prefect() -> None:
    """Point Prefect at its server and settings, and quiet its own tracebacks for the
    errors whose message already says what to fix. Before Prefect runs a flow."""
    from transfer_pipe.app.serve import use_running_server

    use_running_server()  # a running `transfer-pipe serve`, else Prefect's temporary server
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # Offline, telemetry would log an error on every run.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The library's own log lines (what is embedded, failures, chosen C) in the run's logs.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "transfer_pipe")
    _quiet_prefect_tracebacks()


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a failed task or flow with its traceback; for a ``TransferPipeError``
    the one-line message is the whole story, so drop the traceback and keep the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TransferPipeError):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_prefect_tracebacks() -> None:
    from prefect.logging.configuration import setup_logging

    setup_logging()  # Prefect's handlers exist from here on; later setups only adjust levels
    loggers = [logging.getLogger()] + [
        logging.getLogger(name) for name in logging.root.manager.loggerDict if name[:7] == "prefect"
    ]
    for handler in {h for logger in loggers for h in logger.handlers}:
        if not any(isinstance(f, _NoTracebackForUserErrors) for f in handler.filters):
            handler.addFilter(_NoTracebackForUserErrors())


def _train(args: argparse.Namespace) -> int:
    _, values = _run(TrainConfig, args)
    from flows.train import train_flow
    from transfer_pipe.report import terminal_table

    summary = train_flow(**values)
    if summary.layer_choice is not None and summary.layer_choice.how != "given":
        print(f"layer {summary.layer} ({summary.layer_choice.how}): {summary.layer_choice.reason}")
    print(
        f"task {summary.task} on feature set {summary.feature_set} "
        f"(layer {summary.layer}; train/val/test {summary.splits.train}/"
        f"{summary.splits.val}/{summary.splits.test}, {summary.splits.origin}); "
        f"{summary.embedded} images embedded, {summary.heads_fitted} heads fitted and "
        f"{summary.heads_reused} reused (same features, task, split and options) by this run"
    )
    print(terminal_table(summary.table))
    if args.json:
        print(summary.to_json(exclude=("table",)))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    if args.dry_run:  # checked as a real run is, but by checks that write nothing
        from transfer_pipe.steps.estimate import estimate_finetune, finetune_estimate_message
        from transfer_pipe.steps.target import run_config

        config = run_config(FinetuneConfig, run_values_from(FinetuneConfig, args))
        tuned = estimate_finetune(config)
        _print_estimate(tuned, [finetune_estimate_message(tuned)], args.json)
        return 0
    _, values = _run(FinetuneConfig, args)
    from flows.finetune import finetune_flow
    from transfer_pipe.report import terminal_table

    summary = finetune_flow(**values)
    print(
        f"fine-tuned {summary.run_id} ({summary.policy}"
        f"{', LP-FT' if summary.lp_ft else ''}) on feature set {summary.feature_set}: "
        f"{summary.epochs} epochs (best {summary.best_epoch}, stopped by "
        f"{summary.stopped}) on {summary.device}; {summary.embedded} images embedded "
        f"by this run, {summary.skipped_images} images skipped as undecodable"
    )
    print(terminal_table(summary.table))
    print(summary.message)  # the verdict: whether it beats the probe, what to use instead
    if summary.published_feature_set:
        print(f"published as feature set {summary.published_feature_set}")
    if args.json:
        print(summary.to_json(exclude=("table",)))
    return 0


# A sweep that would embed more images than this prints its cost first.
SWEEP_ESTIMATE_ROWS = 5000


def _sweep(args: argparse.Namespace) -> int:
    from transfer_pipe.steps.estimate import embed_estimate_message, estimate_sweep
    from transfer_pipe.steps.sweep import prepare_sweep
    from transfer_pipe.steps.target import run_config

    plan = prepare_sweep(run_config(SweepConfig, run_values_from(SweepConfig, args)))
    large = any(e.limit is None or e.limit > SWEEP_ESTIMATE_ROWS for e in plan.embeds.values())
    if args.dry_run or large:
        estimate = estimate_sweep(plan)
        messages = [embed_estimate_message(embed) for embed in estimate.embeds]
        _print_estimate(estimate, messages, args.json and args.dry_run)
        if args.dry_run:
            return 0
    config = plan.config  # built and planned once, above
    _check_before_prefect(config)
    from flows.sweep import run_sweep
    from transfer_pipe.report import terminal_table

    summary = run_sweep(config)
    by_layer: dict[str, dict[str, Any]] = {}
    for screen in sorted(summary.screens, key=lambda s: s.depth):
        row = by_layer.setdefault(screen.layer, {"layer": screen.layer, "dim": screen.dim})
        row[f"{screen.init} k-NN"] = f"{screen.knn:.4f}"
        row[f"{screen.init} probe"] = ""
    for score in summary.depth:
        row = by_layer.setdefault(score.layer, {"layer": score.layer, "dim": score.dim})
        row[f"{score.init} probe"] = f"{score.accuracy:.4f} [{score.accuracy_ci95[0]:.3f}, " + (
            f"{score.accuracy_ci95[1]:.3f}]"
        )
    print(
        f"depth curve, task {summary.task}: the k-NN screen (validation accuracy) on every "
        f"layer, the linear probe (test accuracy, 95% CI) where the {summary.screen} screen "
        "sent it (--probe-all: every layer):"
    )
    print(terminal_table(list(by_layer.values())))
    taus = [a for a in summary.agreement if a.tau is not None]
    if taus:
        print(
            "screens against the probes (Kendall tau over the probed layers): "
            + ", ".join(f"{a.screen} {a.init} {a.tau:+.2f} ({a.layers})" for a in taus)
        )
    print("learning curve (share of the training labels, mean test accuracy over seeds):")
    print(
        terminal_table(
            [
                {
                    "init": p.init,
                    "layer": p.layer,
                    "share": f"{p.fraction:g}",
                    "train rows": p.train_rows,
                    "accuracy": f"{p.accuracy_mean:.4f}"
                    + (f" ± {p.accuracy_std:.4f}" if p.accuracy_std is not None else ""),
                }
                for p in summary.curve
            ]
        )
    )
    advice = summary.recommendation
    print(f"recommendation: {advice.reason}\n  next: {advice.command}")
    print(f"saved in {summary.url}; {summary.message}")
    if args.json:
        print(summary.to_json())
    return 0


def _finetuned(args: argparse.Namespace) -> int:
    from transfer_pipe.finetune.card import FinetuneListing
    from transfer_pipe.finetune.persist import list_cards

    rows = [FinetuneListing.of(card) for card in list_cards(args.store, args.storage_options)]
    return _print_rows(rows, args.json, f"no fine-tuning runs in {args.store}")


def _heads(args: argparse.Namespace) -> int:
    from transfer_pipe.heads.card import HeadListing, list_cards

    listed = config_from(HeadsListOptions, args)
    cards = list_cards(listed.store, listed.storage_options)
    if listed.feature_set:
        cards = [card for card in cards if card.feature_set == listed.feature_set]
    rows = [HeadListing.of(card) for card in cards]
    return _print_rows(rows, args.json, f"no fitted heads in {listed.store}")


def _print_rows(listing: Sequence[Record], as_json: bool, empty: str) -> int:
    """A listing as JSON, as an aligned table, or as the ``empty`` message."""
    if as_json:
        print(_listing_json(listing))
        return 0
    rows = [row.to_dict() for row in listing]
    if not rows:
        print(empty)
    else:
        from transfer_pipe.report import terminal_table

        print(terminal_table(rows))
    return 0


def _listing_json(listing: Sequence[Record]) -> str:
    """A listing as one line of JSON: the list of its records."""
    return json.dumps([row.to_dict() for row in listing])


def _predict(args: argparse.Namespace) -> int:
    from transfer_pipe.steps.predict import predict

    config = PredictConfig(**run_values_from(PredictConfig, args))
    summary = predict(
        config.store,
        config.head,
        list(config.paths),
        config.out,
        top_k=config.top_k,
        weights_file=config.weights_file,
        device=config.device,
        storage_options=config.storage_options,
    )
    print(
        f"{summary.rows} predictions written to {summary.out}: {summary.cached} from "
        f"cached embeddings, {summary.embedded} embedded now, {summary.failed} failed"
    )
    if args.json:
        print(summary.to_json())
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

    store = open_store(args.store, args.storage_options)
    infos = store.catalog()
    if args.json:
        print(_listing_json(infos))
        return 0
    if not infos:
        legacy = store.legacy_keys()
        if legacy:
            print(
                f"{args.store} holds {len(legacy)} feature sets of an earlier release: run "
                f"`transfer-pipe migrate --store {args.store}` to read them"
            )
        else:
            print(f"no feature sets in {args.store}")
        return 0
    header = ("KEY", "STATUS", "ROWS", "ADDED", "REMOVED", "CHANGED", "FAILED", "NEW MB", "CREATED")
    lineage = None
    for info in infos:  # catalog: by lineage, oldest first
        if info.lineage != lineage:
            lineage = info.lineage
            print(
                f"{'' if lineage == infos[0].lineage else chr(10)}lineage {lineage}: "
                f"{info.source} through {info.backbone}, layers {','.join(info.layers)}"
            )
            _print_table([header, *(_version_row(i) for i in infos if i.lineage == lineage)])
    print(f"\nstore {args.store}: {store.store_nbytes() / 1e6:.1f} MB")
    return 0


def _version_row(info: FeatureSetInfo) -> tuple[str, ...]:
    return (
        info.key,
        info.status,
        str(info.rows),
        str(info.added),
        str(info.removed),
        str(info.changed),
        str(info.failed),
        f"{info.new_bytes / 1e6:.2f}",
        info.created,
    )


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _show(args: argparse.Namespace) -> int:
    from transfer_pipe.store import open_store
    from transfer_pipe.store.provenance import Provenance

    store = open_store(args.store, args.storage_options)
    provenance = Provenance.read(store, args.key)
    if args.json:
        print(provenance.to_json())
        return 0
    info = provenance.version
    parent = f"parent {info.parent}" if info.parent else "the lineage's first version"
    print(
        f"feature set {args.key} ({provenance.status}): version of lineage {info.lineage}, "
        f"{parent}; {info.rows} rows: {info.added} added, {info.removed} removed, "
        f"{info.changed} changed; wrote {info.new_bytes / 1e6:.2f} MB, reads "
        f"{info.bytes / 1e6:.2f} MB"
    )
    print(json.dumps(provenance.to_dict(), indent=2))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from transfer_pipe.store import open_store
    from transfer_pipe.store.migrate import migrate

    store = open_store(args.store, args.storage_options)
    report = migrate(store)  # type: ignore[arg-type]  # the one implementation
    print(
        f"migrated {len(report.migrated)} feature sets into versions "
        f"({', '.join(report.migrated) or 'nothing to migrate'}); {report.shared_rows} rows "
        f"shared instead of copied; store {report.bytes_before / 1e6:.2f} MB -> "
        f"{report.bytes_after / 1e6:.2f} MB"
    )
    for line in report.left:
        print(f"left {line}")
    if args.json:
        print(report.to_json())
    return 0


def _gc(args: argparse.Namespace) -> int:
    from transfer_pipe.steps.gc import collect_garbage, gc_message

    report = collect_garbage(config_from(GcConfig, args))
    print(gc_message(report))
    if args.json:
        print(report.to_json())
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Exit status 1 when damage was found and left unrepaired, else 0."""
    from transfer_pipe.steps.verify import verify_feature_set, verify_message

    asked = config_from(VerifyOptions, args)
    report = verify_feature_set(asked.store, asked.key, asked.storage_options, repair=asked.repair)
    print(verify_message(report))
    if args.json:
        print(report.to_json())
    return 0 if report.ok or report.repaired else 1


def _serve(args: argparse.Namespace) -> int:
    from transfer_pipe.app.serve import serve

    return serve(config_from(ServeOptions, args))


def _automations(args: argparse.Namespace) -> int:
    from transfer_pipe.app.serve import (
        CRASH_AUTOMATION,
        MISSED_HEARTBEATS,
        ensure_crash_automation,
        heartbeat_seconds,
    )

    heartbeat_s = heartbeat_seconds()
    automation = ensure_crash_automation(heartbeat_s=heartbeat_s)
    print(
        f"automation {automation} ({CRASH_AUTOMATION!r}): a run without a heartbeat for "
        f"{MISSED_HEARTBEATS * heartbeat_s} s is marked Crashed; runs must send one every "
        f"{heartbeat_s} s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY)"
    )
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
    "verify": _verify,
    "gc": _gc,
    "migrate": _migrate,
    "backbones": _backbones,
    "train": _train,
    "finetune": _finetune,
    "finetuned": _finetuned,
    "sweep": _sweep,
    "heads": _heads,
    "predict": _predict,
    "serve": _serve,
    "automations": _automations,
}

if __name__ == "__main__":
    sys.exit(main())
