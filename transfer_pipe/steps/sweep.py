"""The transferability sweep: where to cut the backbone, and whether to fine-tune, measured
on the user's own data.

    plan = prepare_sweep(config)                       # the two embed runs, every stage
    keys = {init: embed(plan.embeds[init]).feature_set ...}
    rows = LayerRows()                                 # a layer's rows, read once
    screens = [screen_layer(run, rows) for run in screen_runs(plan, keys)]    # every layer
    depth = [probe_layer(run, fit_probe(run, rows)) for run in pretrained_runs(plan, keys,
                                                                              screens)]
    depth += [... for run in baseline_runs(plan, keys, screens, depth)]
    curve = [share_point(run, fit_probe(run, rows)) for run in curve_runs(plan, keys, depth)]
    summary = finalize_sweep(plan, keys, screens, depth, curve, ...)  # advice, pictures, record

The screens (k-NN accuracy and LogME, seconds per layer) rank every layer; the full probe
protocol, which costs minutes on a wide layer, runs only where it decides: on the best
pretrained layers by the screen, and for the random baseline on its best layer and at the
pretrained peak (the transfer gain is measured there). ``--probe-all`` probes every layer.

Everything is cached by the store: the embeddings by feature-set key (a dataset embedded at
the penultimate layer costs one forward pass more to add the stages), the probes by head
id; a second sweep embeds nothing and fits nothing.
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from transfer_pipe.backbones import PENULTIMATE, STAGES, random_variant
from transfer_pipe.config import EmbedConfig, SweepConfig, TrainConfig
from transfer_pipe.curves import (
    CurvePoint,
    LayerScore,
    LayerScreen,
    Recommendation,
    ScreenAgreement,
    ranked,
    recommend,
    screen_agreement,
)
from transfer_pipe.data.sources import source_from_description
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.finetune.card import FINETUNE_DIR, FinetuneCard
from transfer_pipe.heads.card import read_card
from transfer_pipe.heads.screens import knn_accuracy, logme
from transfer_pipe.heads.tasks import TaskData
from transfer_pipe.records import Record
from transfer_pipe.report import png_data_uri, save_sweep_plots, sweep_markdown
from transfer_pipe.steps.embed import embed, run_backbone
from transfer_pipe.steps.layer_choice import SWEEP_RECORD as RECORD
from transfer_pipe.steps.layer_choice import SWEEPS_DIR
from transfer_pipe.steps.results import TrainSummary
from transfer_pipe.steps.train import TrainPlan, finalize_training, prepare_training, train_head
from transfer_pipe.store import StorageOptions, cards, open_store
from transfer_pipe.store.cards import cached_record, card_folder, store_fs
from transfer_pipe.store.keys import content_id

logger = logging.getLogger(__name__)
Init = Literal["pretrained", "random"]
INITS: tuple[Init, ...] = ("pretrained", "random")
PROBE = "logreg"  # the heads flow's linear probe
SWEEP_LAYERS = (STAGES, PENULTIMATE)
# Training rows the k-NN screen votes with (a fixed draw): it ranks layers, and the
# ranking holds with 10,000 rows while the vote over 54,000 costs five times more.
KNN_ROWS = 10_000
SCREENS_DIR = "screens"  # <store>/cache/screens/: a layer's screens, computed once


@dataclass(frozen=True)
class SweepPlan:
    """The two embed runs of a sweep: the pretrained backbone and its random baseline,
    every stage plus the penultimate layer, on the same rows."""

    config: SweepConfig
    embeds: dict[Init, EmbedConfig]
    layers: tuple[str, ...]  # shallow to deep


@dataclass(frozen=True)
class ProbeRun:
    """One linear probe of the sweep: which weights, which layer, which share of labels."""

    init: Init
    layer: str
    depth: int
    config: TrainConfig
    fraction: float = 1.0


@dataclass(frozen=True)
class SweepSummary(Record):
    """What a sweep measured and advises; ``url`` is where its record and pictures live."""

    sweep_id: str
    feature_sets: dict[str, str]  # init -> feature-set key
    task: str
    classes: list[str]
    splits: dict[str, int]
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


def prepare_sweep(config: SweepConfig) -> SweepPlan:
    """The embed runs of the sweep, checked before anything is embedded: the backbone must
    have stages (a sweep probes each), and a feature-set key names its source again."""
    base = config.embed if config.embed is not None else _embed_of(config)
    backbone = run_backbone(base)
    try:
        stages = backbone.stage_layers()
    except TransferPipeError as err:
        raise TransferPipeError(
            f"backbone {backbone.id} has no stages to sweep ({err}); pick a backbone whose "
            "stages are known (`transfer-pipe backbones` lists them)."
        ) from err
    if not stages:
        raise TransferPipeError(f"backbone {backbone.id} has no stages to sweep.")
    pretrained = replace(base, layers=SWEEP_LAYERS)
    # The random baseline has no weights file of its own: its weights are seeded. Its rows
    # are a subset of the pretrained run's (``limit`` keeps a smaller limit's rows inside
    # a larger one's).
    baseline = replace(
        pretrained,
        backbone=random_variant(backbone.id),
        weights_file=None,
        limit=min(pretrained.limit or config.random_limit, config.random_limit),
    )
    return SweepPlan(config, {"pretrained": pretrained, "random": baseline}, (*stages, PENULTIMATE))


def _embed_of(config: SweepConfig) -> EmbedConfig:
    """How the given feature set was embedded, to embed its source again at every stage."""
    assert config.feature_set is not None
    store = open_store(config.store, config.storage_options)
    if store.status(config.feature_set) != "complete":
        raise TransferPipeError(
            f"feature set {config.feature_set} is not complete in {config.store}; "
            "run `transfer-pipe embed` again to finish it, or pass its source."
        )
    spec = store.spec(config.feature_set)
    return EmbedConfig(
        source=source_from_description(spec.source),
        store=config.store,
        backbone=spec.backbone,
        weights_file=spec.weights_file,
        image_size=int(spec.preprocessing["image_size"]),
        dtype=spec.dtype,  # type: ignore[arg-type]  # a spec's dtype is one of Dtype
        limit=spec.rows,
        device=config.device,
        storage_options=config.storage_options,
        dask_address=config.dask_address,
    )


def _probe_config(plan: SweepPlan, key: str, layer: str, **extra: object) -> TrainConfig:
    config = plan.config
    return config.heads_config(
        key,
        heads=(PROBE,),
        layer=layer,
        c_values=config.c_values,
        max_iter=config.max_iter,
        c_patience=config.c_patience,
        bootstrap=config.bootstrap,
        **extra,
    )


def screen_runs(plan: SweepPlan, keys: dict[Init, str]) -> list[ProbeRun]:
    """Every layer of both initialisations, all training labels: what the screens score."""
    return [
        ProbeRun(init, layer, depth, _probe_config(plan, keys[init], layer))
        for init in INITS
        for depth, layer in enumerate(plan.layers)
    ]


def screen_layer(run: ProbeRun, rows: LayerRows) -> LayerScreen:
    """The screens of one layer from its cached training and validation rows (never the
    test rows): the k-NN accuracy of ``KNN_ROWS`` training rows on the validation rows,
    and the LogME evidence of every training row. Kept in the store's cache: a second
    sweep reads them. The rows are read once for the layer's screens and probes
    (``rows``: the sweep's)."""
    config = run.config
    plan = prepare_training(config, config.feature_set or "")
    identity = [plan.feature_set, plan.layer, plan.task.digest, plan.splits.__dict__, KNN_ROWS]
    return cached_record(
        config.store,
        SCREENS_DIR,
        identity,
        lambda: _screen(run, rows.of(plan)),
        LayerScreen.from_dict,
        config.storage_options,
    )


def _screen(run: ProbeRun, data: TaskData) -> LayerScreen:
    started = time.perf_counter()
    train = data.train.sample(KNN_ROWS)
    knn = knn_accuracy(train.features, train.labels, data.val.features, data.val.labels)
    evidence = logme(data.train.features, data.train.labels)
    return LayerScreen(
        layer=run.layer,
        depth=run.depth,
        dim=int(data.train.features.shape[1]),
        init=run.init,
        knn=float(knn),
        logme=evidence,
        knn_rows=len(train),
        seconds=round(time.perf_counter() - started, 3),
    )


def pretrained_runs(
    plan: SweepPlan, keys: dict[Init, str], screens: Sequence[LayerScreen]
) -> list[ProbeRun]:
    """The pretrained depth curve's probes: the ``probe_top`` best layers by the screen,
    shallow to deep (``probe_all``: every layer)."""
    ranking = _probed(plan, screens, "pretrained")
    top = len(ranking) if plan.config.probe_all else plan.config.probe_top
    return _runs(plan, keys, "pretrained", ranking[:top])


def baseline_runs(
    plan: SweepPlan,
    keys: dict[Init, str],
    screens: Sequence[LayerScreen],
    depth: Sequence[LayerScore],
) -> list[ProbeRun]:
    """The random baseline's probes: its best layer by the screen (the seed's comparison
    of best against best) and the pretrained peak among ``depth`` (where the advice
    measures the transfer gain); ``probe_all``: every layer."""
    ranking = _probed(plan, screens, "random")
    best = ranking if plan.config.probe_all else ranking[:1]
    return _runs(plan, keys, "random", [*best, best_layer(depth, "pretrained").layer])


def _probed(plan: SweepPlan, screens: Sequence[LayerScreen], init: Init) -> list[str]:
    """One initialisation's layers by the sweep's screen, best first (every layer for
    ``probe_all``)."""
    if plan.config.probe_all:
        return list(plan.layers)
    return [s.layer for s in ranked(screens, init, plan.config.screen)]


def _runs(plan: SweepPlan, keys: dict[Init, str], init: Init, layers: list[str]) -> list[ProbeRun]:
    """Probe runs of ``init`` on ``layers`` (each once), shallow to deep, all labels."""
    return [
        ProbeRun(init, layer, depth, _probe_config(plan, keys[init], layer))
        for depth, layer in enumerate(plan.layers)
        if layer in layers
    ]


class LayerRows:
    """The rows a sweep read last, for its next screens and probes on the same rows (a
    layer's screens and probes, a share's seeds, the learning curve's shares at one
    layer): one layer's at a time (the penultimate's: 70,000 x 1,280 floats). A sweep
    makes one and hands it to each screen and probe."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._data: TaskData | None = None

    def of(self, plan: TrainPlan) -> TaskData:
        """The plan's rows: those kept, when they are the plan's, else read and kept."""
        kept = self.kept(plan)
        if kept is None:
            self.keep(plan, plan.data)
            return plan.data
        return kept

    def kept(self, plan: TrainPlan) -> TaskData | None:
        """The rows kept, when they are the plan's; else None."""
        return self._data if self._key == _rows_key(plan) else None

    def keep(self, plan: TrainPlan, data: TaskData) -> None:
        """Keep ``data``, the plan's rows, in place of those kept before."""
        self._key, self._data = _rows_key(plan), data


def fit_probe(run: ProbeRun, rows: LayerRows) -> TrainSummary:
    """One probe of the sweep: the heads pipeline (``steps.train.train``) on a feature set
    the sweep embedded, with two savings. Its heads are saved without the per-head
    confusion and per-class pictures (the sweep draws its own curves; they cost more than
    a small layer's fit). And consecutive probes on the same rows (a share's seeds, the
    learning curve's shares at one layer) read them from the store once (``rows``: the
    sweep's)."""
    config = run.config
    assert config.feature_set is not None  # the runs name it
    plan = prepare_training(config, config.feature_set)
    kept = rows.kept(plan)
    if kept is not None:
        plan.__dict__["data"] = kept  # functools.cached_property's own slot
    results = [train_head(plan, head, plots=False) for head in plan.runs]
    summary = finalize_training(plan, results)
    if "data" in plan.__dict__:  # read (or given) for this probe: keep it for the next
        rows.keep(plan, plan.data)
    return summary


def _rows_key(plan: TrainPlan) -> tuple[Any, ...]:
    return (plan.config.store, plan.feature_set, plan.layer, plan.task.digest, plan.splits)


def probe_layer(run: ProbeRun, summary: TrainSummary) -> LayerScore:
    """One point of the depth curve, from the probe's summary and its card (the
    validation accuracy at the chosen C, which picks the best layer without the test)."""
    head = summary.heads[PROBE]
    (head_id,) = head.head_ids
    card = read_card(run.config.store, head_id, run.config.storage_options)
    if card is None:  # just fitted or reused: the card is there
        raise TransferPipeError(f"head {head_id} has no card in {run.config.store}")
    store = open_store(run.config.store, run.config.storage_options)
    spec = store.spec(run.config.feature_set or "")
    low, high = head.accuracy_ci95 or (head.accuracy, head.accuracy)
    return LayerScore(
        layer=run.layer,
        depth=run.depth,
        dim=int(spec.layer_dims[run.layer]),
        init=run.init,
        accuracy=head.accuracy,
        accuracy_ci95=(float(low), float(high)),
        val_accuracy=max(float(p["val_accuracy"]) for p in card.validation_curve),
        head_id=head_id,
    )


def best_layer(depth: Sequence[LayerScore], init: Init) -> LayerScore:
    """The layer whose probe has the best validation accuracy (ties: the deeper one)."""
    mine = [score for score in depth if score.init == init]
    return max(mine, key=lambda score: (score.val_accuracy, score.depth))


def curve_runs(
    plan: SweepPlan, keys: dict[Init, str], depth: Sequence[LayerScore]
) -> list[ProbeRun]:
    """The learning curve's probes: each share of the training labels (seed repeats; all
    labels once) on the pretrained best layer, whose curve the advice reads; with
    ``probe_all``, on the random baseline's best layer too (a reference line for the
    plot, a fifth of the old sweep's probing time)."""
    runs = []
    for init in INITS if plan.config.probe_all else ("pretrained",):
        best = best_layer(depth, init)
        for fraction in sorted(set(plan.config.fractions)):
            # Every label is the depth curve's own probe at that layer: reused, not refit.
            extra = {"label_fraction": fraction, "shot_seeds": plan.config.seeds}
            config = _probe_config(plan, keys[init], best.layer, **(extra if fraction < 1 else {}))
            runs.append(ProbeRun(init, best.layer, best.depth, config, fraction))
    return runs


def share_point(run: ProbeRun, summary: TrainSummary) -> CurvePoint:
    """One point of the learning curve: the probe's mean test accuracy over the seeds."""
    head = summary.heads[PROBE]
    rows = []
    for head_id in head.head_ids:
        card = read_card(run.config.store, head_id, run.config.storage_options)
        if card is not None:
            rows.append(card.splits.train)
    return CurvePoint(
        init=run.init,
        layer=run.layer,
        fraction=run.fraction,
        seeds=len(head.head_ids),
        accuracy_mean=head.accuracy,
        accuracy_std=head.accuracy_std,
        train_rows=round(sum(rows) / len(rows)) if rows else 0,
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
        splits=first.splits.sizes,
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


class Stopwatch:
    """Wall seconds per named phase; a phase timed twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[name] = round(self.seconds.get(name, 0.0) + elapsed, 3)


def probe_phase(curve: Literal["screen", "depth", "curve"], run: ProbeRun) -> str:
    """The stopwatch's name of one run: ``screen <init> <layer>`` for a layer's screens,
    ``depth <init> <layer>`` on the depth curve, ``curve <init> <layer> <fraction>`` on the
    learning curve."""
    share = f" {run.fraction:g}" if curve == "curve" else ""
    return f"{curve} {run.init} {run.layer}{share}"


def sweep(config: SweepConfig) -> SweepSummary:
    """The whole sweep without an orchestrator (notebooks, tests)."""
    clock, rows = Stopwatch(), LayerRows()
    with clock.phase("prepare"):
        plan = prepare_sweep(config)
    embedded, keys = 0, {}
    for init in INITS:
        with clock.phase(f"embed {init}"):
            done = embed(plan.embeds[init])
        keys[init], embedded = done.feature_set, embedded + done.embedded
    screens = []
    for run in screen_runs(plan, keys):
        with clock.phase(f"screen {run.init}"), clock.phase(probe_phase("screen", run)):
            screens.append(screen_layer(run, rows))
    summaries: list[TrainSummary] = []
    depth: list[LayerScore] = []

    def probe(runs: list[ProbeRun]) -> None:
        for run in runs:
            with clock.phase(f"depth {run.init}"), clock.phase(probe_phase("depth", run)):
                summaries.append(fit_probe(run, rows))
                depth.append(probe_layer(run, summaries[-1]))

    probe(pretrained_runs(plan, keys, screens))
    probe(baseline_runs(plan, keys, screens, depth))
    curve = []
    for run in curve_runs(plan, keys, depth):
        with clock.phase(f"curve {run.init}"), clock.phase(probe_phase("curve", run)):
            summaries.append(fit_probe(run, rows))
            curve.append(share_point(run, summaries[-1]))
    return finalize_sweep(plan, keys, screens, depth, curve, summaries, embedded, clock.seconds)
