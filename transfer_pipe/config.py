"""Frozen run configurations: validated values, no I/O.

Every option is written once, here: its name, type, default, allowed values, bounds and
help text live on the config field (``option(...)``). The CLI builds its parsers from
these fields (``transfer_pipe.app.cli``) and the checks below read the same metadata, so a
default or a description cannot drift between the command line, the flows and the docs.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from transfer_pipe.curves import Screen
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.files import parse_storage_options

DEFAULT_BACKBONE = "efficientnet_lite0.in1k"
DEFAULT_STORE = "./feature-store"
# ``--layer auto`` (steps.layer_choice): a sweep's advice, else the best on validation of
# the feature set's layers; ``TOP`` (the penultimate layer and the last three stages) is
# what an embed run taps by default (benchmarks/taps.py: the same time, twice the bytes).
AUTO_LAYER = "auto"
TOP = "top"
# Every head the protocol knows, in the order ``heads.protocol.HEAD_KINDS`` holds them: the
# one list of head names (the config's checks, the CLI and the registry read it).
HeadName = Literal["logreg", "svm", "knn", "ridge", "torch-linear", "mlp"]
HEAD_NAMES: tuple[HeadName, ...] = typing.get_args(HeadName)
DEFAULT_HEADS = HEAD_NAMES
Dtype = Literal["float32", "float16"]
Autocast = Literal["none", "bf16", "fp16"]
Decode = Literal["full", "dct", "nvjpeg"]
# Within the noise: benchmarks/photos.py, docs/pages/benchmarks/photos.md.
DEFAULT_DECODE: Decode = "dct"
Augment = Literal["auto", "affine", "crop-flip", "none"]
BatchNorm = Literal["frozen", "train"]
Init = Literal["pretrained", "random"]  # fine-tuning's starting weights
FREEZE_POLICY_HINT = "head, top-N (N = how many of the backbone's stages to train) or full"
STORAGE_OPTIONS_HELP = (
    "fsspec storage options for the store, a JSON object such as "
    '\'{"endpoint_url": "http://127.0.0.1:9000"}\' (default: none; credentials and endpoint '
    "come from the standard AWS_* environment variables, AWS_ENDPOINT_URL included)"
)


def option(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    flag: str | None = None,
    positional: bool = False,
    cli: bool = True,
) -> Any:
    """A config field that carries what the CLI (and any other form) needs to offer it.

    ``default=REQUIRED`` makes the field required. ``minimum``/``maximum`` bound a number
    (inclusive), ``above`` excludes its bound; allowed values come from a ``Literal``
    type; ``flag`` overrides the ``--field-name`` spelling; ``positional`` makes it a
    positional argument; ``cli=False`` keeps the field off the command line.
    """
    metadata = {
        "help": help,
        "minimum": minimum,
        "maximum": maximum,
        "above": above,
        "flag": flag,
        "positional": positional,
        "cli": cli,
    }
    if isinstance(default, list):  # mutable defaults are tuples here; guard the mistake
        raise TypeError("use a tuple default")
    return dataclasses.field(default=default, metadata=metadata)


REQUIRED: Any = dataclasses.MISSING


@dataclass(frozen=True)
class Option:
    """One field of a config as a form sees it."""

    name: str
    type: Any  # the resolved annotation
    default: Any
    help: str
    flag: str
    positional: bool
    minimum: float | None
    maximum: float | None
    above: float | None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def choices(self) -> tuple[Any, ...] | None:
        """The allowed values of a ``Literal`` field (``None`` for any other type)."""
        base = self.base_type
        return typing.get_args(base) if typing.get_origin(base) is Literal else None

    @property
    def optional(self) -> bool:
        return type(None) in typing.get_args(self.type)

    @property
    def base_type(self) -> Any:
        """The type without ``| None``."""
        args = typing.get_args(self.type)
        if typing.get_origin(self.type) in (typing.Union, types.UnionType) and type(None) in args:
            (rest,) = (a for a in args if a is not type(None))
            return rest
        return self.type


def options(config_class: type, only: tuple[str, ...] | None = None) -> Iterator[Option]:
    """The command-line options of ``config_class`` in field order (``only``: those names,
    in that order)."""
    hints = _hints(config_class)
    fields = {f.name: f for f in dataclasses.fields(config_class) if f.metadata.get("cli")}
    for name in only if only is not None else tuple(fields):
        f = fields[name]
        flag = f.metadata["flag"] or "--" + name.replace("_", "-")
        yield Option(
            name=name,
            type=hints[name],
            default=f.default,
            help=f.metadata["help"],
            flag=flag,
            positional=f.metadata["positional"],
            minimum=f.metadata["minimum"],
            maximum=f.metadata["maximum"],
            above=f.metadata["above"],
        )


def with_defaults(config_class: type, only: tuple[str, ...], **defaults: Any) -> tuple[Option, ...]:
    """The options ``only`` of ``config_class`` (see ``options``), those named in
    ``defaults`` with that default instead (a benchmark's own sizes): the same names,
    types, bounds and help, less a help's closing ``(default: ...)`` note, which speaks of
    the default replaced."""
    unknown = set(defaults) - set(only)
    if unknown:
        raise ValueError(f"no option(s) {', '.join(sorted(unknown))} among {only}")
    return tuple(
        dataclasses.replace(
            o, default=defaults[o.name], help=re.sub(r"\s*\(default: [^()]*\)$", "", o.help)
        )
        if o.name in defaults
        else o
        for o in options(config_class, only)
    )


@functools.cache
def _hints(config_class: type) -> dict[str, Any]:
    return typing.get_type_hints(config_class)


class Validated:
    """The base of an options record (a config, a command's options). On construction it
    checks every field against its option metadata (allowed values, bounds), then the
    class's own cross-field rules; all problems are reported together, each naming the
    option to fix."""

    def __post_init__(self) -> None:
        problems = [*self._option_problems(), *self._problems()]
        if problems:
            raise TransferPipeError("; ".join(problems) + ".")

    def _option_problems(self) -> Iterator[str]:
        for opt in options(type(self)):
            value = getattr(self, opt.name)
            if value is None:
                continue
            if opt.choices is not None and value not in opt.choices:
                allowed = ", ".join(map(str, opt.choices))
                yield f"{opt.flag} must be one of {allowed}, not {value!r}"
            if opt.minimum is not None and value < opt.minimum:
                yield f"{opt.flag} must be at least {opt.minimum:g}, not {value}"
            if opt.above is not None and value <= opt.above:
                yield f"{opt.flag} must be greater than {opt.above:g}, not {value}"
            if opt.maximum is not None and value > opt.maximum:
                yield f"{opt.flag} must be at most {opt.maximum:g}, not {value}"

    def _problems(self) -> list[str]:
        return []


def option_of(config_class: type, name: str) -> Any:
    """Another config's option, default and help included, offered again under a new name
    (the pipeline's ``finetune_epochs`` is fine-tuning's ``epochs``): written once."""
    source = _field(config_class, name)
    return dataclasses.field(default=source.default, metadata={**source.metadata, "flag": None})


S = TypeVar("S")


def setting(config_class: type, name: str) -> Any:
    """A field of a settings record (what a step hands a library routine: the probe's
    ``ProtocolOptions``, the training loop's ``TrainOptions``) that is ``config_class``'s
    option ``name``: its default is the option's, and ``settings_from`` fills it from a
    config. The option stays written once, on the config."""
    return dataclasses.field(default=_field(config_class, name).default, metadata={"config": name})


def _field(config_class: type, name: str) -> dataclasses.Field[Any]:
    """``config_class``'s field ``name``, the one home of an option offered elsewhere."""
    (found,) = (f for f in dataclasses.fields(config_class) if f.name == name)
    return found


def settings_from(record_class: type[S], config: Any, **values: Any) -> S:
    """A ``record_class`` (a dataclass) whose ``setting`` fields hold ``config``'s values
    of those options, and ``values`` on top (its fields that are no option)."""
    assert dataclasses.is_dataclass(record_class)
    fields = dataclasses.fields(record_class)
    copied = {
        f.name: getattr(config, f.metadata["config"]) for f in fields if "config" in f.metadata
    }
    return record_class(**{**copied, **values})


@dataclass(frozen=True)
class EmbedConfig(Validated):
    """Everything one embed run needs; small enough to be a Prefect flow parameter."""

    source: str = option(
        REQUIRED,
        "image folder, CSV/Parquet manifest, IDX folder, fsspec URL, or 'fashion-mnist'",
        positional=True,
    )
    store: str = option(DEFAULT_STORE, "feature store folder or URL")
    storage_options: str | None = option(None, STORAGE_OPTIONS_HELP)
    backbone: str = option(DEFAULT_BACKBONE, "backbone id (`transfer-pipe backbones` lists them)")
    weights_file: str | None = option(None, "local state dict for the backbone")
    layers: tuple[str, ...] = option(
        (),
        "comma-separated layers to pool (default: 'top', the pooled penultimate features "
        "and the last three stages, one forward pass: what `train --layer auto` weighs; "
        "'penultimate' alone stores half the bytes; 'stages' = every stage)",
    )
    image_size: int | None = option(
        None, "input size in pixels (default: the backbone's)", minimum=8, maximum=4096
    )
    decode: Decode = option(
        DEFAULT_DECODE,
        "how a JPEG is decoded: 'dct' decodes a photo much larger than the input at 1/2, 1/4 "
        "or 1/8 scale in libjpeg's DCT domain, never below the input size (several times "
        "faster on large photos), 'full' every pixel, 'nvjpeg' every pixel by nvJPEG on the "
        "CUDA device, resized there (CUDA only; CMYK, colour-managed and truncated JPEGs by "
        "Pillow); each a feature set of its own (other formats, and folders without JPEGs, "
        "decode in full with Pillow either way)",
    )
    decoders: int | None = option(
        None,
        "threads that decode and resize images in each shard task (default: 1 on CPU, where "
        "the forward pass fills the cores; the task's share of the cores on CUDA)",
        minimum=1,
    )
    dtype: Dtype = option("float32", "dtype the features are stored in")
    shard_size: int | None = option(
        None,
        "images per shard task, and per stored object of each layer (default: 512, doubled "
        "while there would be more than 256 tasks, up to 8192: 1M images make 245 tasks)",
        minimum=1,
    )
    batch_size: int = option(64, "images per forward pass", minimum=1)
    limit: int | None = option(
        None,
        "embed only N images: each split keeps its share, and the rows of a smaller limit "
        "are a subset of those of a larger one",
        minimum=1,
    )
    rehash: bool = option(
        False,
        "read and hash every image file again, ignoring the store's cache of content hashes "
        "(by path, size and modification time; a file rewritten with both unchanged is "
        "otherwise not noticed)",
    )
    dask_address: str | None = option(
        None, "address of an existing Dask scheduler (default: DASK_SCHEDULER_ADDRESS, else local)"
    )
    workers: int | None = option(
        None, "threads of the local Dask worker (default: one per core, at most 4)", minimum=1
    )
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:1 ...")
    autocast: Autocast = option(
        "none",
        "reduced-precision forward pass, a feature set of its own: bf16 on CUDA or a CPU "
        "(fast with AVX-512 BF16 or AMX), fp16 on CUDA only",
    )
    compile: bool = option(
        False,
        "torch.compile the frozen model on CUDA (its first batch compiles, once per worker); "
        "the same feature set as without it: compiled kernels differ by rounding only, as "
        "two GPUs' do",
    )

    def _problems(self) -> list[str]:
        return storage_options_problems(self.storage_options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TaskOptions(Validated):
    """What the heads and fine-tuning flows share: which features, which labels, which rows
    are train, validation and test."""

    feature_set: str | None = option(None, "a key of a complete feature set", cli=False)
    embed: EmbedConfig | None = option(None, "or: embed this source first", cli=False)
    store: str = option(DEFAULT_STORE, "feature store folder or URL")
    storage_options: str | None = option(None, STORAGE_OPTIONS_HELP)
    task: str = option(
        "source",
        "'source' (the source's labels), 'fashion-mnist-groups', a JSON task file, or a "
        "CSV/Parquet file of sample_id,label",
    )
    val_fraction: float = option(
        0.1, "share of the training rows held out for validation", minimum=0.01, maximum=0.9
    )
    test_fraction: float = option(
        0.2, "share of rows for test when the source has no split", minimum=0.01, maximum=0.9
    )
    split_seed: int = option(0, "seed of the stratified splits")
    device: str = option("auto", "auto (CUDA when present), cpu, cuda ...")
    # The cluster heads are fitted and models fine-tuned on, a feature-set key's run too;
    # the embed run of a source uses the same one (a shared option).
    dask_address: str | None = option_of(EmbedConfig, "dask_address")

    def __post_init__(self) -> None:
        if self.dask_address is None and self.embed is not None and self.embed.dask_address:
            # A config built around an embed run on a cluster fits on that cluster too.
            object.__setattr__(self, "dask_address", self.embed.dask_address)
        super().__post_init__()

    def _problems(self) -> list[str]:
        problems = storage_options_problems(self.storage_options)
        if (self.feature_set is None) == (self.embed is None):
            problems.append("give either a feature set key or a source to embed, not both")
        if self.embed is not None and (self.embed.store, self.embed.storage_options) != (
            self.store,
            self.storage_options,
        ):
            problems.append("the embed run must write to the same store this run reads")
        if self.embed is not None and self.embed.dask_address != self.dask_address:
            problems.append("the embed run must use the Dask cluster this run uses")
        return problems

    def heads_config(self, feature_set: str, **options: Any) -> TrainConfig:
        """A heads run on ``feature_set`` with this run's store, task, split and device,
        ``options`` on top: the probe a fine-tuning run or a sweep measures with."""
        shared = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(TaskOptions)
            if f.name not in ("feature_set", "embed")
        }
        return TrainConfig(feature_set=feature_set, **{**shared, **options})


@dataclass(frozen=True)
class TrainConfig(TaskOptions):
    """One heads run: a feature set (by key, or by the embed run that makes it), a task,
    the heads to fit, and the protocol's knobs."""

    heads: tuple[str, ...] = option(DEFAULT_HEADS, "comma-separated heads to fit")
    layer: str = option(
        AUTO_LAYER,
        "feature layer; 'a+b' puts layers side by side; 'auto': the layer the store's newest "
        "sweep of this source and task recommends, else the best on validation among the "
        "feature set's layers and all of them side by side (a source is embedded at the "
        "penultimate layer and the last three stages for it)",
    )
    shots: int | None = option(None, "few-shot: labelled training rows per class", minimum=1)
    shot_seeds: int = option(5, "few-shot repeats, seeds 0..N-1", minimum=1)
    label_fraction: float | None = option(
        None,
        "train on this share of the training labels, drawn per class (at least one row per "
        "class), repeated over seeds 0..--shot-seeds-1",
        above=0,
        maximum=1,
    )
    c_min: float = option(1e-6, "logreg C grid start (log-spaced)")
    c_max: float = option(1e5, "logreg C grid end")
    c_values: int = option(45, "logreg C grid size", minimum=1)
    max_iter: int = option(100, "L-BFGS iterations per C", minimum=1)
    c_patience: int = option(
        4,
        "stop the C walk once this many values in a row scored below the best validation "
        "accuracy while the validation loss rose at each (0: walk the whole grid)",
        minimum=0,
    )
    bootstrap: int = option(1000, "bootstrap resamples for the 95% interval", minimum=1)
    refit: bool = option(
        False,
        "fit every head again, even one the store holds for the same features, task, split "
        "and options (by default such a head is reused, not refitted)",
    )

    def _problems(self) -> list[str]:
        problems = super()._problems()
        if not self.heads:
            problems.append("--heads names no head")
        problems.extend(
            f"--heads: unknown head {name!r}; choose from {', '.join(HEAD_NAMES)}"
            for name in self.heads
            if name not in HEAD_NAMES
        )
        if not 0 < self.c_min < self.c_max:
            problems.append("the C grid needs 0 < --c-min < --c-max")
        if self.shots is not None and self.label_fraction is not None:
            problems.append(
                "--shots and --label-fraction both choose the training rows; give one of them"
            )
        return problems


@dataclass(frozen=True)
class FinetuneConfig(TaskOptions):
    """One fine-tuning run: a feature set (or the embed run that makes it) whose rows,
    task and splits it shares with the heads flow, how much of the backbone to train,
    and the optimizer's knobs. The linear probe for the same task and split is its
    baseline (and, with ``lp_ft``, its starting head). ``init="random"`` trains the same
    architecture from seeded random weights instead: the from-scratch baseline (see
    :meth:`as_trained`)."""

    policy: str = option(
        "top-2", f"what to train: {FREEZE_POLICY_HINT}; with --init random always full"
    )
    init: Init = option(
        "pretrained",
        "starting weights: the feature set's backbone, or 'random' (the same architecture "
        "with seeded random weights, trained whole, without LP-FT, BatchNorm statistics "
        "updated: the from-scratch baseline, compared with pretrained fine-tuning and the probe)",
    )
    lp_ft: bool = option(
        True,
        "start the head from the linear probe's weights (LP-FT), so fine-tuning starts where "
        "the probe ends (off: a new random head)",
    )
    epochs: int = option(10, "training epochs at most", minimum=1)
    batch_size: int = option(128, "images per micro-batch", minimum=1)
    accumulate: int = option(1, "micro-batches per optimizer step", minimum=1)
    lr: float = option(
        1e-4,
        "learning rate at the top of the backbone (a new head: 10x; LP-FT's head: 1x); "
        "each stage further down gets --lr-decay times less",
        above=0,
    )
    lr_decay: float = option(0.7, "learning-rate factor per stage downwards", above=0, maximum=1)
    weight_decay: float = option(0.05, "AdamW weight decay (not on biases and norms)", minimum=0)
    warmup_epochs: float = option(1.0, "linear warmup before the cosine schedule", minimum=0)
    label_smoothing: float = option(0.1, "label smoothing", minimum=0, maximum=0.99)
    augment: Augment = option(
        "auto", "'affine' (small greyscale), 'crop-flip' (photos), 'none'; auto picks"
    )
    bn: BatchNorm = option(
        "frozen",
        "BatchNorm statistics: keep the pretrained ones, or update them in trained stages",
    )
    patience: int = option(
        3, "epochs without a better validation accuracy before stopping", minimum=1
    )
    seed: int = option(0, "seed of initialisation, shuffling and augmentation")
    autocast: Autocast = option("bf16", "reduced-precision training; CUDA only")
    loader_workers: int | None = option(
        None, "DataLoader processes (default: cores - 1, at most 8; none on 2 cores)", cli=False
    )
    loader_threads: int | None = option(
        None, "decode threads without processes (default: one per core)", cli=False
    )
    time_budget_s: float | None = option(
        None,
        "seconds; the schedule is fitted to it and training stops after the epoch that crosses it",
        above=0,
        flag="--time-budget",
    )
    publish: bool = option(
        False, "register the weights as a backbone and re-embed the dataset with them"
    )
    force: bool = option(
        False,
        "publish even a model that ends below the linear probe on validation (refused "
        "without it: the probe is the better model)",
    )

    def _problems(self) -> list[str]:
        problems = super()._problems()
        try:
            parse_policy(self.policy)
        except TransferPipeError as err:
            problems.append(str(err))
        # The default policy (what --policy is when not given) gives way to full; another
        # one asked for cannot be honoured.
        (default_policy,) = (f.default for f in dataclasses.fields(self) if f.name == "policy")
        if self.init == "random" and self.policy not in ("full", default_policy):
            problems.append(
                f"--init random trains the whole network from random weights (--policy full), "
                f"not --policy {self.policy}: drop --policy, or fine-tune the pretrained "
                "weights (--init pretrained)"
            )
        return problems

    def as_trained(self) -> FinetuneConfig:
        """The options training actually uses. Random init trains the whole network
        (``full``: there is nothing pretrained to keep frozen), without LP-FT (no probe was
        fitted on random features) and with BatchNorm statistics updated (there are no
        pretrained ones to keep); pretrained init uses the options as given."""
        if self.init != "random":
            return self
        return dataclasses.replace(self, policy="full", lp_ft=False, bn="train")


@dataclass(frozen=True)
class PredictConfig(Validated):
    """Classify image files with a fitted head."""

    paths: tuple[str, ...] = option(REQUIRED, "image files or URLs", positional=True)
    head: str = option(REQUIRED, "head id (`transfer-pipe heads ls` lists them)")
    out: str = option(REQUIRED, "predictions file, .csv or .parquet")
    store: str = option(DEFAULT_STORE, "feature store folder or URL")
    storage_options: str | None = option(None, STORAGE_OPTIONS_HELP)
    top_k: int = option(5, "classes per prediction", minimum=1)
    weights_file: str | None = option(None, "the local weights file the feature set used")
    device: str = option("auto", "auto (CUDA when present), cpu, cuda ...")

    def _problems(self) -> list[str]:
        problems = storage_options_problems(self.storage_options)
        return problems if self.paths else [*problems, "give at least one image file"]


@dataclass(frozen=True)
class GcConfig(Validated):
    """Remove old versions of feature sets and the rows only they hold (``store.retention``)."""

    keys: tuple[str, ...] = option(
        (),
        "versions to remove (default: all but those --keep-last and --older-than keep)",
        positional=True,
    )
    store: str = option(DEFAULT_STORE, "feature store folder or URL")
    storage_options: str | None = option(None, STORAGE_OPTIONS_HELP)
    keep_last: int | None = option(
        None,
        "keep each lineage's newest N versions (7 when neither keys nor --older-than is given)",
        minimum=1,
    )
    older_than: float | None = option(
        None, "remove only versions created more than DAYS days ago", minimum=0
    )
    force: bool = option(
        False,
        "also remove versions that a saved head, fine-tuning run, sweep or published "
        "backbone references",
    )
    dry_run: bool = option(False, "print what would be removed and freed; remove nothing")

    def _problems(self) -> list[str]:
        problems = storage_options_problems(self.storage_options)
        if self.keys and (self.keep_last is not None or self.older_than is not None):
            problems.append("give versions to remove or --keep-last/--older-than, not both")
        return problems


@dataclass(frozen=True)
class StoreOptions:
    """A command that reads the feature store (``ls``, ``migrate``, ``finetuned``): where."""

    store: str = option_of(EmbedConfig, "store")
    storage_options: str | None = option_of(EmbedConfig, "storage_options")


@dataclass(frozen=True, kw_only=True)
class ShowOptions(StoreOptions):
    """``show``: one feature set's provenance and failures."""

    key: str = option(
        REQUIRED, "a feature set's key (`transfer-pipe ls` lists them)", positional=True
    )


@dataclass(frozen=True, kw_only=True)
class VerifyOptions(ShowOptions):
    """``verify``: read a feature set end to end, and optionally repair what is damaged."""

    repair: bool = option(
        False,
        "mark the damaged shards not done (and the set incomplete), restoring damaged "
        "metadata: the next embed of the same source recomputes only those shards",
    )


@dataclass(frozen=True)
class HeadsListOptions(StoreOptions):
    """``heads ls``: the fitted heads of a store."""

    feature_set: str | None = option(None, "only heads of this feature set")


DRY_RUN_HELP = (
    "print rows, layers, store bytes per dtype and the expected time, then stop: nothing "
    "is written or embedded and no Prefect server starts"
)


@dataclass(frozen=True)
class RunOutput:
    """What a run command prints besides its own lines: its summary as JSON, or only what
    the run would cost (``dry_run``; embed, finetune and sweep)."""

    json: bool = option(False, "end with one JSON summary line")
    dry_run: bool = option(False, DRY_RUN_HELP)


@dataclass(frozen=True)
class ReportOutput:
    """``--json`` of a command that changes or checks the store (verify, gc, migrate)."""

    json: bool = option(False, "end with one JSON report line")


@dataclass(frozen=True)
class ListingOutput:
    """``--json`` of a command that lists or shows what a store holds."""

    json: bool = option(False, "print one line of JSON instead of the text")


@dataclass(frozen=True)
class PipelineConfig(TrainConfig):
    """A scheduled run over a source that grows: embed it (only the images the store lacks),
    fit the heads the store lacks for the task, and optionally fine-tune."""

    finetune: bool = option(
        False, "also fine-tune the top of the backbone and compare it with the linear probe"
    )
    finetune_policy: str = option_of(FinetuneConfig, "policy")
    finetune_epochs: int = option_of(FinetuneConfig, "epochs")
    finetune_lp_ft: bool = option_of(FinetuneConfig, "lp_ft")
    finetune_time_budget_s: float | None = option_of(FinetuneConfig, "time_budget_s")
    keep_last: int | None = option(
        7,
        "after the run, keep the newest N versions of the source's lineage and every "
        "version a head, fine-tuning run, sweep or published backbone references "
        "(`transfer-pipe gc`); 0 keeps every version",
        minimum=0,
    )

    def _problems(self) -> list[str]:
        problems = super()._problems()
        if self.embed is None:
            problems.append("a pipeline embeds a source: give a source, not a feature set key")
        try:
            parse_policy(self.finetune_policy)
        except TransferPipeError as err:
            problems.append(str(err))
        return problems

    def train_config(self, feature_set: str) -> TrainConfig:
        """The heads run on the feature set this pipeline embedded."""
        names = {f.name for f in dataclasses.fields(TrainConfig)} - {"feature_set", "embed"}
        return TrainConfig(feature_set=feature_set, **{n: getattr(self, n) for n in names})

    def finetune_config(self, feature_set: str) -> FinetuneConfig:
        """The fine-tuning run on that feature set, on the same task and split."""
        shared = (
            "store",
            "storage_options",
            "task",
            "val_fraction",
            "test_fraction",
            "split_seed",
            "device",
            "dask_address",
        )
        return FinetuneConfig(
            feature_set=feature_set,
            policy=self.finetune_policy,
            epochs=self.finetune_epochs,
            lp_ft=self.finetune_lp_ft,
            time_budget_s=self.finetune_time_budget_s,
            **{n: getattr(self, n) for n in shared},
        )


@dataclass(frozen=True)
class SweepConfig(TaskOptions):
    """Where to cut the backbone, and whether to fine-tune: transferability screens on the
    pooled output of every stage, for the pretrained weights and for the same network with
    seeded random weights, the linear probe (the heads flow's protocol) where the screens
    say the choice is decided (the depth curve), then on shares of the training labels at
    the best layer (the learning curve), and the advice they give.
    The source is embedded at every stage (``--layers stages,penultimate``) whatever its
    embed options say about layers."""

    fractions: tuple[float, ...] = option(
        (0.01, 0.05, 0.1, 0.25, 1.0), "shares of the training labels for the learning curve"
    )
    seeds: int = option(3, "learning-curve repeats per share, seeds 0..N-1", minimum=1)
    random_limit: int = option(
        10_000,
        "embed the random-weights baseline on at most N images, each split keeping its "
        "share (a subset of the pretrained run's rows): a reference line needs fewer rows "
        "than the answer, and this halves a large sweep's forward passes",
        minimum=1,
    )
    screen: Screen = option(
        "knn",
        "the transferability screen that ranks the layers, computed on every layer from the "
        "cached features ('knn': cosine k-NN accuracy on the validation rows, 'logme': LogME "
        "evidence); both are recorded, this one decides where the full probe runs",
    )
    probe_top: int = option(
        2,
        "run the full probe on this many pretrained layers, the best by the screen (the "
        "random baseline: on its best layer by the screen and on the pretrained peak)",
        minimum=1,
    )
    probe_all: bool = option(
        False, "run the full probe on every layer of both initialisations, whatever the screens"
    )
    c_values: int = option_of(TrainConfig, "c_values")
    max_iter: int = option_of(TrainConfig, "max_iter")
    c_patience: int = option_of(TrainConfig, "c_patience")
    bootstrap: int = option_of(TrainConfig, "bootstrap")

    def _problems(self) -> list[str]:
        problems = super()._problems()
        if not self.fractions:
            problems.append("--fractions names no share of the training labels")
        problems.extend(
            f"--fractions: {share} is not a share of the training labels in (0, 1]"
            for share in self.fractions
            if not 0 < share <= 1
        )
        return problems


def storage_options_problems(storage_options: str | None) -> list[str]:
    """What is wrong with a ``--storage-options`` value (not a JSON object), if anything."""
    try:
        parse_storage_options(storage_options)
    except TransferPipeError as err:
        return [str(err)]
    return []


def parse_policy(policy: str) -> int | None:
    """How many stages a freeze policy trains: 0 for ``head``, N for ``top-N``, None (all,
    the stem included) for ``full``."""
    if policy == "head":
        return 0
    if policy == "full":
        return None
    if policy.startswith("top-") and policy[4:].isdigit() and int(policy[4:]) >= 1:
        return int(policy[4:])
    raise TransferPipeError(f"unknown freeze policy {policy!r}; use {FREEZE_POLICY_HINT}")


# -- a run's flat options: what a CLI command and a flow's parameter form both offer ---------

SOURCE = Option(
    name="source",
    type=str,
    default=REQUIRED,
    help="a source to embed first (as for embed), or the key of a feature set in the store",
    flag="--source",
    positional=True,
    minimum=None,
    maximum=None,
    above=None,
)
Config = EmbedConfig | TrainConfig | FinetuneConfig | SweepConfig | PredictConfig
SHARED_OPTIONS = ("store", "storage_options", "device", "dask_address")


def run_options(config_class: type) -> tuple[Option, ...]:
    """The flat options of one run of ``config_class``, each offered once: for heads and
    fine-tuning runs, ``source`` (a source or a feature-set key), the run's own options,
    then the embed options that say how to embed the source. A name the run already has
    is the run's own (a fine-tuning run's ``batch_size``), except ``SHARED_OPTIONS``, which
    the embedding of its source uses too."""
    own = tuple(options(config_class))
    if not issubclass(config_class, TaskOptions):
        return own
    names = {o.name for o in own}
    embed = tuple(o for o in options(EmbedConfig) if o.name not in names | {"source"})
    return (SOURCE, *own, *embed)


def split_run_values(
    config_class: type, values: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's flat ``values`` (see ``run_options``) as (the run config's own fields, the
    embed config's fields for its source). A train run reads the layers it embeds from
    ``layer`` (``a+b``: both; ``auto``: the embed default) unless ``layers`` is given."""
    unknown = set(values) - {o.name for o in run_options(config_class)}
    if unknown:
        raise TransferPipeError(f"unknown option(s) {', '.join(sorted(unknown))}")
    own_names = {o.name for o in options(config_class)}
    own = {k: v for k, v in values.items() if k in own_names}
    embed_names = {o.name for o in options(EmbedConfig)} - (own_names - set(SHARED_OPTIONS))
    embed_names.discard("source")  # the run's own ``source`` may be a feature-set key
    embed = {k: v for k, v in values.items() if k in embed_names}
    if not embed.get("layers") and "layer" in own_names:
        embed["layers"] = _layers_to_embed(own.get("layer") or AUTO_LAYER)
    return own, embed


def _layers_to_embed(layer: str) -> tuple[str, ...]:
    """The layers a train run embeds its source at for ``--layer`` (``auto``: the embed
    default, ``TOP``)."""
    return () if layer == AUTO_LAYER else tuple(layer.split("+"))


def run_values(config: Config) -> dict[str, Any]:
    """The flat values of ``config`` (the inverse of building it from ``run_options``): what
    a flow is called with. Raises ``ValueError`` for an embed config that the flat options
    cannot express (a value of a name the run shares or does not offer)."""
    own = {o.name: getattr(config, o.name) for o in options(type(config))}
    if not isinstance(config, TaskOptions):
        return own
    if config.embed is None:
        assert config.feature_set is not None  # the config's validation holds one of the two
        return {"source": config.feature_set, **own}
    offered = {o.name for o in run_options(type(config))}
    values = {"source": config.embed.source, **own}
    for opt in options(EmbedConfig):
        value = getattr(config.embed, opt.name)
        if opt.name in offered and opt.name not in own:
            values[opt.name] = value
        elif opt.name != "source" and value != (
            own[opt.name] if opt.name in SHARED_OPTIONS else opt.default
        ):
            raise ValueError(
                f"the embed option {opt.name}={value!r} cannot be given to a "
                f"{type(config).__name__} run; embed first, then pass the feature set key"
            )
    return values
