"""The sweep's records and its recommendation rule, on constructed curves: one case per
branch of the rule, its tie-break and thresholds, and its input checks.

Each test names the manual mutation of ``transfer_pipe/curves.py`` seen to make it fail.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pytest
from scipy.stats import kendalltau

from tests.support.curves import FLAT, KEY, LAYERS, RANDOM_ACC, STORE, depth_curve, learning_curve
from transfer_pipe.config import parse_policy
from transfer_pipe.curves import (
    LARGE_ROWS_PER_CLASS,
    CurvePoint,
    Init,
    LayerScore,
    LayerScreen,
    Recommendation,
    peak_score,
    ranked,
    recommend,
    screen_agreement,
)
from transfer_pipe.errors import TransferPipeError


def test_small_and_similar_reads_the_late_peak_frozen() -> None:
    depth = depth_curve([0.50, 0.62, 0.75, 0.85, 0.874], RANDOM_ACC)
    rec = recommend(depth, learning_curve("penultimate", FLAT), 540, KEY, STORE)
    assert (rec.action, rec.layer, rec.policy) == ("frozen", "penultimate", None)
    assert rec.command == f"transfer-pipe train {KEY} --layer penultimate --store {STORE}"
    assert rec.similar and not rec.large
    assert (rec.peak_layer, rec.peak_depth, rec.depth_count) == ("penultimate", 4, 5)
    assert rec.transfer_gain == pytest.approx(0.874 - 0.612)
    assert rec.curve_rise == pytest.approx(0.01)
    for quoted in ("penultimate", "0.874", "0.612", "540 training rows per class", "+0.010"):
        assert quoted in rec.reason
    assert "similar" in rec.reason and "small data" in rec.reason
    assert rec.expected_gain is None


def test_small_and_distant_reads_an_earlier_layer_frozen() -> None:
    depth = depth_curve([0.70, 0.81, 0.78, 0.74, 0.72], RANDOM_ACC)
    rec = recommend(depth, learning_curve("stages.1", FLAT), 300, KEY, STORE)
    assert (rec.action, rec.layer, rec.policy) == ("frozen", "stages.1", None)
    assert rec.command == f"transfer-pipe train {KEY} --layer stages.1 --store {STORE}"
    assert not rec.similar and not rec.large
    for quoted in ("stages.1", "0.810", "0.450", "300 training rows", "earlier layer", "distant"):
        assert quoted in rec.reason


def test_large_and_similar_fine_tunes_the_top() -> None:
    # Peak at stages.3, the second deepest point: similar. One point after it, so top-2.
    # Mutation: `peak.depth >= depth_count - 2` -> `- 1` (only the deepest counts) fails here.
    depth = depth_curve([0.50, 0.62, 0.75, 0.88, 0.86], RANDOM_ACC)
    rec = recommend(depth, learning_curve("stages.3", FLAT), 2000, KEY, STORE)
    assert (rec.action, rec.layer, rec.policy) == ("finetune", "stages.3", "top-2")
    assert rec.command == f"transfer-pipe finetune {KEY} --policy top-2 --store {STORE}"
    assert rec.similar and rec.large
    for quoted in ("stages.3", "0.880", "0.600", "2000 training rows", "large data"):
        assert quoted in rec.reason


def test_large_and_similar_at_the_deepest_point_fine_tunes_top_1() -> None:
    depth = depth_curve([0.50, 0.62, 0.75, 0.85, 0.874], RANDOM_ACC)
    rec = recommend(depth, [], 5000, KEY, STORE, finetune_gain=0.012)
    assert (rec.action, rec.policy) == ("finetune", "top-1")
    assert rec.curve_rise is None
    # Mutation: dropping finetune_gain (expected_gain=None) fails here.
    assert rec.expected_gain == 0.012 and "+0.012" in rec.reason


def test_large_and_distant_fine_tunes_one_stage_more() -> None:
    # Peak at stages.2 (depth 2 of 5): distant. N = 5 - 2 + 1 = 4 (all four stages).
    # Mutation: the distant `extra` of 1 -> 0 (top-3) fails here.
    depth = depth_curve([0.70, 0.78, 0.83, 0.80, 0.79], RANDOM_ACC)
    rec = recommend(depth, [], LARGE_ROWS_PER_CLASS, KEY, STORE)
    assert (rec.action, rec.layer, rec.policy) == ("finetune", "stages.2", "top-4")
    assert rec.command == f"transfer-pipe finetune {KEY} --policy top-4 --store {STORE}"
    assert not rec.similar and rec.large
    for quoted in ("stages.2", "0.830", "0.550", "1000 training rows", "distant"):
        assert quoted in rec.reason


def test_large_and_distant_policy_never_exceeds_the_stage_count() -> None:
    # Peak at stages.0: 5 - 0 + 1 = 6, but top-N trains at most the 4 stages (plus the neck).
    # Mutation: removing the cap (top-6, which finetune rejects) fails here.
    depth = depth_curve([0.80, 0.78, 0.74, 0.72, 0.70], RANDOM_ACC)
    rec = recommend(depth, [], 1500, KEY, STORE)
    assert (rec.layer, rec.policy) == ("stages.0", "top-4")
    assert parse_policy("top-4") == 4


def test_large_and_distant_with_weak_transfer_fine_tunes_everything() -> None:
    # Late peak, but pretrained beats random by only 0.03 (< 0.05): distant, and `full`.
    # Mutation: removing the `gain < SIMILAR_GAIN` -> full branch (top-1) fails here.
    depth = depth_curve([0.50, 0.55, 0.60, 0.62, 0.642], RANDOM_ACC)
    rec = recommend(depth, [], 1200, KEY, STORE)
    assert (rec.action, rec.layer, rec.policy) == ("finetune", "penultimate", "full")
    assert rec.command == f"transfer-pipe finetune {KEY} --policy full --store {STORE}"
    assert not rec.similar and rec.transfer_gain == pytest.approx(0.03)
    for quoted in ("penultimate", "0.642", "0.612", "only 0.030", "policy full"):
        assert quoted in rec.reason


def test_similarity_needs_a_transfer_gain_of_at_least_0_05() -> None:
    # Mutation: `gain >= SIMILAR_GAIN` -> `gain < SIMILAR_GAIN` fails here (both ways).
    weak = depth_curve([0.5, 0.5, 0.5, 0.5, 0.652], RANDOM_ACC)  # +0.04
    strong = depth_curve([0.5, 0.5, 0.5, 0.5, 0.672], RANDOM_ACC)  # +0.06
    assert not recommend(weak, [], 100, KEY, STORE).similar
    assert recommend(strong, [], 100, KEY, STORE).similar
    # Small & distant at the deepest point: frozen there, and not called "earlier".
    rec = recommend(weak, [], 100, KEY, STORE)
    assert (rec.action, rec.layer) == ("frozen", "penultimate") and "late layer" in rec.reason


def test_peak_is_chosen_on_validation_and_ties_go_deeper() -> None:
    # stages.1 has the best *test* accuracy, but stages.2 and stages.3 tie on validation.
    # Mutation: key on `s.accuracy` (stages.1) fails; tie-break `-s.depth` (stages.2) fails.
    depth = depth_curve(
        [0.60, 0.90, 0.70, 0.75, 0.65], RANDOM_ACC, val=[0.60, 0.70, 0.80, 0.80, 0.72]
    )
    assert peak_score(depth).layer == "stages.3"
    rec = recommend(depth, [], 100, KEY, STORE)
    assert (rec.peak_layer, rec.peak_depth) == ("stages.3", 3)


def test_large_data_starts_at_1000_rows_per_class() -> None:
    # Mutation: `rows_per_class >= LARGE_ROWS_PER_CLASS` -> `>` fails here.
    depth = depth_curve([0.50, 0.62, 0.75, 0.85, 0.874], RANDOM_ACC)
    assert recommend(depth, [], 1000, KEY, STORE).large
    below = recommend(depth, [], 999.5, KEY, STORE)
    assert not below.large and "999.5 training rows per class is small data" in below.reason


def test_a_still_rising_learning_curve_says_more_labels_help_but_is_not_large_data() -> None:
    # 300 rows per class is small; the pretrained curve gains 0.03 from 25 % to 100 %: more
    # labels would help, but a few hundred rows are not enough to fine-tune with.
    # Mutations seen to fail here: `large = ... or rising`; `rise > STILL_RISING` ->
    # `rise > 0.05` (the reason no longer says more labels would help).
    depth = depth_curve([0.50, 0.62, 0.75, 0.85, 0.874], RANDOM_ACC)
    rising = learning_curve("penultimate", {0.1: 0.70, 0.25: 0.80, 1.0: 0.83})
    rec = recommend(depth, rising, 300, KEY, STORE)
    assert not rec.large and rec.action == "frozen"
    assert rec.curve_rise == pytest.approx(0.03)
    for quoted in ("+0.030", "25%", "100%", "300 training rows", "more labels would still help"):
        assert quoted in rec.reason
    flat = learning_curve("penultimate", {0.1: 0.70, 0.25: 0.80, 1.0: 0.815})
    assert "more labels would still help" not in recommend(depth, flat, 300, KEY, STORE).reason


def test_only_the_pretrained_curve_at_the_peak_counts() -> None:
    # The random curve and another layer's curve rise steeply; the peak's pretrained one
    # does not. Mutation: not filtering `init == "pretrained"` in `_curve_rise` fails here
    # (duplicate fraction error); so does not filtering by the peak layer.
    depth = depth_curve([0.50, 0.62, 0.75, 0.85, 0.874], RANDOM_ACC)
    curve = [
        *learning_curve("penultimate", {0.25: 0.86, 1.0: 0.87}),
        *learning_curve("stages.3", {0.25: 0.60, 1.0: 0.85}),
        *learning_curve("penultimate", {0.25: 0.40, 1.0: 0.61}, init="random"),
    ]
    rec = recommend(depth, curve, 300, KEY, STORE)
    assert not rec.large and rec.curve_rise == pytest.approx(0.01)


def test_command_quotes_shell_specials() -> None:
    depth = depth_curve([0.50, 0.62, 0.75, 0.85, 0.874], RANDOM_ACC)
    rec = recommend(depth, [], 100, KEY, "/data/my store")
    assert rec.command.endswith("--store '/data/my store'")


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, math.nan])
def test_a_fraction_outside_0_1_is_refused(fraction: float) -> None:
    # Mutation: `0.0 < self.fraction <= 1.0` -> `0.0 <= self.fraction <= 1.5` fails here.
    with pytest.raises(TransferPipeError, match=r"outside \(0, 1\]"):
        learning_curve("penultimate", {fraction: 0.5})


def test_bad_depth_curves_are_refused_with_a_fix() -> None:
    good = depth_curve([0.50, 0.62, 0.75, 0.85, 0.874], RANDOM_ACC)
    with pytest.raises(TransferPipeError, match="depth curve is empty"):
        recommend([], [], 100, KEY, STORE)
    with pytest.raises(TransferPipeError, match="no pretrained scores"):
        recommend([s for s in good if s.init == "random"], [], 100, KEY, STORE)
    with pytest.raises(TransferPipeError, match="no random-weights score at the peak"):
        recommend([s for s in good if s.layer != "penultimate" or s.init == "pretrained"],
                  [], 100, KEY, STORE)  # fmt: skip
    with pytest.raises(TransferPipeError, match="twice"):
        recommend([*good, good[0]], [], 100, KEY, STORE)
    with pytest.raises(TransferPipeError, match=r"number them 0 \.\. 3"):
        recommend([s for s in good if s.layer != "stages.2"], [], 100, KEY, STORE)
    with pytest.raises(TransferPipeError, match="rows per class"):
        recommend(good, [], 0, KEY, STORE)
    with pytest.raises(TransferPipeError, match=r"accuracy lies in \[0, 1\]"):
        LayerScore(layer="x", depth=0, dim=1, init="pretrained", accuracy=87.4,
                   accuracy_ci95=(0.8, 0.9), val_accuracy=0.8, head_id="h")  # fmt: skip
    with pytest.raises(TransferPipeError, match="init 'imagenet'"):
        CurvePoint(init="imagenet", layer="x", fraction=0.5, seeds=1,  # type: ignore[arg-type]
                   accuracy_mean=0.5, accuracy_std=None, train_rows=3)  # fmt: skip
    several = [*learning_curve("stages.0", FLAT), *learning_curve("stages.1", FLAT)]
    with pytest.raises(TransferPipeError, match="not the peak layer 'penultimate'"):
        recommend(good, several, 100, KEY, STORE)


def test_records_round_trip_through_json() -> None:
    depth = depth_curve([0.50, 0.62, 0.75, 0.85, 0.874], RANDOM_ACC)
    curve = [
        *learning_curve("penultimate", FLAT),
        *learning_curve("penultimate", {1.0: 0.6}, "random"),
    ]
    curve.append(CurvePoint(init="random", layer="penultimate", fraction=0.5, seeds=1,
                            accuracy_mean=0.55, accuracy_std=None, train_rows=2700))  # fmt: skip
    rec = recommend(depth, curve, 540, KEY, STORE, finetune_gain=-0.02)
    # Mutation: LayerScore.from_dict keeping the JSON list for accuracy_ci95 fails here.
    for record, cls in (
        [(s, LayerScore) for s in depth]
        + [(p, CurvePoint) for p in curve]
        + [(rec, Recommendation)]
    ):
        back = cls.from_dict(json.loads(record.to_json()))
        assert back == record
    assert isinstance(LayerScore.from_dict(json.loads(depth[0].to_json())).accuracy_ci95, tuple)


def _screens(knn: Sequence[float], init: Init = "pretrained") -> list[LayerScreen]:
    return [
        LayerScreen(layer=layer, depth=depth, dim=16, init=init, knn=value, logme=-value,
                    knn_rows=100, seconds=0.1)
        for depth, (layer, value) in enumerate(zip(LAYERS, knn, strict=True))
    ]  # fmt: skip


def test_probes_on_some_layers_advise_with_every_layer_counted() -> None:
    """The sweep probes where its screens point; the rule still counts every depth point
    (the policy's N and "how far before the deepest" come from ``layers``)."""
    full = depth_curve([0.50, 0.62, 0.85, 0.80, 0.78], RANDOM_ACC)
    some = [s for s in full if s.layer in ("stages.2", "stages.3")]
    advice = recommend(some, [], 5400, KEY, STORE, layers=LAYERS)
    # Mutation: depth_count from the probes (2) instead of ``layers`` (5) fails here:
    # top-2 instead of top-4, and "similar" (the peak would be among the last two).
    assert advice == recommend(full, [], 5400, KEY, STORE)
    assert (advice.peak_layer, advice.policy, advice.depth_count) == ("stages.2", "top-4", 5)
    with pytest.raises(TransferPipeError, match="number them by their place there"):
        recommend(some, [], 5400, KEY, STORE, layers=LAYERS[1:])
    with pytest.raises(TransferPipeError, match=r"number them 0 \.\. 1"):
        recommend(some, [], 5400, KEY, STORE)  # without ``layers``: every point is needed


def test_screen_agreement_is_kendalls_tau_per_initialisation() -> None:
    depth = depth_curve([0.50, 0.62, 0.75, 0.85, 0.874], RANDOM_ACC)
    knn = [0.3, 0.5, 0.4, 0.9, 0.8]  # one swapped pair each side of the middle
    screens = [*_screens(knn), *_screens(RANDOM_ACC, "random")]
    found = {(a.screen, a.init): a for a in screen_agreement(screens, depth)}
    expected = kendalltau(knn, [0.50, 0.62, 0.75, 0.85, 0.874]).statistic
    # Mutation: tau of each screen against itself, not the probes, fails here (1.0 vs 0.6).
    assert found["knn", "pretrained"].tau == pytest.approx(expected) == pytest.approx(0.6)
    assert found["logme", "pretrained"].tau == pytest.approx(-expected)  # logme = -knn
    assert found["knn", "random"].tau == pytest.approx(1.0)
    assert found["knn", "pretrained"].layers == 5
    # Two probed layers rank one way only: no tau. Ties count half (tau-b, as scipy).
    two = [s for s in depth if s.layer in ("stages.0", "stages.1")]
    assert {a.tau for a in screen_agreement(screens, two)} == {None}
    tied = [0.3, 0.3, 0.4, 0.9, 0.8]
    (agreement,) = [a for a in screen_agreement(_screens(tied), depth) if a.screen == "knn"
                    and a.init == "pretrained"]  # fmt: skip
    assert agreement.tau == pytest.approx(
        kendalltau(tied, [s.accuracy for s in depth[:5]]).statistic
    )


def test_ranked_puts_the_best_screen_first_and_deeper_on_a_tie() -> None:
    screens = _screens([0.3, 0.8, 0.5, 0.8, 0.1])
    assert [s.layer for s in ranked(screens, "pretrained", "knn")][:3] == [
        "stages.3", "stages.1", "stages.2"
    ]  # fmt: skip
    assert ranked(screens, "pretrained", "logme")[0].layer == "penultimate"  # logme = -knn
    assert ranked(screens, "random", "knn") == []
    back = [LayerScreen.from_dict(json.loads(s.to_json())) for s in screens]
    assert back == screens
