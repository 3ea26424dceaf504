"""Cost before work: what an embed or fine-tuning run would take, without doing it.

    estimate = estimate_embed(config)          # rows, layers, bytes per dtype, seconds
    print(embed_estimate_message(estimate))
    tuned = estimate_finetune(finetune_config)  # rows per split, seconds per epoch

Nothing is written: no store folder is created, no feature set started, no Prefect
imported. The numbers come from what the store has recorded where it can, else from a
short calibration on the run's own first images:

- **time** (``throughput``): images/s from the shard seconds of earlier complete feature
  sets of the same backbone and preprocessing (and device, where the store recorded one);
  else a few timed batches of the real model on the real first images (decode and forward
  pass, as a shard does them).
- **bytes** (``storage``): the store's own code writes, in memory, the feature set's row
  columns and metadata (exact), and, per layer and dtype, one shard chunk holding sample
  features (rows an earlier run wrote with the same weights and preprocessing, else the
  calibration's): compressed bytes per row are measured on what the store really
  writes, zstd and padding included, not guessed from the width.

``embed``, ``finetune`` and ``sweep`` put them together; ``messages`` prints them.
"""

from transfer_pipe.steps.estimate.embed import estimate_embed
from transfer_pipe.steps.estimate.finetune import estimate_finetune
from transfer_pipe.steps.estimate.messages import embed_estimate_message, finetune_estimate_message
from transfer_pipe.steps.estimate.records import (
    EmbedEstimate,
    FinetuneEstimate,
    LayerEstimate,
    SweepEstimate,
)
from transfer_pipe.steps.estimate.sweep import estimate_sweep

__all__ = [
    "EmbedEstimate",
    "FinetuneEstimate",
    "LayerEstimate",
    "SweepEstimate",
    "embed_estimate_message",
    "estimate_embed",
    "estimate_finetune",
    "estimate_sweep",
    "finetune_estimate_message",
]
