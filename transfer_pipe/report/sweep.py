"""The transferability sweep as pictures and markdown: the depth curve, the learning curve
and the recommendation (records from :mod:`transfer_pipe.curves`).

Plots draw on a bare Agg figure, as in :mod:`transfer_pipe.report.plots` (matplotlib is
imported only when a plot is drawn, pyplot never).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from transfer_pipe.curves import (
    CurvePoint,
    Init,
    LayerScore,
    LayerScreen,
    Recommendation,
    ScreenAgreement,
)
from transfer_pipe.report.plots import _figure, _save
from transfer_pipe.report.tables import format_ci, markdown_table

_STYLE = {"pretrained": ("tab:blue", "o-"), "random": ("tab:orange", "s--")}
_INITS: tuple[Init, ...] = ("pretrained", "random")


def save_sweep_plots(
    folder: Path,
    depth: Sequence[LayerScore],
    curve: Sequence[CurvePoint],
    screens: Sequence[LayerScreen] = (),
    chosen: str | None = None,
) -> dict[str, Path]:
    """The depth curve and the learning curve as PNGs in ``folder``; returns
    ``{"depth": folder/"depth.png", "learning": folder/"learning.png"}``."""
    return {
        "depth": save_depth_curve(folder / "depth.png", depth, screens, chosen),
        "learning": save_label_curve(folder / "learning.png", curve),
    }


def save_depth_curve(
    path: str | Path,
    depth: Sequence[LayerScore],
    screens: Sequence[LayerScreen] = (),
    chosen: str | None = None,
) -> Path:
    """Test accuracy of the probes against depth, one colour per initialisation, with the
    95 % bootstrap interval (a band where every layer was probed, error bars where some
    were); the k-NN screen on every layer (thin dashed, the same accuracy axis) and LogME
    (dotted, its own axis on the right); the ``chosen`` layer marked. X ticks are the
    layer names, shallow to deep."""
    layers = _layer_order([*screens, *depth])
    fig = _figure(figsize=(max(6.5, 0.9 * len(layers) + 2.5), 4.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    evidence = ax.twinx() if screens else None
    for init in _INITS:
        color, style = _STYLE[init]
        mine = sorted((s for s in screens if s.init == init), key=lambda s: s.depth)
        if mine and evidence is not None:
            x = [layers.index(s.layer) for s in mine]
            ax.plot(
                x, [s.knn for s in mine], ".--", color=color, lw=1, label=f"{init}: k-NN screen"
            )
            evidence.plot(
                x, [s.logme for s in mine], ":", color=color, lw=1, label=f"{init}: LogME (right)"
            )
        scores = sorted((s for s in depth if s.init == init), key=lambda s: s.depth)
        if not scores:
            continue
        x = [layers.index(s.layer) for s in scores]
        accuracy = [s.accuracy for s in scores]
        low, high = zip(*(s.accuracy_ci95 for s in scores), strict=True)
        if len(scores) == len(layers):  # every layer probed: a line with its band
            ax.plot(x, accuracy, style, color=color, label=f"{init}: probe")
            ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
        else:
            errors = [np.subtract(accuracy, low), np.subtract(high, accuracy)]
            ax.errorbar(x, accuracy, yerr=errors, fmt=style[0], color=color, ms=8, capsize=4)
            ax.plot([], [], style[0], color=color, ms=8, label=f"{init}: probe")
    if chosen in layers:
        ax.axvline(
            layers.index(chosen), color="tab:green", lw=2, alpha=0.5, label=f"chosen: {chosen}"
        )
    ax.set_xticks(np.arange(len(layers)), layers, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_xlabel("layer (shallow to deep)")
    ax.set_ylabel("accuracy (probe: test; k-NN screen: validation)")
    ax.set_title("Depth curve: screens on every layer, the probe where it ran")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if evidence is not None:
        evidence.set_ylabel("LogME evidence per example")
        more_handles, more_labels = evidence.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        ax.legend(handles, labels, loc="lower right", fontsize="small")
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
    screens: Sequence[LayerScreen] = (),
    agreement: Sequence[ScreenAgreement] = (),
    screen: str | None = None,
) -> str:
    """The sweep as a markdown report: the recommendation (action, command, reason,
    expected gain when known) first, then the depth table (every layer's screens, the
    probes where they ran), how well each screen ranked the layers, the learning-curve
    table, ``![name](src)`` for each of ``images`` (``"depth"``/``"learning"`` to a path,
    URL or ``data:`` URI) and, given the sweep's ``seconds`` per phase, where the time
    went."""
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
        _depth_intro(screens, screen),
        "",
        markdown_table(
            ["layer", "dim"]
            + [f"{init} {what}" for init in _INITS for what in _COLUMNS[bool(screens)]],
            _depth_rows(depth, rec.peak_layer, screens),
        ),
        "",
    ]
    if agreement:
        lines += [
            "How well each screen ranked the layers against the probes that ran (Kendall's "
            "tau with their validation accuracy; none below 3 layers):",
            "",
            markdown_table(
                ["screen", "weights", "layers probed", "Kendall tau"],
                [
                    [a.screen, a.init, a.layers, "" if a.tau is None else f"{a.tau:+.2f}"]
                    for a in agreement
                ],
            ),
            "",
        ]
    lines += ["## Learning curve", ""]
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


_COLUMNS = {False: ("accuracy",), True: ("k-NN", "LogME", "probe")}


def _depth_intro(screens: Sequence[LayerScreen], screen: str | None) -> str:
    if not screens:
        return "Test accuracy of the linear probe on each layer (95 % bootstrap interval)."
    return (
        "Screens on every layer, from the cached features (k-NN: cosine k-NN accuracy on "
        "the validation rows; LogME: evidence per example, higher is better), and the "
        "linear probe's test accuracy (95 % bootstrap interval) where it ran"
        + (f", chosen by the {screen} screen." if screen else ".")
    )


def _depth_rows(
    depth: Sequence[LayerScore], peak_layer: str, screens: Sequence[LayerScreen] = ()
) -> list[list[object]]:
    """One row per layer, shallow to deep: layer (the peak marked), dim, then per
    initialisation its screens (when given) and its probe's accuracy (blank: not probed)."""
    probes = {(s.init, s.layer): s for s in depth}
    screened = {(s.init, s.layer): s for s in screens}
    rows: list[list[object]] = []
    for layer in _layer_order([*screens, *depth]):
        dims = [item.dim for item in screens if item.layer == layer]
        dims += [item.dim for item in depth if item.layer == layer]
        cells: list[object] = []
        for init in _INITS:
            if screens:
                found = screened.get((init, layer))
                cells += ["", ""] if found is None else [f"{found.knn:.4f}", f"{found.logme:.4f}"]
            score = probes.get((init, layer))
            cells.append(
                "" if score is None else f"{score.accuracy:.4f} [{format_ci(score.accuracy_ci95)}]"
            )
        name = f"**{layer}** (peak)" if layer == peak_layer else layer
        rows.append([name, dims[0], *cells])
    return rows


def _layer_order(depth: Sequence[LayerScore | LayerScreen]) -> list[str]:
    """Layer names shallow to deep (by depth, first seen on a tie)."""
    return list(dict.fromkeys(s.layer for s in sorted(depth, key=lambda s: s.depth)))


def _rows(point: CurvePoint) -> int:
    return point.train_rows


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
