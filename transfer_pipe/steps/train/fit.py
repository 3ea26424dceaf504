"""Fit one head by the protocol, once however many runs ask, here or on the Dask cluster,
and save it with its card, report and plots; and a saved head's report for the UI.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transfer_pipe.heads.card import HeadCard, HeadResult, head_url, read_card
from transfer_pipe.heads.options import ProtocolOptions
from transfer_pipe.heads.tasks import TaskData
from transfer_pipe.report import markdown_report, png_data_uri, save_result_plots
from transfer_pipe.steps.embed import library_versions
from transfer_pipe.steps.failures import StepFailed
from transfer_pipe.steps.jobs import claimed_job, here_or_on_cluster
from transfer_pipe.steps.layer_choice import LayerChoice
from transfer_pipe.steps.train.plan import HeadRun, TrainPlan, head_id
from transfer_pipe.store import StorageOptions
from transfer_pipe.store.cards import CARD, TaskRef, store_fs

if TYPE_CHECKING:
    from transfer_pipe.heads.protocol import FittedHead

logger = logging.getLogger(__name__)
_LIBRARIES = ("transfer-pipe", "torch", "scikit-learn", "numpy", "skops", "safetensors")


def train_head(plan: TrainPlan, run: HeadRun, *, plots: bool = True) -> HeadResult:
    """Fit one head by the protocol, save it with its card, report files and plots; returns
    its result (ids, chosen hyperparameters, metrics, seconds, where it lives). A head the
    store already holds under the same id (same features, task, split and options) is
    reused, unless the config asks to refit. ``plots=False`` saves it without the
    confusion and per-class pictures (a second or more each on a CPU: the sweep fits dozens
    of probes and draws its own curves)."""
    identity = head_id(plan, run)
    config = plan.config
    key = f"head-{identity}"

    def saved() -> HeadCard | None:
        return None if config.refit else read_card(config.store, identity, config.storage_options)

    def reuse(card: HeadCard) -> HeadResult:
        logger.info("head %s: reused (the store holds it for these features and options)", identity)
        return card.reused(head_url(config.store, identity))

    def failed(exc: Exception) -> StepFailed:
        return StepFailed(
            f"head {run.head} ({identity}) on feature set {plan.feature_set} failed: "
            f"{type(exc).__name__}: {exc}. Heads already saved are kept; run again to "
            "fit the rest."
        )

    return claimed_job(
        config,
        key,
        busy=f"head {identity} is being fitted",
        saved=saved,
        reuse=reuse,
        run=lambda: here_or_on_cluster(config, key, _fit_and_save, plan, run, identity, plots),
        failed=failed,
    )


def _fit_and_save(plan: TrainPlan, run: HeadRun, identity: str, plots: bool = True) -> HeadResult:
    """Fit head ``run`` by the protocol and save it, its card, report and (``plots``) plots."""
    from transfer_pipe.heads.persist import save_head
    from transfer_pipe.heads.protocol import fit_head

    data = plan.data
    if run.shot_seed is not None and plan.config.shots is not None:
        data = data.few_shot(plan.config.shots, run.shot_seed)
    if run.shot_seed is not None and plan.config.label_fraction is not None:
        data = data.label_subset(plan.config.label_fraction, run.shot_seed)
    fitted = fit_head(run.head, data, ProtocolOptions.from_config(plan.config))
    result = HeadResult(
        head_id=identity,
        head=run.head,
        task=data.task.name,
        layer=data.layer,
        shots=data.shots,
        shot_seed=data.shot_seed,
        chosen=fitted.chosen,
        metrics=fitted.metrics,
        seconds=fitted.seconds,
        label_fraction=data.label_fraction,
        selection=fitted.selection,
        layer_choice=_chosen_layer(plan),
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = _report_files(Path(tmp), result, plots)
        card = _card(plan, data, fitted, result)
        config = plan.config
        url = save_head(
            config.store,
            card,
            fitted.model,
            files.values(),
            config.storage_options,
            fit_ids=None if fitted.fit_ids is None else fitted.fit_ids.tolist(),
        )
    logger.info(
        "head %s: fitted, test accuracy %.4f, macro F1 %.4f; saved to %s",
        identity,
        fitted.metrics.accuracy,
        fitted.metrics.macro_f1,
        url,
    )
    return replace(result, url=url)


def head_report(store: str, result: HeadResult, storage_options: StorageOptions = None) -> str:
    """A saved head's markdown report for a viewer that has no access to the store (the
    Prefect UI): its plots inline as ``data:`` URIs, and where its folder, model file and
    card live (the store read with the run's ``storage_options``)."""
    url = result.url or head_url(store, result.head_id)
    card = read_card(store, result.head_id, storage_options)
    files = {"head folder": url, "card": posixpath.join(url, CARD)}
    if card is not None and card.model_file:
        files["model"] = posixpath.join(url, card.model_file)
    fs, folder = store_fs(url, storage_options)
    images = {}
    for name in _PLOTS:
        path = posixpath.join(folder, f"{name}.png")
        if fs.exists(path):
            images[name] = png_data_uri(fs.cat_file(path))
    return markdown_report(result, images, files, **_why(result))


def _why(result: HeadResult) -> dict[str, str | None]:
    """How the result's hyperparameters and layer were chosen, for its report (None:
    unrecorded, or the layer given)."""
    return {
        "chosen_by": None if result.selection is None else result.selection.describe(),
        "layer_why": None if result.layer_choice is None else result.layer_choice.describe(),
    }


def _chosen_layer(plan: TrainPlan) -> LayerChoice | None:
    """The plan's layer choice, unless the layer was given (nothing to explain)."""
    choice = plan.layer_choice
    return None if choice is None or choice.how == "given" else choice


_PLOTS = ("confusion", "per_class")  # the PNGs ``save_result_plots`` writes


def _report_files(folder: Path, result: HeadResult, plots: bool = True) -> dict[str, Path]:
    files = save_result_plots(folder, result) if plots else {}
    report = folder / "report.md"
    images = {k: p.name for k, p in files.items()}
    report.write_text(markdown_report(result, images, None, **_why(result)))
    return {**files, "report": report}


def _card(plan: TrainPlan, data: TaskData, fitted: FittedHead, result: HeadResult) -> HeadCard:
    """The model card: everything needed to trust, reproduce and reuse the head."""
    spec = plan.feature_set_spec
    estimator = fitted.model.named_steps["head"]
    return HeadCard(
        feature_set=plan.feature_set,
        store=plan.config.store,
        source=spec.source,
        backbone=spec.backbone,
        weights_digest=spec.weights_digest,
        preprocessing=spec.preprocessing,
        embedding_key=spec.embedding_key,
        dtype=spec.dtype,
        autocast=spec.autocast,
        task=task_ref(data),
        classes=list(data.classes),
        splits=data.split_sizes(),
        notes=list(data.notes),
        estimator=type(estimator).__name__,
        params={k: v for k, v in estimator.get_params().items() if _jsonable(v)},
        validation_curve=fitted.validation,
        result=result,
        libraries=library_versions(_LIBRARIES),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        warnings=list(fitted.warnings),
    )


def task_ref(data: TaskData) -> TaskRef:
    """The task as a card records it: its definition and the digest that identifies it."""
    return TaskRef.from_dict({**data.task.to_dict(), "digest": data.task.digest})


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True
