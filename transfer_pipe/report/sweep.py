"""The transferability sweep as pictures and markdown: the depth curve, the learning curve
and the recommendation (records from :mod:`transfer_pipe.curves`).

Plots draw on a bare Agg figure, as in :mod:`transfer_pipe.report.plots` (matplotlib is
imported only when a plot is drawn, pyplot never).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from transfer_pipe.curves import CurvePoint, Init, LayerScore, Recommendation
from transfer_pipe.report.plots import _figure, _save
from transfer_pipe.report.tables import format_ci, markdown_table

_STYLE = {"pretrained": ("tab:blue", "o-"), "random": ("tab:orange", "s--")}
_INITS: tuple[Init, ...] = ("pretrained", "random")


def save_sweep_plots(
    folder: Path, depth: Sequence[LayerScore], curve: Sequence[CurvePoint]
) -> dict[str, Path]:
    """The depth curve and the learning curve as PNGs in ``folder``; returns
    ``{"depth": folder/"depth.png", "learning": folder/"learning.png"}``."""
    return {
        "depth": save_depth_curve(folder / "depth.png", depth),
        "learning": save_label_curve(folder / "learning.png", curve),
    }


def save_depth_curve(path: str | Path, depth: Sequence[LayerScore]) -> Path:
    """Test accuracy against depth, one line per initialisation, with its 95 % bootstrap
    interval as a band; x ticks are the layer names (shallow to deep)."""
    layers = _layer_order(depth)
    fig = _figure(figsize=(max(6.0, 0.9 * len(layers) + 2.0), 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for init in _INITS:
        scores = sorted((s for s in depth if s.init == init), key=lambda s: s.depth)
        if not scores:
            continue
        color, style = _STYLE[init]
        x = [layers.index(s.layer) for s in scores]
        ax.plot(x, [s.accuracy for s in scores], style, color=color, label=f"{init} weights")
        low, high = zip(*(s.accuracy_ci95 for s in scores), strict=True)
        ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
    ax.set_xticks(np.arange(len(layers)), layers, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_xlabel("layer (shallow to deep)")
    ax.set_ylabel("test accuracy (linear probe)")
    ax.set_title("Depth curve (bands: 95 % bootstrap interval)")
    ax.grid(alpha=0.3)
    if depth:
        ax.legend(loc="best")
    return _save(fig, path)


def save_label_curve(path: str | Path, curve: Sequence[CurvePoint]) -> Path:
    """Mean test accuracy (error bars: the standard deviation over seeds) against the
    number of training labels on a log axis, one line per initialisation and layer. Labels,
    not shares: the random-weights baseline may be embedded on fewer images than the
    pretrained run, and the same count of labels is what compares the two."""
    fig = _figure(figsize=(6.5, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    lines = sorted(
        {(p.init, p.layer) for p in curve}, key=lambda key: (_INITS.index(key[0]), key[1])
    )
    for init, layer in lines:
        points = sorted((p for p in curve if (p.init, p.layer) == (init, layer)), key=_rows)
        color, style = _STYLE[init]
        ax.errorbar(
            [max(p.train_rows, 1) for p in points],
            [p.accuracy_mean for p in points],
            yerr=[p.accuracy_std or 0.0 for p in points],
            fmt=style,
            color=color,
            capsize=3,
            label=f"{init} weights, {layer}",
        )
    ax.set_xscale("log")
    if curve:
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no learning curve measured", ha="center", transform=ax.transAxes)
    ax.set_xlabel("training labels (log scale)")
    ax.set_ylabel("test accuracy (mean \u00b1 std over seeds)")
    ax.set_title("Learning curve")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def sweep_markdown(
    depth: Sequence[LayerScore],
    curve: Sequence[CurvePoint],
    recommendation: Recommendation,
    images: Mapping[str, str],
    seconds: Mapping[str, float] | None = None,
) -> str:
    """The sweep as a markdown report: the recommendation (action, command, reason,
    expected gain when known) first, then the depth table, the learning-curve table,
    ``![name](src)`` for each of ``images`` (``"depth"``/``"learning"`` to a path, URL or
    ``data:`` URI) and, given the sweep's ``seconds`` per phase, where the time went."""
    rec = recommendation
    action = (
        f"frozen features at `{rec.layer}`"
        if rec.action == "frozen"
        else f"fine-tune (policy `{rec.policy}`)"
    )
    lines = [
        "# Transferability sweep",
        "",
        "## Recommendation",
        "",
        f"- Action: {action}",
        f"- Next command: `{rec.command}`",
        f"- Why: {rec.reason}",
    ]
    if rec.expected_gain is not None:
        lines.append(f"- Expected gain of fine-tuning over the probe: {rec.expected_gain:+.4f}")
    lines += [
        f"- Measured: peak {rec.peak_layer} (depth {rec.peak_depth} of {rec.depth_count}), "
        f"transfer gain {rec.transfer_gain:+.4f}, {rec.rows_per_class:.0f} training rows per "
        f"class; similar: {_yes(rec.similar)}, large: {_yes(rec.large)}",
        "",
        "## Depth curve",
        "",
        "Test accuracy of the linear probe on each layer (95 % bootstrap interval).",
        "",
        markdown_table(
            ["layer", "dim", "pretrained accuracy", "random accuracy"],
            _depth_rows(depth, rec.peak_layer),
        ),
        "",
        "## Learning curve",
        "",
    ]
    if curve:
        lines.append(
            markdown_table(
                ["weights", "layer", "labels", "train rows", "seeds", "accuracy"],
                [
                    [
                        p.init,
                        p.layer,
                        f"{p.fraction * 100:g}%",
                        p.train_rows,
                        p.seeds,
                        f"{p.accuracy_mean:.4f}"
                        + ("" if p.accuracy_std is None else f" \u00b1 {p.accuracy_std:.4f}"),
                    ]
                    for p in sorted(
                        curve, key=lambda p: (_INITS.index(p.init), p.layer, p.fraction)
                    )
                ],
            )
        )
    else:
        lines.append("Not measured.")
    if images:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({src})" for name, src in images.items()]
    phases = _phase_rows(seconds or {})
    if phases:
        lines += ["", "## Where the time went", "", markdown_table(["phase", "seconds"], phases)]
    return "\n".join(lines) + "\n"


