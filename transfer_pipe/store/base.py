"""The FeatureStore interface: what every store implementation promises.

Write protocol (what makes a killed run safe to resume):
1. ``create`` sizes every array from the manifest and writes the per-row columns, then
   marks the feature set initialized (a half-created one is recreated from scratch);
2. each shard writes only the chunks it alone owns (``write_shard``), and marks itself
   done last;
3. ``mark_complete`` is called once every shard is done, by the one driver process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from transfer_pipe.schema import FAILURE, SAMPLE_ID, URI
from transfer_pipe.store.claims import Claim, Holder

Status = Literal["missing", "incomplete", "complete"]


@dataclass(frozen=True)
class FeatureSetSpec:
    """Everything that determines a feature set's values, plus its layout."""

    key: str
    embedding_key: str
    source: str
    backbone: str
    weights_digest: str
    preprocessing: dict[str, Any]
    layers: tuple[str, ...]
    layer_dims: dict[str, int]
    dtype: str
    data_digest: str
    rows: int
    shard_size: int
    backbone_metadata: dict[str, Any] = field(default_factory=dict)
    # The local weights file the features were embedded with (an absolute path), None
    # for the backbone id's own weights: fine-tuning loads the very same weights again.
    weights_file: str | None = None
    autocast: str = "none"  # the forward pass's precision (part of embedding_key)

    @property
    def n_shards(self) -> int:
        return -(-self.rows // self.shard_size)

    def shard_rows(self, shard: int) -> range:
        """The rows shard ``shard`` owns: exactly one chunk of every per-row array."""
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.rows))


@dataclass(frozen=True)
class ShardStats:
    embedded: int  # rows computed by a forward pass
    reused: int  # rows copied from another feature set by content hash
    seconds: float


@dataclass(frozen=True)
class FeatureSetInfo:
    """One line of the catalog."""

    key: str
    source: str
    backbone: str
    layers: tuple[str, ...]
    rows: int
    failed: int
    status: Status
    nbytes: int
    created: str


@dataclass(frozen=True)
class LoadedFeatures:
    """Features of one layer with their labels and sample ids, aligned row by row."""

    features: Any  # numpy.ndarray or dask.array.Array, shape [n, dim]
    labels: np.ndarray
    sample_ids: np.ndarray
    splits: np.ndarray


class FeatureStore(ABC):
    """A catalog of feature sets addressed by content key."""

    url: str

    @abstractmethod
    def ensure_writable(self) -> None:
        """Fail early, before anything is written, when the store cannot be written to."""

    @abstractmethod
    def status(self, key: str) -> Status: ...

    @abstractmethod
    def claim(
        self,
        key: str,
        *,
        done: Callable[[], bool],
        waiting: Callable[[Holder], None] = lambda holder: None,
    ) -> Claim | None:
        """Take the claim to write feature set ``key`` (``store.claims``): returns it, held
        and renewed until ``release()``, once no other live run holds it; None as soon as
        ``done()`` is true (the other run finished the work). Only a holder may create
        the feature set, write its shards or mark it complete."""

    @abstractmethod
    def create(self, spec: FeatureSetSpec, rows: pd.DataFrame) -> None:
        """Size all arrays for ``spec`` and write the per-row columns (ROW_COLUMNS)."""

    @abstractmethod
    def spec(self, key: str) -> FeatureSetSpec: ...

    @abstractmethod
    def recover(self, key: str) -> int:
        """Remove what a killed writer left half-done (never a finished chunk); returns
        how many leftovers were removed. Called before resuming a feature set."""

    @abstractmethod
    def shards_done(self, key: str) -> np.ndarray:
        """Boolean mask over shards: True where the shard's rows are durably written."""

    @abstractmethod
    def write_shard(
        self,
        key: str,
        shard: int,
        features: Mapping[str, np.ndarray],
        failures: Sequence[str],
        stats: ShardStats,
    ) -> None:
        """Write one shard's rows (failed rows: NaN features and a non-empty reason)."""

    @abstractmethod
    def read_rows(self, key: str, layer: str, rows: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def row_table(self, key: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """ROW_COLUMNS plus ``failure`` (empty when the row is good) and ``done``;
        ``columns`` picks some of the string columns (``done`` is always there)."""

    @abstractmethod
    def shard_stats(self, key: str) -> pd.DataFrame:
        """Per shard: done, embedded, reused, seconds."""

    @abstractmethod
    def mark_complete(self, key: str, provenance: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def provenance(self, key: str) -> dict[str, Any]: ...

    @abstractmethod
    def list_keys(self) -> list[str]:
        """Keys of all initialized feature sets."""

    @abstractmethod
    def nbytes(self, key: str) -> int: ...

    @abstractmethod
    def load(
        self,
        key: str,
        *,
        split: str | None = None,
        layer: str | None = None,
        sample_ids: Sequence[str] | None = None,
        as_dask: bool = False,
    ) -> LoadedFeatures: ...

    # Behaviour shared by every implementation, built on the primitives above.

    def failures(self, key: str) -> pd.DataFrame:
        """The failures table: sample_id, uri, reason."""
        table = self.row_table(key, columns=(SAMPLE_ID, URI, FAILURE))
        bad = table[table[FAILURE] != ""]
        return bad.loc[:, [SAMPLE_ID, URI, FAILURE]].rename(columns={FAILURE: "reason"})

    def info(self, key: str) -> FeatureSetInfo:
        prov = self.provenance(key)
        spec = self.spec(key)
        return FeatureSetInfo(
            key=key,
            source=spec.source,
            backbone=spec.backbone,
            layers=spec.layers,
            rows=spec.rows,
            failed=len(self.failures(key)),
            status=self.status(key),
            nbytes=self.nbytes(key),
            created=str(prov.get("created", "")),
        )

    def catalog(self) -> list[FeatureSetInfo]:
        return [self.info(key) for key in self.list_keys()]
