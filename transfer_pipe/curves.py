"""The transferability sweep's results and its advice: where to cut, and whether to fine-tune.

Pure code (no I/O): the sweep's orchestration measures, this module judges.

Records
    :class:`LayerScore` (one probe on one depth point, pretrained or random weights),
    :class:`CurvePoint` (one point of the learning curve, mean over seeds) and
    :class:`Recommendation` (the advice, the command to run next, and the measurements
    that decided it). All serialise with ``to_dict`` and read back with ``from_dict``.

The rule (:func:`recommend`), after Yosinski et al. (2014, "How transferable are features
in deep neural networks?": early layers are general, late layers specific to the base
task, transferability falls as the tasks drift apart) and the usual practice:

1. **Peak**: the pretrained depth point with the best *validation* accuracy (the test
   set never picks); on a tie the deeper point wins, since it needs no cut.
   Depth points are the pooled stage outputs ``stages.0 .. stages.K`` then
   ``penultimate``; their ``depth`` must number them ``0 .. depth_count - 1``.
2. **Transfer gain**: pretrained minus random-weights *test* accuracy at the peak.
3. **Similar** to the base task when the peak is among the last two depth points
   (``peak_depth >= depth_count - 2``) AND ``transfer_gain >= SIMILAR_GAIN`` (0.05).
4. **Large** data when ``rows_per_class >= LARGE_ROWS_PER_CLASS`` (1000). The learning
   curve does not decide it: a curve that still rises (the pretrained one at the peak
   layer, its mean accuracy at 100 % minus that at the second largest fraction
   ``> STILL_RISING``, 0.02) says more labels would still help, which the reason
   reports; it does not make a few hundred rows enough to fine-tune with.
5. Then:

   - small & similar: frozen features at the peak (a late layer);
   - small & distant: frozen features at the peak (an earlier layer, when the peak is
     not the deepest point);
   - large & similar: fine-tune ``top-N`` with ``N = depth_count - peak_depth`` (the
     depth points after the peak, plus one);
   - large & distant: fine-tune ``top-N`` with ``N = depth_count - peak_depth + 1``
     (one stage more), or ``full`` when ``transfer_gain < SIMILAR_GAIN`` (pretrained
     weights barely help, so the stem is retrained too).

   ``N`` is at least 1 and at most the number of stages a ``top-N`` policy can train:
   ``depth_count`` minus one when the deepest point is ``penultimate`` (that is the neck,
   which every ``top-N`` trains; see ``transfer_pipe.finetune.surgery``), else
   ``depth_count``.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self, get_args

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.records import Record, known_fields

Init = Literal["pretrained", "random"]
Action = Literal["frozen", "finetune"]

SIMILAR_GAIN = 0.05  # pretrained minus random test accuracy at the peak, to call a task similar
LARGE_ROWS_PER_CLASS = 1000.0  # training rows per class from which data counts as large
STILL_RISING = 0.02  # learning-curve rise (second largest fraction to 100 %): more labels help
# The deepest depth point: the pooled input of the classifier, after the last stage (the
# backbones registry's PENULTIMATE; not imported, this module stays below every layer).
NECK_LAYER = "penultimate"

_INITS: tuple[str, ...] = get_args(Init)


@dataclass(frozen=True, kw_only=True)
class LayerScore(Record):
    """The linear probe's scores on one depth point with one initialisation.

    ``depth`` 0 is the shallowest point; ``accuracy`` is on test with its 95 % bootstrap
    interval ``accuracy_ci95``; ``val_accuracy`` is on validation at the chosen C (what
    picks the peak); ``head_id`` names the saved probe.
    """

    layer: str
    depth: int
    dim: int
    init: Init
    accuracy: float
    accuracy_ci95: tuple[float, float]
    val_accuracy: float
    head_id: str

    def __post_init__(self) -> None:
        _check_init(self.init, f"layer score of {self.layer!r}")
        if self.depth < 0:
            raise TransferPipeError(
                f"layer {self.layer!r} has depth {self.depth}; depths count from 0 (shallowest)"
            )
        for name, value in (("accuracy", self.accuracy), ("val_accuracy", self.val_accuracy)):
            _check_accuracy(value, f"{name} of {self.init} layer {self.layer!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """A layer score as read back from ``to_dict`` output (JSON lists become tuples)."""
        fields = known_fields(cls, data, "a sweep's layer score")
        low, high = fields["accuracy_ci95"]
        fields["accuracy_ci95"] = (low, high)
        return cls(**fields)


Screen = Literal["knn", "logme"]
SCREENS: tuple[Screen, ...] = get_args(Screen)


@dataclass(frozen=True, kw_only=True)
class LayerScreen(Record):
    """The transferability screens of one depth point with one initialisation, from its
    cached features alone (``transfer_pipe.heads.screens``): ``knn`` the cosine k-NN
    accuracy of (at most ``knn_rows`` of) the training rows on the validation rows,
    ``logme`` the LogME evidence per example of the training rows. Higher is better
    for both; ``seconds`` is what computing both took."""

    layer: str
    depth: int
    dim: int
    init: Init
    knn: float
    logme: float
    knn_rows: int
    seconds: float

    def __post_init__(self) -> None:
        _check_init(self.init, f"screen of {self.layer!r}")
        _check_accuracy(self.knn, f"k-NN accuracy of {self.init} layer {self.layer!r}")

    def score(self, screen: Screen) -> float:
        return self.knn if screen == "knn" else self.logme

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """A screen as read back from ``to_dict`` output."""
        return cls(**known_fields(cls, data, "a sweep's layer screen"))


@dataclass(frozen=True, kw_only=True)
class ScreenAgreement(Record):
    """How well one screen ranked the depth points of one initialisation against the
    probes that ran on them: Kendall's tau between the screen and the probes' validation
    accuracy over ``layers`` points (``None`` below 3: two points rank only one way)."""

    screen: Screen
    init: Init
    layers: int
    tau: float | None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(**known_fields(cls, data, "a sweep's screen agreement"))


def screen_agreement(
    screens: Sequence[LayerScreen], depth: Sequence[LayerScore]
) -> list[ScreenAgreement]:
    """Kendall's tau of each screen against the probes, per initialisation, over the
    layers both measured (tau-b: ties in either ranking count half)."""
    probes: dict[tuple[str, str], float] = {(s.init, s.layer): s.val_accuracy for s in depth}
    found = []
    inits: tuple[Init, ...] = get_args(Init)
    for init in inits:
        mine = [s for s in screens if (init, s.layer) in probes and s.init == init]
        for screen in SCREENS:
            tau = None
            if len(mine) >= 3:
                tau = _kendall_tau(
                    [s.score(screen) for s in mine], [probes[init, s.layer] for s in mine]
                )
            found.append(ScreenAgreement(screen=screen, init=init, layers=len(mine), tau=tau))
    return found


def _kendall_tau(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b of two rankings (None when either ranks everything equal)."""
    from scipy.stats import kendalltau  # a sweep's end only: not on every import of this

    tau = float(kendalltau(a, b).statistic)
    return None if math.isnan(tau) else tau


