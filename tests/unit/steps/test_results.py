"""Step summaries print as the JSON the CLI's ``--json`` line has always had: a head's
absent metric is an absent key, nested summaries are plain objects, a long table can be
left out."""

from __future__ import annotations

import json

from transfer_pipe.steps.results import HeadSummary, TrainSummary
from transfer_pipe.store.cards import SplitSizes


def _summary(heads: dict[str, HeadSummary]) -> TrainSummary:
    return TrainSummary(
        feature_set="0123456789abcdef", store="/s", task="source", layer="penultimate",
        classes=["a", "b"], splits=SplitSizes(train=8, val=2, test=4, origin="source"),
        shots=None, notes=[], embedded=0, heads_fitted=1, heads_reused=0, heads=heads,
        table=[{"head_id": "x"}],
    )  # fmt: skip


def test_train_summary_json_line() -> None:
    single = HeadSummary(
        accuracy=0.75, macro_f1=0.7, balanced_accuracy=0.72, ece=0.05, head_ids=["h1"],
        fit_seconds=1.5, accuracy_ci95=[0.6, 0.9], chosen={"C": 0.1},
    )  # fmt: skip
    line = json.loads(_summary({"logreg": single}).to_json(exclude=("table",)))
    assert "table" not in line and line["splits"] == {"train": 8, "val": 2, "test": 4}
    # Mutation: printing absent values as null (dropping HeadSummary.to_dict) makes this fail.
    assert line["heads"]["logreg"] == {
        "accuracy": 0.75, "macro_f1": 0.7, "balanced_accuracy": 0.72, "ece": 0.05,
        "head_ids": ["h1"], "fit_seconds": 1.5, "accuracy_ci95": [0.6, 0.9], "chosen": {"C": 0.1},
    }  # fmt: skip
    assert json.loads(_summary({}).to_json())["table"] == [{"head_id": "x"}]
