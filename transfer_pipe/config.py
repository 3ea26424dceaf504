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