def ranked(screens: Sequence[LayerScreen], init: Init, screen: Screen) -> list[LayerScreen]:
    """One initialisation's screens, best first by ``screen`` (ties: the deeper point,
    which needs no cut)."""
    mine = [s for s in screens if s.init == init]
    return sorted(mine, key=lambda s: (s.score(screen), s.depth), reverse=True)


@dataclass(frozen=True, kw_only=True)
class CurvePoint(Record):
    """One point of the learning curve: the probe on ``layer`` trained on ``fraction`` of
    the training labels, over ``seeds`` draws; ``accuracy_std`` is ``None`` for one seed;
    ``train_rows`` is the mean number of training rows used."""

    init: Init
    layer: str
    fraction: float
    seeds: int
    accuracy_mean: float
    accuracy_std: float | None
    train_rows: int

    def __post_init__(self) -> None:
        _check_init(self.init, f"learning-curve point of {self.layer!r}")
        if not 0.0 < self.fraction <= 1.0:  # NaN fails too
            raise TransferPipeError(
                f"learning-curve fraction {self.fraction} of {self.init} layer {self.layer!r} "
                "is outside (0, 1]; give the share of training labels, e.g. 0.25 for 25 %"
            )
        if self.seeds < 1:
            raise TransferPipeError(
                f"learning-curve point at fraction {self.fraction} has {self.seeds} seeds; "
                "it needs at least 1"
            )
        _check_accuracy(self.accuracy_mean, f"accuracy at fraction {self.fraction}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """A curve point as read back from ``to_dict`` output."""
        return cls(**known_fields(cls, data, "a sweep's learning-curve point"))


@dataclass(frozen=True, kw_only=True)
class Recommendation(Record):
    """The sweep's advice, the command that follows it, and the measurements behind it.

    ``layer`` is the layer to read for ``frozen`` (the peak layer otherwise); ``policy``
    is the freeze policy for ``finetune`` (``top-N`` or ``full``), ``None`` for frozen;
    ``expected_gain`` is a fine-tuning run's measured test gain over the probe on this
    feature set, ``None`` where none was run. ``curve_rise`` is the pretrained learning
    curve's rise from its second largest fraction to its largest (``None`` when fewer
    than two fractions were measured).
    """

    action: Action
    layer: str
    policy: str | None
    command: str
    reason: str
    expected_gain: float | None
    peak_layer: str
    peak_depth: int
    depth_count: int
    transfer_gain: float
    rows_per_class: float
    curve_rise: float | None
    similar: bool
    large: bool

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """A recommendation as read back from ``to_dict`` output."""
        return cls(**known_fields(cls, data, "a sweep's recommendation"))


def recommend(
    depth: Sequence[LayerScore],
    curve: Sequence[CurvePoint],
    rows_per_class: float,
    feature_set: str,
    store: str,
    finetune_gain: float | None = None,
    layers: Sequence[str] | None = None,
) -> Recommendation:
    """Apply the module's rule to the measured depth and learning curves.

    ``depth`` holds the probes for both initialisations (a random score is needed at
    least at the peak); ``layers`` names every depth point, shallow to deep, when the
    probes ran on some of them only (the sweep probes where its screens say the choice
    is decided); without it the pretrained probes must cover every depth point.
    ``curve`` is the learning curve (may be empty: then only ``rows_per_class`` judges
    the data size); ``rows_per_class`` the training rows per class; ``feature_set`` and
    ``store`` go into the command; ``finetune_gain`` is a fine-tuning run's test gain
    over the probe, where one exists.
    Raises :class:`TransferPipeError` on inconsistent input.
    """
    if not math.isfinite(rows_per_class) or rows_per_class <= 0:
        raise TransferPipeError(
            f"rows per class is {rows_per_class}; it must be a positive number "
            "(training rows divided by classes)"
        )
    pretrained, random = _depth_curves(depth, layers)
    depth_count = len(layers) if layers is not None else len(pretrained)
    deepest = layers[-1] if layers is not None else pretrained[-1].layer
    peak = max(pretrained, key=lambda s: (s.val_accuracy, s.depth))  # tie: deeper wins
    baseline = random.get(peak.layer)
    if baseline is None:
        raise TransferPipeError(
            f"the depth curve has no random-weights score at the peak layer {peak.layer!r}; "
            "probe the random-init baseline at every layer the pretrained curve has"
        )
    gain = peak.accuracy - baseline.accuracy
    late = peak.depth >= depth_count - 2
    similar = late and gain >= SIMILAR_GAIN
    rise, fractions = _curve_rise(curve, peak.layer)
    large = rows_per_class >= LARGE_ROWS_PER_CLASS

    stages = depth_count - 1 if deepest == NECK_LAYER else depth_count
    quoted_key, quoted_store = shlex.quote(feature_set), shlex.quote(store)
    policy: str | None
    if not large:
        action: Action = "frozen"
        policy = None
        command = (
            f"transfer-pipe train {quoted_key} --layer {shlex.quote(peak.layer)} "
            f"--store {quoted_store}"
        )
    else:
        action = "finetune"
        if gain < SIMILAR_GAIN:  # distant, and pretrained weights barely help
            policy = "full"
        else:
            extra = 0 if similar else 1
            policy = f"top-{_clamp(depth_count - peak.depth + extra, 1, max(stages, 1))}"
        command = f"transfer-pipe finetune {quoted_key} --policy {policy} --store {quoted_store}"

    reason = " ".join(
        [
            _similarity_text(peak, baseline.accuracy, gain, depth_count, similar, late)
            + "; "
            + _size_text(rows_per_class, rise, fractions, large)
            + ".",
            _action_text(action, policy, peak, depth_count, similar),
            _gain_text(finetune_gain),
        ]
    ).strip()
    return Recommendation(
        action=action,
        layer=peak.layer,
        policy=policy,
        command=command,
        reason=reason,
        expected_gain=finetune_gain,
        peak_layer=peak.layer,
        peak_depth=peak.depth,
        depth_count=depth_count,
        transfer_gain=gain,
        rows_per_class=float(rows_per_class),
        curve_rise=rise,
        similar=similar,
        large=large,
    )


def peak_score(depth: Sequence[LayerScore], layers: Sequence[str] | None = None) -> LayerScore:
    """The pretrained score the rule calls the peak (best validation accuracy, the deeper
    on a tie): what the sweep's learning curve should be measured on."""
    pretrained, _ = _depth_curves(depth, layers)
    return max(pretrained, key=lambda s: (s.val_accuracy, s.depth))


