"""The fine-tuning pipeline: continue backprop into the backbone for a task, judged
against the linear probe on the same rows, task and split.

    plan = prepare_finetune(config, feature_set)  # task rows, splits, backbone, run id
    probe = ensure_probe(plan)                   # the heads flow's logreg (fitted if missing)
    result = run_finetune(plan, probe)           # train (resuming a killed run), test, save
    summary = finalize_finetune(plan, result)
    publish(plan)                                 # optional: new weights -> new feature set

The rows and splits come from the feature set exactly as the heads flow reads them (images
that failed to decode there are not in it), and each image is decoded again from its URI
by the same decoder.

LP-FT is the default: fine-tuning starts from the probe's head, so it starts where the
probe ends. A run that still ends below the probe on validation says so, recommends the
probe, and is not published without ``force``. ``init="random"`` trains the same
architecture from seeded random weights (``random/<backbone>``), whole and without LP-FT:
the from-scratch baseline, shown beside pretrained fine-tuning on the same feature set,
task and split (when the store holds that run) and the probe on the pretrained features.

One module per phase: ``plan`` (rows, splits, weights, run id), ``probe`` (the probe and
the model built from it), ``run`` (train here or on the cluster, test, save), ``summary``
and ``publishing``.
"""

from __future__ import annotations

from collections.abc import Sequence

from transfer_pipe.config import FinetuneConfig
from transfer_pipe.steps.embed import embed
from transfer_pipe.steps.finetune.plan import FinetunePlan, prepare_finetune
from transfer_pipe.steps.finetune.probe import build_model, ensure_probe
from transfer_pipe.steps.finetune.publishing import check_publishable, publish, publish_config
from transfer_pipe.steps.finetune.run import compared_run, run_finetune
from transfer_pipe.steps.finetune.summary import finalize_finetune
from transfer_pipe.steps.results import FinetuneSummary
from transfer_pipe.steps.target import embed_first


def finetune(config: FinetuneConfig) -> FinetuneSummary:
    """The whole fine-tuning pipeline without an orchestrator (notebooks, tests)."""
    feature_set, embedded = embed_first(config, embed)
    plan = prepare_finetune(config, feature_set)
    probe = ensure_probe(plan)
    result = run_finetune(plan, probe)
    summary = finalize_finetune(plan, result, embedded)
    if config.publish:
        summary = summary.published(publish(plan).feature_set)
    return summary


__all__: Sequence[str] = (
    "FinetunePlan",
    "build_model",
    "check_publishable",
    "compared_run",
    "ensure_probe",
    "finalize_finetune",
    "finetune",
    "prepare_finetune",
    "publish",
    "publish_config",
    "run_finetune",
)
