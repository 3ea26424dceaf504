"""Fine-tuning judged against its baselines: LP-FT by default (``--no-lp-ft`` turns it
off), a from-scratch run (``--init random``) beside pretrained fine-tuning and the probe,
and a model below the probe on validation that says so and is not published without
``--force``."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import fsspec
import pytest

from tests.support.report import finetune_result
from tests.support.training import make_data
from transfer_pipe.app.cli import build_parser, run_values_from
from transfer_pipe.config import EmbedConfig, FinetuneConfig
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.finetune.card import ProbeScore, RunScore, probe_verdict
from transfer_pipe.finetune.persist import read_card, run_url
from transfer_pipe.report import comparison_rows, finetune_report
from transfer_pipe.steps.embed import embed
from transfer_pipe.steps.finetune import finetune, prepare_finetune
from transfer_pipe.store import open_store


def test_lp_ft_is_the_default_and_no_lp_ft_turns_it_off() -> None:
    parser = build_parser()

    def parsed(*argv: str) -> dict[str, object]:
        return run_values_from(FinetuneConfig, parser.parse_args(["finetune", "k", *argv]))

    # Mutation: add_options giving every bool "store_true" (no --no-lp-ft) fails here.
    assert parsed()["lp_ft"] is True and parsed("--lp-ft")["lp_ft"] is True
    assert parsed("--no-lp-ft")["lp_ft"] is False
    assert parsed()["force"] is False and parsed("--force")["force"] is True
    assert parsed("--init", "random")["init"] == "random"
    # A bool that is off by default keeps its one flag.
    assert parser.parse_args(["train", "k", "--refit"]).refit
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "k", "--no-refit"])


def test_random_init_trains_the_whole_network_without_lp_ft() -> None:
    trained = FinetuneConfig(feature_set="k", init="random").as_trained()
    # Mutation: an as_trained() that returns the options unchanged fails here.
    assert (trained.policy, trained.lp_ft, trained.bn) == ("full", False, "train")
    assert FinetuneConfig(feature_set="k", init="random", policy="full").as_trained() == trained
    pretrained = FinetuneConfig(feature_set="k", policy="top-1")
    assert pretrained.as_trained() is pretrained
    # Mutation: dropping the init/policy rule from FinetuneConfig._problems fails here.
    with pytest.raises(TransferPipeError, match=r"--init random.*--policy top-1"):
        FinetuneConfig(feature_set="k", init="random", policy="top-1")
    with pytest.raises(TransferPipeError, match="--init must be one of pretrained, random"):
        FinetuneConfig(feature_set="k", init="imagenet")  # type: ignore[arg-type]


def test_the_verdict_judges_validation_accuracy_and_names_the_probe() -> None:
    probe = ProbeScore("source-logreg-x", finetune_result().probe.metrics, val_accuracy=0.8)
    verdict = probe_verdict(0.7, probe)
    assert "below the linear probe" in verdict and "0.7000 vs 0.8000" in verdict
    assert "source-logreg-x" in verdict
    # Mutation: a verdict also on a tie (> for >=) or above the probe fails here.
    assert probe_verdict(0.8, probe) == probe_verdict(0.9, probe) == ""
    # An old card without the probe's validation accuracy judges nothing.
    assert probe_verdict(0.1, ProbeScore("p", probe.metrics)) == ""


def test_the_report_says_below_the_probe_and_shows_the_runs_side_by_side() -> None:
    base = finetune_result()
    verdict = probe_verdict(0.5, ProbeScore("source-logreg-x", base.probe.metrics, 0.9))
    scratch = RunScore("source-scratch-full-1", "scratch full", "random", 0.4, base.metrics)
    result = replace(base, below_probe=True, verdict=verdict, compared=scratch)
    text = finetune_report(result)
    # Mutation: a report without the verdict line fails here.
    assert "**Below the linear probe**" in text and "use the probe source-logreg-x" in text
    assert "this run 0.7500" in text and "scratch full 0.4000" in text  # validation line
    heads = [row["head"] for row in comparison_rows(result)]
    assert heads == ["linear probe", "finetune top-2", "scratch full"]
    pretrained = RunScore("source-top-2-1", "finetune top-2 lp-ft", "pretrained", 0.9, base.metrics)
    from_scratch = replace(base, head="scratch full", init="random", compared=pretrained)
    heads = [row["head"] for row in comparison_rows(from_scratch)]
    # Mutation: appending the compared run after this one whatever its init fails here.
    assert heads == ["linear probe", "finetune top-2 lp-ft", "scratch full"]
    assert "from random weights" in finetune_report(from_scratch)
    assert "Below the linear probe" not in finetune_report(from_scratch)


@pytest.fixture
def feature_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """36 coloured images embedded with tiny_test in a memory store; (store, key)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # its checkpoints
    make_data(tmp_path / "images", per_class=12)
    store = f"memory://baselines-{uuid.uuid4().hex}"
    source = EmbedConfig(source=str(tmp_path / "images"), store=store, backbone="tiny_test",
                         workers=1, device="cpu")  # fmt: skip
    return store, embed(source).feature_set