# -- checks and pieces of the rule -------------------------------------------------------------


def _depth_curves(
    depth: Sequence[LayerScore], layers: Sequence[str] | None = None
) -> tuple[list[LayerScore], dict[str, LayerScore]]:
    """The pretrained scores in depth order, and the random ones by layer; validated
    (against ``layers``, every depth point shallow to deep, when given)."""
    if not depth:
        raise TransferPipeError(
            "the depth curve is empty: probe at least one layer (embed with --layers stages)"
        )
    seen: set[tuple[str, str]] = set()
    for score in depth:
        if (score.init, score.layer) in seen:
            raise TransferPipeError(
                f"the depth curve holds {score.init} layer {score.layer!r} twice; "
                "give one probe per layer and initialisation"
            )
        seen.add((score.init, score.layer))
    pretrained = sorted((s for s in depth if s.init == "pretrained"), key=lambda s: s.depth)
    if not pretrained:
        raise TransferPipeError(
            "the depth curve has no pretrained scores; the sweep probes the pretrained "
            "weights at every layer"
        )
    depths = [s.depth for s in pretrained]
    if layers is None and depths != list(range(len(pretrained))):
        raise TransferPipeError(
            f"the pretrained depth points have depths {depths}; number them 0 .. "
            f"{len(pretrained) - 1}, shallowest first, one per layer"
        )
    for score in depth:
        if layers is not None and (
            score.depth >= len(layers) or layers[score.depth] != score.layer
        ):
            raise TransferPipeError(
                f"{score.init} layer {score.layer!r} has depth {score.depth}, but the depth "
                f"points are {list(layers)}; number them by their place there"
            )
    random = {s.layer: s for s in depth if s.init == "random"}
    by_layer = {s.layer: s.depth for s in pretrained}
    for layer, score in random.items():
        if layer in by_layer and by_layer[layer] != score.depth:
            raise TransferPipeError(
                f"layer {layer!r} has depth {by_layer[layer]} pretrained but {score.depth} "
                "random; both initialisations share one architecture"
            )
    return pretrained, random