def _phase_rows(seconds: Mapping[str, float]) -> list[list[object]]:
    """The sweep's phases (embed runs, each curve's probes per init, the report) with
    their wall seconds, in the order they ran; a single probe's entry (``depth <init>
    <layer>``) is left to the record."""
    phases = [name for name in seconds if name.count(" ") <= 1]
    total = sum(seconds[name] for name in phases)
    rows: list[list[object]] = [[name, f"{seconds[name]:.1f}"] for name in phases]
    return [*rows, ["total", f"{total:.1f}"]] if rows else []


def _depth_rows(depth: Sequence[LayerScore], peak_layer: str) -> list[list[object]]:
    """One row per layer, shallow to deep: layer (the peak marked), dim, both accuracies."""
    by_key = {(s.init, s.layer): s for s in depth}
    rows: list[list[object]] = []
    for layer in _layer_order(depth):
        first = by_key.get(("pretrained", layer)) or by_key[("random", layer)]
        cells = [
            "" if score is None else f"{score.accuracy:.4f} [{format_ci(score.accuracy_ci95)}]"
            for score in (by_key.get((init, layer)) for init in _INITS)
        ]
        name = f"**{layer}** (peak)" if layer == peak_layer else layer
        rows.append([name, first.dim, *cells])
    return rows


def _layer_order(depth: Sequence[LayerScore]) -> list[str]:
    """Layer names shallow to deep (by depth, first seen on a tie)."""
    return list(dict.fromkeys(s.layer for s in sorted(depth, key=lambda s: s.depth)))


def _rows(point: CurvePoint) -> int:
    return point.train_rows


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
