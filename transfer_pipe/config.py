"""Frozen run configurations: validated values, no I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from transfer_pipe.errors import TransferPipeError

DEFAULT_BACKBONE = "efficientnet_lite0.in1k"
DEFAULT_STORE = "./feature-store"
Dtype = Literal["float32", "float16"]
Autocast = Literal["none", "bf16", "fp16"]


@dataclass(frozen=True)
class EmbedConfig:
    """Everything one embed run needs; small enough to be a Prefect flow parameter."""

    source: str
    store: str = DEFAULT_STORE
    backbone: str = DEFAULT_BACKBONE
    weights_file: str | None = None
    layers: tuple[str, ...] = ()  # empty: the pooled penultimate features
    image_size: int | None = None  # None: the backbone's own input size
    dtype: Dtype = "float32"
    shard_size: int = 512
    batch_size: int = 64
    limit: int | None = None
    dask_address: str | None = None
    workers: int | None = None  # local Dask worker threads; None: one per core (at most 4)
    device: str = "auto"  # "auto" picks CUDA when present
    autocast: Autocast = "none"  # only used on CUDA; CPU always runs float32

    def __post_init__(self) -> None:
        problems = []
        if self.dtype not in ("float32", "float16"):
            problems.append(f"--dtype must be float32 or float16, not {self.dtype!r}")
        if self.autocast not in ("none", "bf16", "fp16"):
            problems.append(f"--autocast must be none, bf16 or fp16, not {self.autocast!r}")
        if self.shard_size < 1:
            problems.append(f"--shard-size must be at least 1, not {self.shard_size}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.image_size is not None and not 8 <= self.image_size <= 4096:
            problems.append(f"--image-size must be between 8 and 4096, not {self.image_size}")
        if self.limit is not None and self.limit < 1:
            problems.append(f"--limit must be at least 1, not {self.limit}")
        if self.workers is not None and self.workers < 1:
            problems.append(f"--workers must be at least 1, not {self.workers}")
        if problems:
            raise TransferPipeError("; ".join(problems) + ".")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_HEADS = ("logreg", "svm", "knn", "ridge", "torch-linear", "mlp")


@dataclass(frozen=True)
class TrainConfig:
    """One heads run: a feature set (by key, or by the embed run that makes it), a task,
    the heads to fit, and the protocol's knobs."""

    feature_set: str | None = None  # a key of a complete feature set in ``store``
    embed: EmbedConfig | None = None  # or: embed this first (a no-op when it is cached)
    store: str = DEFAULT_STORE
    task: str = "source"  # "source", a built-in mapping, a JSON task file or a labels file
    heads: tuple[str, ...] = DEFAULT_HEADS
    layer: str | None = None  # None: the feature set's first layer
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    shots: int | None = None  # few-shot: labelled training rows per class
    shot_seeds: int = 5  # few-shot repeats, seeds 0..shot_seeds-1
    c_min: float = 1e-6
    c_max: float = 1e5
    c_values: int = 45
    max_iter: int = 100
    device: str = "auto"
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        problems = []
        if (self.feature_set is None) == (self.embed is None):
            problems.append("give either a feature set key or a source to embed, not both")
        if self.embed is not None and self.embed.store != self.store:
            problems.append("the embed run must write to the same store the heads read")
        if not self.heads:
            problems.append("--heads names no head")
        if self.shots is not None and self.shots < 1:
            problems.append(f"--shots must be at least 1, not {self.shots}")
        if self.shot_seeds < 1:
            problems.append(f"--shot-seeds must be at least 1, not {self.shot_seeds}")
        if not (0 < self.c_min < self.c_max) or self.c_values < 1:
            problems.append("the C grid needs 0 < --c-min < --c-max and at least one value")
        if self.max_iter < 1 or self.bootstrap < 1:
            problems.append("--max-iter and --bootstrap must be at least 1")
        if problems:
            raise TransferPipeError("; ".join(problems) + ".")


FREEZE_POLICY_HINT = "head, top-N (N = how many of the backbone's stages to train) or full"
AUGMENTATIONS = ("auto", "affine", "crop-flip", "none")


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run: a feature set (or the embed run that makes it) whose rows,
    task and splits it shares with the heads flow, how much of the backbone to train,
    and the optimizer's knobs. The linear probe for the same task and split is its
    baseline (and, with ``lp_ft``, its starting head)."""

    feature_set: str | None = None
    embed: EmbedConfig | None = None
    store: str = DEFAULT_STORE
    task: str = "source"
    policy: str = "top-2"  # "head", "top-N" or "full"
    lp_ft: bool = False  # start from the linear probe's weights (LP-FT)
    epochs: int = 10
    batch_size: int = 128
    accumulate: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4  # the top of the backbone's (the head: 10x, or 1x with LP-FT);
    # each stage further down gets lr_decay times less
    lr_decay: float = 0.7
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    augment: str = "auto"  # "affine" (small greyscale), "crop-flip" (photos), "none"
    bn: str = "frozen"  # "frozen": BatchNorm statistics stay; "train": trained blocks update them
    patience: int = 3  # epochs without a better validation accuracy before stopping
    seed: int = 0
    device: str = "auto"
    autocast: Autocast = "bf16"  # CUDA only; CPU trains in float32
    loader_workers: int | None = None  # DataLoader processes; None: cores - 1 (at most 8)
    loader_threads: int | None = None  # decode threads without processes; None: per core
    time_budget_s: float | None = None  # stop after the epoch that crosses it
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    publish: bool = False  # register the weights as a backbone and re-embed the dataset

    def __post_init__(self) -> None:
        problems = []
        if (self.feature_set is None) == (self.embed is None):
            problems.append("give either a feature set key or a source to embed, not both")
        if self.embed is not None and self.embed.store != self.store:
            problems.append("the embed run must write to the same store fine-tuning reads")
        try:
            parse_policy(self.policy)
        except TransferPipeError as err:
            problems.append(str(err))
        if self.epochs < 1 or self.batch_size < 1 or self.accumulate < 1:
            problems.append("--epochs, --batch-size and --accumulate must be at least 1")
        if self.lr <= 0 or not 0 < self.lr_decay <= 1:
            problems.append("--lr must be positive and --lr-decay in (0, 1]")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or not 0 <= self.label_smoothing < 1:
            problems.append("--weight-decay, --warmup-epochs >= 0 and --label-smoothing in [0, 1)")
        if self.augment not in AUGMENTATIONS:
            problems.append(f"--augment must be one of {', '.join(AUGMENTATIONS)}")
        if self.bn not in ("frozen", "train"):
            problems.append(f"--bn must be frozen or train, not {self.bn!r}")
        if self.patience < 1:
            problems.append(f"--patience must be at least 1, not {self.patience}")
        if self.autocast not in ("none", "bf16", "fp16"):
            problems.append(f"--autocast must be none, bf16 or fp16, not {self.autocast!r}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            problems.append("--time-budget must be positive")
        if problems:
            raise TransferPipeError("; ".join(problems) + ".")


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
