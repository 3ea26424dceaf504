"""What each pipeline step returns: one summary type per step, in one place.

The flows return them, the CLI prints them (``--json`` prints ``to_json()``), and Prefect
artifacts show them. A summary is computed, never read back from disk, so it has no
``from_dict``; the model cards that are read back live next to what writes them
(``heads.card``, ``finetune.card``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transfer_pipe.records import Record
from transfer_pipe.store.cards import LayerChoice, SplitSizes
from transfer_pipe.store.retention import GcReport


class SplitsShownFlat(Record):
    """A result whose ``splits`` (a ``SplitSizes``) prints as rows by split name with
    ``split_origin`` beside them: the JSON shape every summary and estimate printed
    before the splits were a record."""

    splits: SplitSizes

    def to_dict(self) -> dict[str, Any]:
        shown: dict[str, Any] = {}
        for name, value in super().to_dict().items():
            if name == "splits":
                shown |= {"splits": self.splits.sizes, "split_origin": self.splits.origin}
            else:
                shown[name] = value
        return shown


@dataclass(frozen=True)
class EmbedSummary(Record):
    """An embed run: the feature set it completed and what this run paid for."""

    feature_set: str
    store: str
    source: str
    backbone: str
    layers: list[str]
    rows: int
    failed: int
    embedded: int  # forward passes run by this run
    reused: int  # rows copied from other feature sets or written by an earlier run
    shards: int
    shards_computed: int
    shards_already_done: int  # by an earlier, interrupted run of the same feature set
    status_before: str  # "missing" | "incomplete" | "complete"
    steady_images_per_s: float | None
    status: str
    noted: int = 0  # images decoding used with a note (the failures table's notes)


@dataclass(frozen=True)
class HeadSummary(Record):
    """One head kind of a train run: test metrics (the mean over seeds, with ``*_std``, for
    few-shot and label-fraction runs), the ids of the heads fitted and their fitting
    seconds."""

    accuracy: float
    macro_f1: float
    balanced_accuracy: float
    ece: float
    head_ids: list[str]
    fit_seconds: float
    top5_accuracy: float | None = None  # only with more than five classes
    accuracy_std: float | None = None
    macro_f1_std: float | None = None
    balanced_accuracy_std: float | None = None
    top5_accuracy_std: float | None = None
    ece_std: float | None = None
    accuracy_ci95: list[float] | None = None  # a single head (no seed repeats) only
    chosen: dict[str, Any] | None = None  # a single head only

    def to_dict(self) -> dict[str, Any]:
        # An absent value is an absent key, as in the JSON the CLI printed before.
        return {k: v for k, v in super().to_dict().items() if v is not None}


@dataclass(frozen=True)
class TrainSummary(SplitsShownFlat):
    """A train run: the task and split, per head kind its summary, and the metrics table
    (one row per fitted head). ``splits`` are the task's full split sizes, also when each
    head trained on a few-shot draw or a share of the labels."""

    feature_set: str
    store: str
    task: str
    layer: str
    classes: list[str]
    splits: SplitSizes
    shots: int | None
    notes: list[str]
    embedded: int  # images embedded first by this run (given a source)
    heads_fitted: int  # heads fitted by this run
    heads_reused: int  # heads the store held already (same features, task, split, options)
    heads: dict[str, HeadSummary]
    table: list[dict[str, Any]]
    label_fraction: float | None = None  # share of the training labels each head was fitted on
    layer_choice: LayerChoice | None = None  # how ``layer`` was chosen (--layer auto)


@dataclass(frozen=True)
class FinetuneSummary(SplitsShownFlat):
    """A fine-tuning run: test metrics next to the probe's (and the run with the other
    init, when the store holds one), whether it ended below the probe on validation (then
    the probe is recommended), where the model lives, and the one line that says it."""

    run_id: str
    feature_set: str
    store: str
    task: str
    classes: list[str]
    splits: SplitSizes
    policy: str
    lp_ft: bool
    epochs: int
    best_epoch: int
    stopped: str
    image_size: int
    device: str
    accuracy: float
    macro_f1: float
    balanced_accuracy: float
    accuracy_ci95: list[float]
    probe_head_id: str
    probe_accuracy: float
    probe_macro_f1: float
    gain: float  # accuracy minus the probe's
    skipped_images: int
    train_seconds: float
    checkpoint: str
    url: str | None
    reused: bool
    embedded: int  # images embedded first by this run (given a source)
    table: list[dict[str, Any]]
    published_feature_set: str | None = None  # with publish: the re-embedded feature set
    init: str = "pretrained"  # or "random": trained from scratch (the baseline)
    val_accuracy: float | None = None  # of the kept epoch: what the probe is judged on
    probe_val_accuracy: float | None = None
    below_probe: bool = False  # on validation: then the probe is the better model
    recommended_head_id: str | None = None  # the probe's head id, when below it
    compared_run_id: str | None = None  # the run with the other init (same data and split)
    compared_accuracy: float | None = None  # its test accuracy
    message: str = ""  # one line: the result, and plainly whether the probe is better

    def published(self, feature_set: str) -> FinetuneSummary:
        """The summary of a run whose weights were published as ``feature_set``."""
        from dataclasses import replace  # (the module imports only ``dataclass``)

        return replace(
            self,
            published_feature_set=feature_set,
            message=f"{self.message}; published as feature set {feature_set}",
        )


@dataclass(frozen=True)
class PredictSummary(Record):
    """A predict run: where the predictions went and how each row got its features."""

    out: str
    rows: int
    cached: int  # features found in the store
    embedded: int  # embedded now
    failed: int  # unreadable or undecodable: a row with an error


@dataclass(frozen=True)
class PipelineSummary(Record):
    """A pipeline run: what its embed, heads and (optional) fine-tuning runs did, and the
    one line that says it (the run's final message)."""

    message: str
    embed: EmbedSummary
    train: TrainSummary
    finetune: FinetuneSummary | None = None
    retention: GcReport | None = None

    @classmethod
    def of(
        cls,
        embedded: EmbedSummary,
        trained: TrainSummary,
        tuned: FinetuneSummary | None = None,
        retained: GcReport | None = None,
    ) -> PipelineSummary:
        """The pipeline's summary and its message, e.g. ``no new images: 0 embedded, 10000
        reused, heads up to date``."""
        if embedded.embedded == 0 and trained.heads_fitted == 0:
            message = f"no new images: 0 embedded, {embedded.reused} reused, heads up to date"
        else:
            message = (
                f"{embedded.embedded} images embedded, {embedded.reused} reused; "
                f"{trained.heads_fitted} heads fitted, {trained.heads_reused} up to date"
            )
        if embedded.failed:
            message += f"; {embedded.failed} images failed (see the feature set's failures table)"
        if tuned is not None:
            message += (
                f"; fine-tuned {tuned.run_id}: accuracy {tuned.accuracy:.4f} vs probe "
                f"{tuned.probe_accuracy:.4f}"
            )
        if retained is not None and retained.removed:
            message += (
                f"; retention removed {len(retained.removed)} old versions "
                f"({retained.freed_bytes / 1e6:.1f} MB)"
            )
        return cls(
            message=message, embed=embedded, train=trained, finetune=tuned, retention=retained
        )
