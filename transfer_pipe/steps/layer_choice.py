"""Which layer a heads run reads when none is given (``--layer auto``, the default).

1. **A sweep's advice.** The newest sweep in the store whose pretrained features came
   from the same source through the same embedding (backbone, weights, preprocessing,
   dtype) for the same task recommends its peak layer; it is taken when this feature set
   holds it.
2. **Validation.** Otherwise, when the feature set holds several layers (an embed run taps
   ``TOP`` by default: the penultimate layer and the last three stages, one forward
   pass), each of them and all of them side by side are candidates. The logistic probe's
   C walk (``QUICK_C_VALUES``, one per decade) on at most ``QUICK_ROWS`` training rows
   scores each on the validation rows (cross-validated when they are few, as the protocol
   does); the best wins, the one with fewer features on a tie. The test rows are never
   read.
3. **The only layer** of a feature set that holds one.

The choice, how it was made and the scores behind it go into the run's summary, every
head's card and the report. A validation choice is kept in the store's cache, so a rerun
whose heads the store holds decides again without reading a feature.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Sequence
from dataclasses import replace

from transfer_pipe.config import AUTO_LAYER, TrainConfig
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.heads.options import ProtocolOptions
from transfer_pipe.heads.tasks import SplitOptions, Task, TaskData, load_task
from transfer_pipe.store import FeatureSetSpec, StorageOptions, open_store
from transfer_pipe.store.cards import LayerChoice, cached_record, store_fs

logger = logging.getLogger(__name__)

SWEEPS_DIR = "sweeps"  # <store>/sweeps/<sweep id>/ (steps.sweep writes them)
SWEEP_RECORD = "sweep.json"
CHOICES_DIR = "layer-choices"  # <store>/cache/layer-choices/<choice id>.json
# Training rows a candidate's C walk fits on (a fixed draw beyond): not fewer, because
# wide candidates need rows to show their worth. On 10,000 of Fashion-MNIST's 54,000 the
# four layers side by side scored below stages.4 (0.886 against 0.887 on validation); on
# all of them they lead (0.904 against 0.888 on test, docs/pages/benchmarks/layer-choice.md).
QUICK_ROWS = 60_000
QUICK_C_VALUES = 12  # a candidate's C grid: one value per decade of the run's C range
QUICK_HEAD = "logreg"


def choose_layer(
    config: TrainConfig,
    feature_set: str,
    spec: FeatureSetSpec,
    task: Task,
    splits: SplitOptions,
    options: ProtocolOptions,
) -> LayerChoice:
    """The layer ``config`` asks for, or for ``auto`` the one chosen as the module says
    (``options``: the run's protocol, whose C walk scores the candidates)."""
    if config.layer and config.layer != AUTO_LAYER:
        return LayerChoice(layer=config.layer, how="given", reason="given with --layer")
    advice = sweep_advice(config.store, spec, task, config.storage_options)
    if advice is not None and advice.layer in spec.layers:
        return advice
    if len(spec.layers) == 1:
        (only,) = spec.layers
        why = f"the feature set's only layer{_sweep_note(advice)}"
        return LayerChoice(layer=only, how="only layer", reason=why)
    quick = replace(options, c_values=min(options.c_values, QUICK_C_VALUES))
    return _validated(config, feature_set, spec, task, splits, quick, advice)


def candidates(layers: Sequence[str]) -> list[str]:
    """Each layer alone, then all of them side by side (``a+b``)."""
    return [*layers, "+".join(layers)] if len(layers) > 1 else list(layers)


def sweep_advice(
    store: str, spec: FeatureSetSpec, task: Task, storage_options: StorageOptions = None
) -> LayerChoice | None:
    """The newest matching sweep's recommended layer (see the module docstring), or None."""
    fs, folder = store_fs(posixpath.join(store.rstrip("/"), SWEEPS_DIR), storage_options)
    if not fs.exists(folder):
        return None
    found = []
    for path in fs.glob(posixpath.join(folder, "*", SWEEP_RECORD)):
        with fs.open(path, "r") as f:
            record = json.load(f)
        if record.get("task") == task.name:
            found.append(record)
    features = open_store(store, storage_options)
    for record in sorted(found, key=lambda r: str(r.get("created", "")), reverse=True):
        key = record.get("feature_sets", {}).get("pretrained")
        try:
            swept = features.spec(key)
        except (KeyError, TransferPipeError):  # collected since: its advice still stands
            continue
        if (swept.source, swept.embedding_key) != (spec.source, spec.embedding_key):
            continue
        layer = record["recommendation"]["layer"]
        probes = [s for s in record.get("depth", []) if s["init"] == "pretrained"]
        probe = next((s for s in probes if s["layer"] == layer), None)
        score = f" (its probe's validation accuracy {probe['val_accuracy']:.4f})" if probe else ""
        return LayerChoice(
            layer=layer,
            how="sweep",
            reason=f"sweep {record['sweep_id']} of {record['created']}{score} recommends {layer}",
        )
    return None


def _sweep_note(advice: LayerChoice | None) -> str:
    if advice is None:
        return ""
    return (
        f"; {advice.reason}, which this feature set lacks (pass --layer {advice.layer} to "
        "embed and read it)"
    )


def _validated(
    config: TrainConfig,
    feature_set: str,
    spec: FeatureSetSpec,
    task: Task,
    splits: SplitOptions,
    options: ProtocolOptions,
    advice: LayerChoice | None,
) -> LayerChoice:
    """The best candidate on validation, from the cache when this very choice was made
    (``advice``: a sweep's layer the feature set lacks, noted in the reason)."""
    weighed = candidates(spec.layers)
    identity = [
        feature_set, task.digest, splits.__dict__, weighed, options.__dict__, QUICK_ROWS,
        None if advice is None else advice.reason,
    ]  # fmt: skip

    def weigh() -> LayerChoice:
        store = open_store(config.store, config.storage_options)
        scores = {}
        for layer in weighed:
            data = load_task(store, feature_set, task, layer, splits)
            scores[layer] = _quick_probe(data, options)
            logger.info("layer %s: validation accuracy %.4f (probe on at most %d rows)",
                        layer, scores[layer], QUICK_ROWS)  # fmt: skip
        dims = {layer: sum(spec.layer_dims[n] for n in layer.split("+")) for layer in weighed}
        best = max(weighed, key=lambda layer: (scores[layer], -dims[layer]))
        listed = ", ".join(f"{layer} {score:.4f}" for layer, score in scores.items())
        return LayerChoice(
            layer=best,
            how="validation",
            reason=f"best validation accuracy of the probe among {len(weighed)} candidates "
            f"({listed}; fitted on at most {QUICK_ROWS} training rows){_sweep_note(advice)}",
            candidates=scores,
        )

    return cached_record(
        config.store, CHOICES_DIR, identity, weigh, LayerChoice.from_dict, config.storage_options
    )


def _quick_probe(data: TaskData, options: ProtocolOptions) -> float:
    """The probe's validation accuracy at its chosen C, fitted on a fixed draw of at most
    ``QUICK_ROWS`` training rows."""
    from transfer_pipe.heads.protocol import validation_accuracy  # torch, scikit-learn

    return validation_accuracy(
        QUICK_HEAD, replace(data, train=data.train.sample(QUICK_ROWS)), options
    )
