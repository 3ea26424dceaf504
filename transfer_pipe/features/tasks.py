"""What a driver sends to a worker and gets back: small, picklable, and free of torch.

A run plans and submits its shards with these alone, so a driver whose shards run on a
warm cluster (``transfer-pipe serve``'s) never imports torch or the shard code (a second
or more per run). ``run_shard`` is the task Dask ships, by reference: the worker imports
the shard code, and torch, the first time it runs one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transfer_pipe.backbones.registry import StoreLocation
from transfer_pipe.preprocessing import Preprocessing


@dataclass(frozen=True)
class EmbedderConfig:
    """What a worker needs to rebuild the same embedder; hashable, so it keys the cache."""

    backbone: str
    weights_file: str | None
    layers: tuple[str, ...]
    preprocessing: Preprocessing
    device: str = "auto"
    autocast: str = "none"  # "bf16" (CUDA or CPU) | "fp16" (CUDA only)
    threads: int | None = None  # torch intra-op threads; None: cores / threads of this worker
    # torch.compile the frozen model (CUDA; a worker without it runs eager and says so).
    # Not part of the key: compiled kernels differ from eager ones by rounding, as two
    # GPUs' kernels do (see ``Embedder``).
    compile: bool = False
    # The weights' digest: a long-lived worker whose cached model came from other bytes at
    # the same path (a backbone published again) builds the model afresh.
    weights_digest: str = ""
    # The stores a published (finetuned/<run>) backbone is looked up in: the run's. Not
    # part of the key: where the backbone is found changes no weight (the digest above
    # says which), so a worker's model serves runs on every store.
    stores: tuple[StoreLocation, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Reuse:
    """Copy row ``source_row`` of lineage ``source`` into offset ``offset`` of a shard."""

    offset: int
    source: str
    source_row: int


@dataclass(frozen=True)
class ShardCopy:
    """Shard ``shard`` of lineage ``source`` holds this shard's images in its order:
    copy its objects whole (``store.shard_copy``) rather than its rows."""

    source: str
    shard: int


@dataclass(frozen=True)
class ShardTask:
    """What one Dask task needs to produce one shard."""

    store: str
    key: str  # the version that writes it
    shard: int  # of the version's lineage
    storage_options: str | None  # JSON, as the run's config carries them
    uris: tuple[str, ...]  # one per used row of the shard ("" for a row lost to a repair)
    hashes: tuple[str, ...]  # the content hash of each of those rows ("" where lost)
    reuse: tuple[Reuse, ...]  # rows copied from other lineages by content hash
    embedder: EmbedderConfig
    layer_dims: tuple[tuple[str, int], ...]
    batch_size: int
    decoders: int | None = None  # decoding threads (None: ``features.batch.decoder_threads``)
    copy: ShardCopy | None = None  # a donor shard that lines up; else rows are copied
    # Rows only other versions name (a shard a repair cleared): each file is read against
    # its hash, and one changed or gone since is a row lost, not a bad image.
    foreign: tuple[bool, ...] = ()
    # The run that planned it: a worker opens the store afresh for each run, so nothing it
    # cached of the store (specs, array shapes) outlives a run, whatever ran in between.
    run: str = ""


@dataclass(frozen=True)
class ShardResult:
    shard: int
    rows: int
    embedded: int
    reused: int
    failed: int
    seconds: float
    finished: float  # wall-clock time.time(), to measure steady-state throughput
    copied: bool = False  # the donor shard's objects were copied whole
    copy_seconds: float = 0.0  # of ``seconds``: copying (objects or rows) from donors
    device: str = ""  # where its forward passes ran ("cpu", "cuda"); "" when none ran


def run_shard(task: ShardTask) -> ShardResult:
    """Produce and durably write one shard (``shard.produce_shard``, imported here, in
    the worker); returns a small summary, never arrays."""
    from transfer_pipe.features import shard

    return shard.produce_shard(task)
