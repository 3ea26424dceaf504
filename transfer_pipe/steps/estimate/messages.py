"""Estimates as a few lines for the terminal."""

from __future__ import annotations

from transfer_pipe.schema import TEST, TRAIN, VAL
from transfer_pipe.steps.estimate.records import DTYPES, EmbedEstimate, FinetuneEstimate


def _size(nbytes: float) -> str:
    """``nbytes`` in B, kB, MB or GB."""
    for unit in ("B", "kB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    """``seconds`` in s, min or h."""
    if seconds < 0.1:
        return "under 0.1 s"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def embed_estimate_message(estimate: EmbedEstimate) -> str:
    """The estimate as a few lines for the terminal: what would be embedded or copied,
    one line per layer, the store's bytes per dtype and the expected time."""
    e = estimate
    lines = [
        f"dry run, nothing embedded or written: feature set {e.feature_set} ({e.status} in "
        f"{e.store}), {e.rows} rows of {e.source} through {e.backbone} at {e.image_size} px "
        f"on {e.device}",
        f"  images to embed: {e.to_embed}; rows to copy from other feature sets: {e.to_copy}; "
        f"rows already written: {e.already_written}",
    ]
    dtypes = [d for d in DTYPES if d in e.bytes_by_dtype]
    if any(layer.bytes_per_row for layer in e.layers):
        name_width = max(len("layer"), *(len(layer.layer) for layer in e.layers))
        header = (
            "  "
            + "layer".ljust(name_width)
            + "  width"
            + "".join(f"  {d + ' B/row':>15}" for d in dtypes)
        )
        lines.append(header)
        for layer in e.layers:
            cells = "".join(f"  {layer.bytes_per_row[d]:>15.1f}" for d in dtypes)
            lines.append(f"  {layer.layer.ljust(name_width)}  {layer.width:>5}{cells}")
    else:
        lines.append(
            "  layers: " + ", ".join(f"{layer.layer} ({layer.width})" for layer in e.layers)
        )
    sizes = ", ".join(
        f"{_size(e.bytes_by_dtype[d])} as {d}" + (" (this run)" if d == e.dtype else "")
        for d in dtypes
    )
    lines.append(f"  store: {sizes}; {e.bytes_from}")
    if e.seconds is None:
        lines.append(f"  time: cannot be estimated ({e.seconds_from})")
    elif e.to_embed:
        lines.append(
            f"  time: {_duration(e.seconds)} of embedding at {e.images_per_s:.1f} "
            f"images/s ({e.seconds_from}), plus start-up (Prefect, Dask, model load)"
        )
    else:
        lines.append(f"  time: no forward pass ({e.seconds_from})")
    return "\n".join(lines)


def finetune_estimate_message(estimate: FinetuneEstimate) -> str:
    """The fine-tuning estimate for the terminal: the embed run first (if any), rows per
    split and the expected time per epoch."""
    e = estimate
    lines = [embed_estimate_message(e.embed)] if e.embed is not None else []
    splits = "/".join(str(e.splits.sizes[s]) for s in (TRAIN, VAL, TEST))
    lines.append(
        f"dry run, nothing trained: fine-tune {e.backbone} ({e.policy}) on feature set "
        f"{e.feature_set} for task {e.task} at {e.image_size} px on {e.device}; "
        f"train/val/test {splits} ({e.splits.origin})"
    )
    if e.seconds_per_epoch is None:
        lines.append(f"  time: cannot be estimated ({e.seconds_from})")
    else:
        total = (
            "" if e.seconds is None else f"; {_duration(e.seconds)} in all for {e.epochs} epochs"
        )
        lines.append(
            f"  time: {_duration(e.seconds_per_epoch)} per epoch ({e.seconds_from}){total}"
            " (early stopping may end it sooner)"
        )
    return "\n".join(lines)
