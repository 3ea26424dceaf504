"""The sweep's pictures (real PNGs that follow their input) and its markdown report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.curves import FLAT, KEY, LAYERS, RANDOM_ACC, depth_curve, learning_curve
from tests.support.report import assert_png
from transfer_pipe.curves import Init, LayerScreen, recommend, screen_agreement
from transfer_pipe.report import png_data_uri, save_sweep_plots, sweep_markdown
from transfer_pipe.report.sweep import save_depth_curve

PRETRAINED = [0.50, 0.62, 0.75, 0.85, 0.874]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def blue_slope(path: Path) -> float:
    """Mean row of the tab:blue (pretrained) pixels in the left third minus that in the right
    third: positive when the line rises left to right (image rows grow downwards)."""
    rgb = pixels(path).astype(int)
    rows, cols = np.nonzero(np.abs(rgb - np.array([31, 119, 180])).sum(axis=2) < 30)
    third = rgb.shape[1] / 3
    return float(rows[cols < third].mean() - rows[cols > 2 * third].mean())


def test_save_sweep_plots_writes_two_pngs_that_follow_the_curves(tmp_path: Path) -> None:
    depth = depth_curve(PRETRAINED, RANDOM_ACC)
    curve = [
        *learning_curve("penultimate", FLAT),
        *learning_curve("penultimate", {0.01: 0.30, 0.25: 0.50, 1.0: 0.61}, init="random"),
    ]
    paths = save_sweep_plots(tmp_path / "sweep", depth, curve)
    assert paths == {
        "depth": tmp_path / "sweep" / "depth.png",
        "learning": tmp_path / "sweep" / "learning.png",
    }
    for path in paths.values():
        assert_png(path)
    # The pretrained line rises left to right: its pixels sit lower (larger row) on the left.
    # Mutation: plotting a constant instead of `s.accuracy` in the depth plot fails here.
    assert blue_slope(paths["depth"]) > 0
    # Mutation: drawing the learning plot without its points (empty errorbar) fails here.
    assert blue_slope(paths["learning"]) > 0
    other = save_sweep_plots(
        tmp_path / "other",
        depth_curve([0.80, 0.70, 0.60, 0.50, 0.40], RANDOM_ACC),
        learning_curve("penultimate", {0.05: 0.2, 1.0: 0.9}),
    )
    for name in ("depth", "learning"):
        first, second = pixels(paths[name]), pixels(other[name])
        assert first.shape != second.shape or not np.array_equal(first, second)
    assert blue_slope(other["depth"]) < 0  # a falling curve
    # Both initialisations are drawn: the depth plot has the random line's orange.
    # Mutation: skipping the random init in the depth loop fails here.
    rgb = pixels(paths["depth"]).reshape(-1, 3).astype(int)
    orange = np.array([255, 127, 14])  # matplotlib's tab:orange
    assert (np.abs(rgb - orange).sum(axis=1) < 30).sum() > 50


def test_save_sweep_plots_draws_an_empty_learning_curve(tmp_path: Path) -> None:
    paths = save_sweep_plots(tmp_path, depth_curve(PRETRAINED, RANDOM_ACC), [])
    assert_png(paths["learning"])


def test_sweep_markdown_leads_with_the_recommendation(tmp_path: Path) -> None:
    depth = depth_curve(PRETRAINED, RANDOM_ACC)
    curve = learning_curve("penultimate", FLAT)
    rec = recommend(depth, curve, 540, KEY, "/data/store", finetune_gain=0.0123)
    paths = save_sweep_plots(tmp_path, depth, curve)
    uri = png_data_uri(paths["depth"].read_bytes())
    text = sweep_markdown(depth, curve, rec, {"depth": uri, "learning": "learning.png"})
    lines = text.splitlines()
    # The recommendation comes before the tables.
    assert text.index(rec.command) < text.index("## Depth curve") < text.index("## Learning curve")
    assert f"`{rec.command}`" in text and rec.reason in text
    assert "+0.0123" in text  # the expected gain
    # Mutation: swapping the pretrained and random cells of a row fails here.
    for score, random in zip(depth[:5], depth[5:], strict=True):
        layer = f"**{score.layer}** (peak)" if score.layer == "penultimate" else score.layer
        row = (
            f"| {layer} | {score.dim} | {score.accuracy:.4f} [{score.accuracy_ci95[0]:.3f}"
            f"\u2013{score.accuracy_ci95[1]:.3f}] | {random.accuracy:.4f} "
        )
        assert any(line.startswith(row) for line in lines), row
    assert [line.split(" | ")[0] for line in lines if line.startswith("| stages.")] == [
        f"| {layer}" for layer in LAYERS[:4]
    ]  # shallow to deep
    for point in curve:
        assert (
            f"| pretrained | penultimate | {point.fraction * 100:g}% | {point.train_rows} |" in text
        )
    assert "0.8700 \u00b1 0.0100" in text
    assert f"![depth]({uri})" in text and "![learning](learning.png)" in text


def test_sweep_markdown_without_gain_curve_or_images() -> None:
    depth = depth_curve(PRETRAINED, RANDOM_ACC)
    rec = recommend(depth, [], 5000, KEY, "/data/store")
    text = sweep_markdown(depth, [], rec, {})
    assert "fine-tune (policy `top-1`)" in text and "Expected gain" not in text
    assert "Not measured." in text and "![" not in text


def test_sweep_markdown_says_where_the_time_went() -> None:
    depth = depth_curve(PRETRAINED, RANDOM_ACC)
    rec = recommend(depth, [], 5000, KEY, "/data/store")
    seconds = {"embed pretrained": 80.0, "depth pretrained": 30.5, "depth pretrained stages.0": 2.0}
    text = sweep_markdown(depth, [], rec, {}, seconds)
    assert text.index("## Where the time went") > text.index("## Learning curve")
    # Mutation seen failing here: _phase_rows keeping single probes (stages.0 listed, and
    # counted into the total).
    assert "| embed pretrained | 80.0 |" in text and "| total | 110.5 |" in text
    assert "stages.0 |" not in text.split("## Where the time went")[1]
    assert "Where the time went" not in sweep_markdown(depth, [], rec, {})


def _screens(knn: list[float], init: Init) -> list[LayerScreen]:
    return [
        LayerScreen(layer=layer, depth=depth, dim=16 * 2**depth, init=init, knn=value,
                    logme=value - 1, knn_rows=100, seconds=0.1)
        for depth, (layer, value) in enumerate(zip(LAYERS, knn, strict=True))
    ]  # fmt: skip


def test_a_sweep_that_probed_some_layers_shows_screens_on_every_layer(tmp_path: Path) -> None:
    """The default sweep: screens on every layer, probes on a few, the chosen layer marked."""
    full = depth_curve(PRETRAINED, RANDOM_ACC)
    depth = [s for s in full if (s.init, s.layer) in {("pretrained", "stages.3"),
             ("pretrained", "penultimate"), ("random", "penultimate")}]  # fmt: skip
    screens = [*_screens([0.4, 0.5, 0.6, 0.83, 0.81], "pretrained"),
               *_screens([0.3, 0.35, 0.4, 0.5, 0.55], "random")]  # fmt: skip
    rec = recommend(depth, [], 540, KEY, "/data/store", layers=LAYERS)
    agreement = screen_agreement(screens, depth)
    text = sweep_markdown(depth, [], rec, {}, None, screens, agreement, "knn")
    rows = [line for line in text.splitlines() if line.startswith(("| stages.", "| **"))]
    # Every layer has a row with both screens of both initialisations; the probe's cell is
    # blank where it did not run. Mutation: rows from the probes alone (3 layers) fails here.
    assert len(rows) == len(LAYERS)
    assert rows[0].startswith("| stages.0 | 16 | 0.4000 | -0.6000 |  | 0.3000 | -0.7000 |  |")
    assert "| stages.3 | 128 | 0.8300 | -0.1700 | 0.8500 [" in rows[3]
    assert "chosen by the knn screen" in text
    assert "| knn | pretrained | 2 |  |" in text  # two probes: no tau
    # The plot: a LogME axis on the right, the chosen layer's green line.
    # Mutation: dropping the axvline of the chosen layer fails here.
    path = save_depth_curve(tmp_path / "depth.png", depth, screens, rec.layer)
    green = np.array([44, 160, 44])  # tab:green, drawn at alpha 0.5 over white
    rgb = pixels(path).reshape(-1, 3).astype(int)
    assert (np.abs(rgb - (green + 255) // 2).sum(axis=1) < 40).sum() > 200
    bare = pixels(save_depth_curve(tmp_path / "bare.png", depth, screens))
    assert bare.shape == pixels(path).shape and not np.array_equal(bare, pixels(path))
