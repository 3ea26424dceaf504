"""The sweep's linear probes: the runs the screens decide (the depth curve's, then the
learning curve's on the best layer), a layer's rows read once for its screens and probes,
one probe fitted by the heads pipeline, and the depth and learning curves' points.
"""

from __future__ import annotations

from collections.abc import Sequence

from transfer_pipe.curves import CurvePoint, LayerScore, LayerScreen, ranked
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.heads.card import read_card
from transfer_pipe.steps.results import TrainSummary
from transfer_pipe.steps.sweep.plan import INITS, PROBE, Init, ProbeRun, SweepPlan, probe_config
from transfer_pipe.steps.sweep.rows import LayerRows
from transfer_pipe.steps.train import finalize_training, prepare_training, train_head
from transfer_pipe.store import open_store


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
        ProbeRun(init, layer, depth, probe_config(plan, keys[init], layer))
        for depth, layer in enumerate(plan.layers)
        if layer in layers
    ]


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
            config = probe_config(plan, keys[init], best.layer, **(extra if fraction < 1 else {}))
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
