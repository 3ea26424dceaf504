"""Step summaries print as the JSON the CLI's ``--json`` line has always had: a head's
absent metric is an absent key, nested summaries are plain objects, a long table can be
left out."""

from __future__ import annotations

import json

from transfer_pipe.steps.results import FinetuneSummary, HeadSummary, TrainSummary
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


def test_a_finetune_summary_prints_its_split_as_a_train_summary_does() -> None:
    """Its ``splits`` is the card's ``SplitSizes`` record; the line shows rows by split
    name with ``split_origin`` beside them, as a train summary's and the dry run's do.
    Mutation seen failing: ``FinetuneSummary`` on ``Record`` (the record printed whole)."""
    splits = SplitSizes(train=8, val=2, test=4, origin="stratified (seed 0)", dropped=1)
    summary = FinetuneSummary(
        run_id="r", feature_set="0123456789abcdef", store="/s", task="source",
        classes=["a", "b"], splits=splits, policy="top-1", lp_ft=True, epochs=2,
        best_epoch=1, stopped="epochs", image_size=32, device="cpu", accuracy=0.75,
        macro_f1=0.7, balanced_accuracy=0.72, accuracy_ci95=[0.5, 0.9],
        probe_head_id="h", probe_accuracy=0.5, probe_macro_f1=0.4, gain=0.25,
        skipped_images=0, train_seconds=1.0, checkpoint="/c", url=None, reused=False,
        embedded=0, table=[],
    )  # fmt: skip
    line = json.loads(summary.to_json())
    assert line["splits"] == {"train": 8, "val": 2, "test": 4}
    assert line["split_origin"] == "stratified (seed 0)"
    assert list(line)[5:7] == ["splits", "split_origin"]  # where the splits always were
