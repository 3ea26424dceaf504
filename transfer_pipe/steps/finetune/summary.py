"""A fine-tuning run's summary: test metrics beside the probe's (and the other init's run),
the verdict against the probe on validation, and the one line that says it.
"""

from __future__ import annotations

import logging

from transfer_pipe.finetune.card import FinetuneResult
from transfer_pipe.report import comparison_rows
from transfer_pipe.steps.finetune.plan import FinetunePlan
from transfer_pipe.steps.results import FinetuneSummary

logger = logging.getLogger(__name__)


def finalize_finetune(
    plan: FinetunePlan, result: FinetuneResult, embedded: int = 0
) -> FinetuneSummary:
    """The run's summary: test metrics next to the probe's (and the other init's run), the
    verdict against the probe on validation, and where the model lives."""
    metrics, probe = result.metrics, result.probe.metrics
    compared = result.compared
    message = summary_message(result)
    if result.below_probe:
        logger.warning("%s: %s", plan.run_id, result.verdict)
    return FinetuneSummary(
        run_id=plan.run_id,
        feature_set=plan.feature_set,
        store=plan.config.store,
        task=result.task,
        classes=list(plan.classes),
        splits=plan.probe_plan.data.split_sizes(),
        policy=result.policy,
        lp_ft=result.lp_ft,
        epochs=result.epochs,
        best_epoch=result.best_epoch,
        stopped=result.stopped,
        image_size=result.image_size,
        device=result.device,
        accuracy=metrics.accuracy,
        macro_f1=metrics.macro_f1,
        balanced_accuracy=metrics.balanced_accuracy,
        accuracy_ci95=list(metrics.accuracy_ci95),
        probe_head_id=result.probe.head_id,
        probe_accuracy=probe.accuracy,
        probe_macro_f1=probe.macro_f1,
        gain=metrics.accuracy - probe.accuracy,
        skipped_images=len(result.skipped_images),
        train_seconds=result.seconds["train"],
        checkpoint=result.checkpoint,
        url=result.url,
        reused=result.reused,
        embedded=embedded,
        table=comparison_rows(result),
        init=result.init,
        val_accuracy=result.val_accuracy,
        probe_val_accuracy=result.probe.val_accuracy,
        below_probe=result.below_probe,
        recommended_head_id=result.probe.head_id if result.below_probe else None,
        compared_run_id=compared.run_id if compared else None,
        compared_accuracy=compared.metrics.accuracy if compared else None,
        message=message,
    )


def summary_message(result: FinetuneResult) -> str:
    """One line: what was trained, test accuracy beside the probe's (and the other init's
    run), and, when it ends below the probe on validation, that plainly."""
    what = "trained from scratch" if result.init == "random" else "fine-tuned"
    lp_ft = ", LP-FT" if result.lp_ft else ""
    message = (
        f"{what} {result.run_id} ({result.policy}{lp_ft}): test accuracy "
        f"{result.metrics.accuracy:.4f} vs probe {result.probe.metrics.accuracy:.4f}"
    )
    if result.compared is not None:
        message += (
            f" and {result.compared.head} {result.compared.metrics.accuracy:.4f} "
            f"({result.compared.run_id})"
        )
    if result.verdict:
        message += f"; {result.verdict}"
    return message
