"""Learning-curve runs of the heads pipeline (``--label-fraction``): the option and its
checks, the heads planned (one per seed, one for fraction 1), their ids (new ones, every
existing id unchanged), and a run on a synthetic feature set read back from its cards.
No embedding and no Prefect: the features are written through the store API."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from tests.support.task_feature_set import KEY, uneven_store
from transfer_pipe.app.cli import build_parser, run_values_from
from transfer_pipe.config import TrainConfig
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.heads.card import list_cards
from transfer_pipe.heads.options import SELECTION_RULE, ProtocolOptions
from transfer_pipe.heads.tasks import SplitOptions, parse_task
from transfer_pipe.steps.target import run_config
from transfer_pipe.steps.train import (
    HeadRun,
    TrainPlan,
    head_id,
    prepare_training,
    train,
)
from transfer_pipe.store import FeatureSetSpec

# Quick protocol: these tests are about which rows each head sees, not about the C grid.
QUICK: dict[str, Any] = {"c_values": 3, "bootstrap": 20}


def _config(store: str, **values: Any) -> TrainConfig:
    return TrainConfig(
        **{"feature_set": KEY, "store": store, "heads": ("logreg",), **QUICK, **values}
    )


@pytest.fixture
def store(tmp_path: Path) -> str:
    return uneven_store(tmp_path)


# -- the option ---------------------------------------------------------------------------


def test_the_command_line_offers_label_fraction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["train", "KEY", "--label-fraction", "0.25"])
    config = run_config(TrainConfig, run_values_from(TrainConfig, args))
    assert config.label_fraction == 0.25 and config.shots is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"label_fraction": 0.0}, "--label-fraction must be greater than 0"),
        ({"label_fraction": 1.5}, "--label-fraction must be at most 1"),
        # Mutation: the check in TrainConfig._problems removed makes this pass silently.
        ({"label_fraction": 0.5, "shots": 2}, "--shots and --label-fraction"),
    ],
)
def test_bad_label_fractions_are_refused(values: dict[str, object], message: str) -> None:
    with pytest.raises(TransferPipeError, match=message):
        TrainConfig(feature_set="k", **values)  # type: ignore[arg-type]


# -- head ids ----------------------------------------------------------------------------


def _plan(config: TrainConfig) -> TrainPlan:
    """A plan without a store: the head id needs only the config, feature set and task."""
    no_spec = cast(FeatureSetSpec, None)
    return TrainPlan(
        config, "fs0", parse_task(config.task), "penultimate", SplitOptions(), (), no_spec
    )


def _old_head_id(plan: TrainPlan, run: HeadRun, *, selection: bool = True) -> str:
    """The head id formula before --label-fraction existed, written out again (with the
    selection rule, since heads chosen by the former rule are refitted; ``selection=False``:
    the formula before that rule)."""
    identity: dict[str, Any] = {
        "feature_set": plan.feature_set,
        "layer": plan.layer,
        "task": plan.task.digest,
        "split": [plan.config.val_fraction, plan.config.test_fraction, plan.config.split_seed],
        "shots": [plan.config.shots, run.shot_seed],
        "head": run.head,
        "options": asdict(ProtocolOptions.from_config(plan.config)),
    }
    if selection:
        identity["selection"] = SELECTION_RULE
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    task = re.sub(r"[^a-z0-9]+", "-", plan.task.name.lower()).strip("-") or "task"
    shot = f"-{plan.config.shots}shot-s{run.shot_seed}" if run.shot_seed is not None else ""
    return f"{task}-{run.head}{shot}-{digest}"


@pytest.mark.parametrize(
    ("values", "run"),
    [({}, HeadRun("logreg")), ({}, HeadRun("mlp"))],
)
def test_head_ids_without_label_fraction_are_unchanged(
    values: dict[str, object], run: HeadRun
) -> None:
    # Mutation: "label_fraction": None always added to the identity dict changes every
    # existing head id (and a rerun would refit everything the store holds): fails here.
    plan = _plan(TrainConfig(feature_set="fs0", **values))  # type: ignore[arg-type]
    assert head_id(plan, run) == _old_head_id(plan, run)


def test_the_selection_rule_is_part_of_every_head_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store's heads chosen by an earlier selection rule (first best on validation rows
    alone, before cross-validation and the log-loss tie-break) are refitted, not reused."""
    plan = _plan(TrainConfig(feature_set="fs0"))
    for run in (HeadRun("logreg"), HeadRun("knn", 1)):
        # Mutation: the "selection" entry dropped from steps.train.head_id fails here.
        assert head_id(plan, run) != _old_head_id(plan, run, selection=False)
    before = head_id(plan, HeadRun("logreg"))
    monkeypatch.setattr("transfer_pipe.steps.train.plan.SELECTION_RULE", SELECTION_RULE + 1)
    assert head_id(plan, HeadRun("logreg")) != before