def _curve_rise(
    curve: Sequence[CurvePoint], peak_layer: str
) -> tuple[float | None, tuple[float, float] | None]:
    """The pretrained learning curve's rise from its second largest fraction to its largest,
    and those two fractions; ``(None, None)`` with fewer than two fractions."""
    pretrained = [p for p in curve if p.init == "pretrained"]
    layers = {p.layer for p in pretrained}
    if len(layers) > 1:
        if peak_layer not in layers:
            raise TransferPipeError(
                f"the pretrained learning curve covers layers {sorted(layers)} but not the "
                f"peak layer {peak_layer!r}; measure it on the peak layer"
            )
        pretrained = [p for p in pretrained if p.layer == peak_layer]
    by_fraction: dict[float, CurvePoint] = {}
    for point in pretrained:
        if point.fraction in by_fraction:
            raise TransferPipeError(
                f"the learning curve holds fraction {point.fraction} of layer "
                f"{point.layer!r} twice; give one point (the mean over seeds) per fraction"
            )
        by_fraction[point.fraction] = point
    if len(by_fraction) < 2:
        return None, None
    below, top = sorted(by_fraction)[-2:]
    return by_fraction[top].accuracy_mean - by_fraction[below].accuracy_mean, (below, top)


def _similarity_text(
    peak: LayerScore, random_accuracy: float, gain: float, count: int, similar: bool, late: bool
) -> str:
    head = (
        f"The pretrained depth curve peaks at {peak.layer} ({peak.accuracy:.3f}, "
        f"random weights {random_accuracy:.3f} there)"
    )
    if similar:
        return (
            f"{head}, among the last two of {count} depth points: the task is similar to "
            "the base task"
        )
    if not late:
        before = count - 1 - peak.depth
        return (
            f"{head}, {before} depth points before the deepest: the late layers are specific "
            "to the base task, so the task is distant from it"
        )
    return (
        f"{head}: pretrained features beat random ones by only {gain:.3f} "
        f"(< {SIMILAR_GAIN}), so the task is distant from the base task"
    )


