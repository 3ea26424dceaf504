"""A sweep's end: the advice (with fine-tuning's measured gain, when the store holds a
run), its id, the pictures, the markdown report and the JSON record under
``<store>/sweeps/<id>/``, and the summary that says it.
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from transfer_pipe.config import SweepConfig
from transfer_pipe.curves import (
    CurvePoint,
    LayerScore,
    LayerScreen,
    Recommendation,
    ScreenAgreement,
    recommend,
    screen_agreement,
)
from transfer_pipe.finetune.card import FINETUNE_DIR, FinetuneCard
from transfer_pipe.report import png_data_uri, save_sweep_plots, sweep_markdown
from transfer_pipe.steps.layer_choice import SWEEP_RECORD as RECORD
from transfer_pipe.steps.layer_choice import SWEEPS_DIR
from transfer_pipe.steps.results import SplitsShownFlat, TrainSummary
from transfer_pipe.steps.sweep.plan import Init, SweepPlan
from transfer_pipe.store import StorageOptions, cards
from transfer_pipe.store.cards import SplitSizes, card_folder, store_fs
from transfer_pipe.store.keys import content_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSummary(SplitsShownFlat):
    """What a sweep measured and advises; ``url`` is where its record and pictures live."""

    sweep_id: str
    feature_sets: dict[str, str]  # init -> feature-set key
    task: str
    classes: list[str]
    splits: SplitSizes
    screen: str  # the screen that chose where the probes ran
    screens: list[LayerScreen]  # every layer, both initialisations
    depth: list[LayerScore]  # the probes that ran
    agreement: list[ScreenAgreement]  # each screen's ranking against those probes
    curve: list[CurvePoint]
    recommendation: Recommendation
    embedded: int  # images this sweep's embed runs computed
    probes_fitted: int
    probes_reused: int
    url: str
    created: str
    # Wall seconds per phase ("embed pretrained", "depth random", "report", ...) and per
    # probe ("depth random stages.6", "curve pretrained stages.4 0.1"): where the time went.
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def message(self) -> str:
        """One line for the run's final state."""
        advice = self.recommendation
        return (
            f"{advice.action} at {advice.layer}"
            + (f" ({advice.policy})" if advice.policy else "")
            + f": {advice.command}; {self.embedded} images embedded, "
            f"{self.probes_fitted} probes fitted, {self.probes_reused} reused"
        )


def finalize_sweep(
    plan: SweepPlan,
    keys: dict[Init, str],
    screens: Sequence[LayerScreen],
    depth: Sequence[LayerScore],
    curve: Sequence[CurvePoint],
    summaries: Sequence[TrainSummary],
    embedded: int,
    seconds: dict[str, float] | None = None,
) -> SweepSummary:
    """The advice, the pictures and the record, saved under ``<store>/sweeps/<id>/``
    next to the feature sets; returns the summary."""
    config = plan.config
    first = summaries[0]
    rows_per_class = first.splits.train / max(1, len(first.classes))
    advice = recommend(
        depth,
        curve,
        rows_per_class,
        feature_set=keys["pretrained"],
        store=config.store,
        finetune_gain=_finetune_gain(config, keys["pretrained"], first.task),
        layers=plan.layers,
    )
    sweep_id = _sweep_id(plan, keys)
    url = card_folder(config.store, SWEEPS_DIR, sweep_id)
    summary = SweepSummary(
        sweep_id=sweep_id,
        feature_sets={init: key for init, key in keys.items()},
        task=first.task,
        classes=list(first.classes),
        splits=first.splits,
        screen=config.screen,
        screens=list(screens),
        depth=list(depth),
        agreement=screen_agreement(screens, depth),
        curve=list(curve),
        recommendation=advice,
        embedded=embedded,
        probes_fitted=sum(s.heads_fitted for s in summaries),
        probes_reused=sum(s.heads_reused for s in summaries),
        url=url,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=dict(seconds or {}),
    )
    summary = _save(summary, config.storage_options)
    logger.info("sweep %s: %s (%s)", sweep_id, advice.command, advice.reason)
    return summary


def _save(summary: SweepSummary, storage_options: StorageOptions = None) -> SweepSummary:
    """The pictures, the markdown report and the JSON record (written last, with the
    seconds the report took); returns the summary as recorded."""
    started = time.perf_counter()
    fs, folder = store_fs(summary.url, storage_options)
    fs.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pictures = save_sweep_plots(
            Path(tmp),
            summary.depth,
            summary.curve,
            summary.screens,
            summary.recommendation.layer,
        )
        report = _markdown(summary, {name: path.name for name, path in pictures.items()})
        (Path(tmp) / "report.md").write_text(report)
        for path in [*pictures.values(), Path(tmp) / "report.md"]:
            fs.put_file(str(path), posixpath.join(folder, path.name))
    report_s = round(time.perf_counter() - started, 3)
    summary = replace(summary, seconds={**summary.seconds, "report": report_s})
    fs.pipe_file(posixpath.join(folder, RECORD), summary.to_json().encode())
    return summary


def sweep_report(summary: SweepSummary, storage_options: StorageOptions = None) -> str:
    """The sweep's markdown report with its pictures inline (for the Prefect UI; the
    store read with the run's ``storage_options``)."""
    fs, folder = store_fs(summary.url, storage_options)
    images = {}
    for name in ("depth", "learning"):
        path = posixpath.join(folder, f"{name}.png")
        if fs.exists(path):
            images[name] = png_data_uri(fs.cat_file(path))
    return _markdown(summary, images)


def _markdown(summary: SweepSummary, images: dict[str, str]) -> str:
    return sweep_markdown(
        summary.depth,
        summary.curve,
        summary.recommendation,
        images,
        summary.seconds,
        summary.screens,
        summary.agreement,
        summary.screen,
    )


def _sweep_id(plan: SweepPlan, keys: dict[Init, str]) -> str:
    """The same feature sets, task, split and protocol give the same id (a rerun
    replaces the record)."""
    config = plan.config
    identity = {
        "feature_sets": keys,
        "task": config.task,
        "split": [config.val_fraction, config.test_fraction, config.split_seed],
        "fractions": sorted(set(config.fractions)),
        "seeds": config.seeds,
        "probe": [config.c_values, config.max_iter, config.c_patience, config.bootstrap],
        "probed": "all" if config.probe_all else [config.screen, config.probe_top],
    }
    return content_id(identity, 12)


def _finetune_gain(config: SweepConfig, feature_set: str, task: str) -> float | None:
    """Fine-tuning's measured test gain over the probe on this feature set and task (the
    newest such run), or None when the store holds none."""
    found = cards.list_cards(
        config.store, FINETUNE_DIR, FinetuneCard.from_dict, config.storage_options
    )
    runs = [
        card
        for card in found
        if card.feature_set == feature_set and card.task.name == task and card.init != "random"
    ]
    if not runs:
        return None
    newest = max(runs, key=lambda card: card.created)
    return float(newest.result.metrics.accuracy - newest.result.probe.metrics.accuracy)