def _config(store: str, key: str, **changes: object) -> FinetuneConfig:
    settings: dict[str, object] = dict(
        feature_set=key, store=store, epochs=1, batch_size=8, loader_workers=0, device="cpu"
    )
    return FinetuneConfig(**{**settings, **changes})  # type: ignore[arg-type]


def test_a_scratch_run_has_its_own_id_and_shows_pretrained_fine_tuning_and_the_probe(
    feature_set: tuple[str, str],
) -> None:
    store, key = feature_set
    scratch = prepare_finetune(_config(store, key, init="random"), key)
    # Mutation: _backbone ignoring init (the pretrained tiny_test) fails here.
    assert scratch.backbone.id == "random/tiny_test" and scratch.config.policy == "full"
    # Mutation: a run name without "-scratch" fails here.
    assert not scratch.config.lp_ft and "-scratch-full-" in scratch.run_id
    # The same options but the init: another run. Mutation: leaving init out of run_id's
    # identity makes the two digests equal.
    same_but_init = _config(store, key, policy="full", lp_ft=False, bn="train")
    pretrained_full = prepare_finetune(same_but_init, key)
    digest = {plan.run_id.rsplit("-", 1)[1] for plan in (pretrained_full, scratch)}
    assert len(digest) == 2  # the identity differs, not just the name
    assert pretrained_full.probe_head_id == scratch.probe_head_id  # one probe: pretrained

    tuned = finetune(_config(store, key, policy="top-1"))
    assert tuned.init == "pretrained" and tuned.lp_ft and tuned.compared_run_id is None
    summary = finetune(_config(store, key, init="random"))
    assert summary.run_id == scratch.run_id and summary.init == "random"
    assert summary.policy == "full" and not summary.lp_ft
    # Mutation: compared_run returning None (no side-by-side) fails here.
    assert summary.compared_run_id == tuned.run_id
    assert summary.compared_accuracy == tuned.accuracy
    assert [row["head"] for row in summary.table] == [
        "linear probe", "finetune top-1 lp-ft", "scratch full"
    ]  # fmt: skip
    assert summary.table[0]["head_id"] == tuned.probe_head_id == summary.probe_head_id
    assert "trained from scratch" in summary.message and tuned.run_id in summary.message
    card = read_card(store, summary.run_id)
    assert card is not None and card.init == "random" and card.backbone == "random/tiny_test"
    assert card.result.compared is not None and card.result.compared.run_id == tuned.run_id
    # The pretrained run, seen again, shows the scratch run that finished since.
    again = finetune(_config(store, key, policy="top-1"))
    assert again.reused and again.compared_run_id == summary.run_id


def test_a_run_below_the_probe_says_so_and_publishes_only_with_force(
    feature_set: tuple[str, str],
) -> None:
    store, key = feature_set
    # A new head that barely moves (no LP-FT, a tiny learning rate, head only): about
    # chance on validation, where the probe separates the colours.
    weak = _config(store, key, policy="head", lp_ft=False, lr=1e-7)
    summary = finetune(weak)
    assert summary.val_accuracy is not None and summary.probe_val_accuracy is not None
    assert summary.val_accuracy < summary.probe_val_accuracy, summary
    assert summary.below_probe and summary.recommended_head_id == summary.probe_head_id
    assert "below the linear probe on validation" in summary.message
    assert f"use the probe {summary.probe_head_id}" in summary.message
    card = read_card(store, summary.run_id)
    assert card is not None and card.result.below_probe and card.result.verdict
    with fsspec.open(f"{run_url(store, summary.run_id)}/report.md", "r") as report:
        assert "**Below the linear probe**" in report.read()  # the saved report says it too

    catalog = {info.key for info in open_store(store).catalog()}
    # Mutation: publish_config without check_publishable publishes here.
    with pytest.raises(
        TransferPipeError, match=r"not publishing .*below the linear probe.*--force"
    ):
        finetune(replace(weak, publish=True))
    assert {info.key for info in open_store(store).catalog()} == catalog  # nothing written
    assert read_card(store, summary.run_id) == card  # the run stays saved

    forced = finetune(replace(weak, publish=True, force=True))
    assert forced.reused and forced.below_probe  # still says so
    assert forced.published_feature_set not in catalog | {None}
    assert forced.message.endswith(f"published as feature set {forced.published_feature_set}")