def _size_text(
    rows_per_class: float,
    rise: float | None,
    fractions: tuple[float, float] | None,
    large: bool,
) -> str:
    rows = f"{rows_per_class:.1f}".removesuffix(".0") + " training rows per class"
    curve = (
        ""
        if rise is None or fractions is None
        else f"the learning curve rises {rise:+.3f} from {fractions[0] * 100:g}% to "
        f"{fractions[1] * 100:g}% of the labels"
    )
    more = (
        f"; {curve} (> {STILL_RISING}): more labels would still help"
        if rise is not None and rise > STILL_RISING
        else (f" and {curve}" if curve else "")
    )
    if not large:
        return f"{rows} is small data (< {LARGE_ROWS_PER_CLASS:.0f}){more}"
    return f"{rows} is large data (>= {LARGE_ROWS_PER_CLASS:.0f}){more}"


def _action_text(
    action: Action, policy: str | None, peak: LayerScore, count: int, similar: bool
) -> str:
    if action == "frozen":
        where = "a late layer" if similar or peak.depth == count - 1 else "an earlier layer"
        return f"Train a head on the frozen features at {peak.layer} ({where})."
    if policy == "full":
        return "Fine-tune the whole network (policy full): the pretrained weights barely help."
    more = "" if similar else ", one stage more than for a similar task"
    stages = (policy or "").removeprefix("top-")
    return (
        f"Fine-tune the last {stages} stage(s) and the neck from the pretrained weights "
        f"(policy {policy}{more})."
    )


def _gain_text(finetune_gain: float | None) -> str:
    if finetune_gain is None:
        return ""
    return f"A fine-tuning run on this feature set measured {finetune_gain:+.3f} over the probe."


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))


def _check_init(init: str, what: str) -> None:
    if init not in _INITS:
        raise TransferPipeError(f"{what} has init {init!r}; use one of {list(_INITS)}")


def _check_accuracy(value: float, what: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise TransferPipeError(f"{what} is {value}; an accuracy lies in [0, 1]")