def test_a_drawn_run_gets_a_new_id_since_it_refits_on_its_drawn_rows_alone() -> None:
    """A few-shot head of before was refitted with the validation rows: its card must not
    be reused for today's refit on the drawn rows alone (steps.train.head_id)."""
    plan = _plan(TrainConfig(feature_set="fs0", shots=5))
    run = HeadRun("knn", 2)
    assert head_id(plan, run) != _old_head_id(plan, run)
    assert head_id(plan, run).startswith("source-knn-5shot-s2-")


def test_label_fraction_and_seed_name_their_heads() -> None:
    quarter = _plan(TrainConfig(feature_set="fs0", label_fraction=0.25))
    ids = {head_id(quarter, HeadRun("logreg", seed)) for seed in range(3)}
    assert len(ids) == 3 and all("-25pct-s" in i for i in ids)
    # Mutation: the fraction left out of the identity (the name alone differs) fails here.
    half = _plan(TrainConfig(feature_set="fs0", label_fraction=0.5))
    digest = head_id(quarter, HeadRun("logreg", 0)).rsplit("-", 1)[1]
    assert head_id(half, HeadRun("logreg", 0)).rsplit("-", 1)[1] != digest
    everything = _plan(TrainConfig(feature_set="fs0"))
    assert head_id(quarter, HeadRun("logreg", 0)) != head_id(everything, HeadRun("logreg", 0))


# -- runs --------------------------------------------------------------------------------


def test_a_label_fraction_plans_one_head_per_seed_and_fraction_one_a_single_one(
    store: str,
) -> None:
    runs = prepare_training(_config(store, label_fraction=0.25, shot_seeds=3), KEY).runs
    assert runs == tuple(HeadRun("logreg", seed) for seed in range(3))
    # Mutation: fraction 1 planned like any other (shot_seeds repeats) fails here.
    whole = prepare_training(_config(store, label_fraction=1.0, shot_seeds=3), KEY).runs
    assert whole == (HeadRun("logreg", 0),)
    assert prepare_training(_config(store), KEY).runs == (HeadRun("logreg"),)


def test_a_learning_curve_point_fits_each_seed_on_its_share_and_reuses_it(store: str) -> None:
    config = _config(store, heads=("logreg", "ridge"), label_fraction=0.25, shot_seeds=3)
    summary = train(config)
    full = {"train": 68, "val": 12, "test": 12}
    assert summary.label_fraction == 0.25 and summary.shots is None
    assert summary.splits.sizes == full  # the task's split, not one draw
    assert (summary.heads_fitted, summary.heads_reused) == (6, 0)
    cards = {c.result.head_id: c for c in list_cards(store)}
    for name, head in summary.heads.items():
        assert len(set(head.head_ids)) == 3
        # Mutation: _head_summary given only results[:1] loses the spread: fails here.
        assert head.accuracy_std is not None and head.accuracy_ci95 is None
        mine = [cards[i] for i in head.head_ids]
        accuracies = [c.result.metrics.accuracy for c in mine]
        assert head.accuracy == pytest.approx(np.mean(accuracies))
        assert head.accuracy_std == pytest.approx(np.std(accuracies))
        assert sorted(c.result.shot_seed for c in mine) == [0, 1, 2]  # type: ignore[type-var]
        for card in mine:
            assert (
                card.result.head == name
                and card.result.label_fraction == 0.25
                and card.result.shots is None
            )
            # Mutation: _fit_and_save without label_subset trains on all 68 rows: fails.
            assert card.splits.train == 10 + 5 + 2  # ceil(a quarter) of 40, 20 and 8
            assert (card.splits.val, card.splits.test) == (full["val"], full["test"])
    results = {r["head_id"] for r in summary.table}
    assert results == set(cards)

    again = train(config)
    assert (again.heads_fitted, again.heads_reused) == (0, 6)
    # Mutation: _rows_summary reading a reused card's sizes for fraction runs (the
    # condition on label_fraction dropped) reports train 17 here.
    assert again.splits.sizes == full
    assert {n: h.head_ids for n, h in again.heads.items()} == {
        n: h.head_ids for n, h in summary.heads.items()
    }
    assert again.heads["logreg"].accuracy == summary.heads["logreg"].accuracy

    other = train(replace(config, label_fraction=0.5))
    assert (other.heads_fitted, other.heads_reused) == (6, 0)
    assert not set(other.heads["logreg"].head_ids) & set(summary.heads["logreg"].head_ids)
    assert Counter(c.result.label_fraction for c in list_cards(store)) == {0.25: 6, 0.5: 6}
