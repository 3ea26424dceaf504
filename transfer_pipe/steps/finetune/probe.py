"""The linear probe a fine-tuning run is judged against and, with LP-FT, starts from; and
the model it trains: the backbone with a head for the task, the freeze policy applied.
"""

from __future__ import annotations

from sklearn.pipeline import Pipeline

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.finetune.surgery import (
    FinetuneModel,
    build_finetune_model,
    init_head,
    probe_head,
)
from transfer_pipe.heads.card import HeadCard
from transfer_pipe.heads.card import read_card as read_head_card
from transfer_pipe.heads.options import ProtocolOptions
from transfer_pipe.heads.protocol import fit_on_train
from transfer_pipe.steps.finetune.plan import PROBE_HEAD, FinetunePlan
from transfer_pipe.steps.train import HeadRun, train_head


def ensure_probe(plan: FinetunePlan) -> HeadCard:
    """The probe's card: the heads flow's logreg on the same feature set, task and split,
    fitted now if the store does not hold it yet."""
    store, options = plan.config.store, plan.config.storage_options
    card = read_head_card(store, plan.probe_head_id, options)
    if card is None:
        train_head(plan.probe_plan, HeadRun(PROBE_HEAD))
        card = read_head_card(store, plan.probe_head_id, options)
    assert card is not None, "a head just saved has its card"
    return card


def build_model(plan: FinetunePlan, lp_ft_head: bool = True) -> FinetuneModel:
    """The backbone with a head for the task and the freeze policy applied; with LP-FT (and
    ``lp_ft_head``) the head starts as the probe, its standardization folded into it."""
    config = plan.config
    model = build_finetune_model(
        plan.backbone,
        len(plan.classes),
        config.policy,
        plan.preprocessing.image_size,
        seed=config.seed,
        bn=config.bn,
    )
    if config.lp_ft and lp_ft_head:
        probe = lp_ft_probe(plan)
        tensors = probe.named_steps["head"].head_tensors()
        scaler = probe.named_steps["scale"]
        weight, bias = probe_head(
            tensors["coef"].numpy(), tensors["intercept"].numpy(), scaler.mean_, scaler.scale_
        )
        init_head(model, weight, bias)
    return model


def lp_ft_probe(plan: FinetunePlan) -> Pipeline:
    """LP-FT's starting head: the probe with the C the heads flow chose on validation,
    fitted on the training rows only. (The heads flow's saved probe was refit on train +
    validation; starting from it would let fine-tuning's early stopping, which judges on
    validation, favour the epochs closest to a head that has seen those rows.)"""
    card = ensure_probe(plan)
    if tuple(card.classes) != plan.classes:
        raise TransferPipeError(f"probe {plan.probe_head_id} has other classes than the task")
    options = ProtocolOptions.from_config(plan.probe_plan.config)
    return fit_on_train(PROBE_HEAD, plan.probe_plan.data, card.result.chosen, options)


def probe_val_accuracy(card: HeadCard) -> float | None:
    """The probe's validation accuracy: its chosen C fitted on the training rows, scored on
    the validation rows (the heads flow's choice; ``None`` if the card does not hold it)."""
    for point in card.validation_curve:
        # The point's parameters are the chosen ones; its other entries are scores
        # (val_accuracy, val_loss, ...).
        chosen = all(k in point and point[k] == v for k, v in card.result.chosen.items())
        if chosen and "val_accuracy" in point:
            return float(point["val_accuracy"])
    return None
