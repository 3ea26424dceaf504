"""Options are written once, on the config fields: the CLI, its help and the checks read them."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from transfer_pipe.app.cli import build_parser, run_values_from
from transfer_pipe.app.serve import ServeOptions
from transfer_pipe.config import (
    Config,
    EmbedConfig,
    FinetuneConfig,
    GcConfig,
    HeadsListOptions,
    ListingOutput,
    Option,
    PredictConfig,
    ReportOutput,
    RunOutput,
    ShowOptions,
    SweepConfig,
    TrainConfig,
    VerifyOptions,
    options,
    run_options,
    run_values,
    with_defaults,
)
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.steps.target import run_config


def _parsed(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("embed", "src"), EmbedConfig(source="src")),
        (("train", "src"), TrainConfig(embed=EmbedConfig(source="src"))),
        (("finetune", "src"), FinetuneConfig(embed=EmbedConfig(source="src"))),
        (
            ("predict", "a.png", "--head", "h", "--out", "o.csv"),
            PredictConfig(paths=("a.png",), head="h", out="o.csv"),
        ),
    ],
)
def test_the_command_line_defaults_are_the_config_defaults(
    argv: tuple[str, ...], expected: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mutation: a default written again in the parser (e.g. --lr default 1e-3, or --c-values
    # 40) makes the parsed config differ from the field's default.
    monkeypatch.delenv("TRANSFER_PIPE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    args = _parsed(*argv)
    values = run_values_from(type(expected), args)
    assert run_config(type(expected), values) == expected
    # The flat values are exactly what the flow takes, and they round-trip.
    assert values == run_values(expected)
    # Every option of the run is offered by the command (none forgotten).
    assert {o.name for o in run_options(type(expected))} <= set(vars(args))


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(
            embed=EmbedConfig(source="src", image_size=32, layers=("a", "b"), workers=1),
            layer="a+b",
            heads=("logreg",),
        ),
        FinetuneConfig(embed=EmbedConfig(source="src", limit=10), policy="full", lr=0.01),
        EmbedConfig(source="src", dtype="float16", batch_size=8),
    ],
)
def test_a_config_round_trips_through_its_flat_values(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mutation: dropping the embed options from run_values (or from split_run_values) loses
    # image_size / workers / limit on the way through a flow's parameters.
    monkeypatch.chdir(tmp_path)
    assert run_config(type(config), run_values(config)) == config


def test_a_run_config_refuses_what_its_flat_values_cannot_say() -> None:
    # A fine-tuning run's batch size is its own; the embed run's cannot be passed beside it.
    config = FinetuneConfig(embed=EmbedConfig(source="src", batch_size=8))
    with pytest.raises(ValueError, match="batch_size"):
        run_values(config)
    with pytest.raises(TransferPipeError, match="unknown option"):
        run_config(TrainConfig, {"source": "src", "heds": ("logreg",)})


def test_help_and_choices_come_from_the_fields() -> None:
    # Mutation: dropping the choices from add_options lets --dtype float64 through.
    with pytest.raises(SystemExit) as exit_info:
        _parsed("embed", "src", "--dtype", "float64")
    assert exit_info.value.code == 2
    help_text = build_parser()._subparsers._group_actions[0].choices["finetune"].format_help()  # type: ignore[union-attr]
    for opt in options(FinetuneConfig):
        assert opt.flag in help_text
    assert "--time-budget" in help_text and "--bn {frozen,train}" in help_text


def test_the_store_default_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFER_PIPE_STORE", "/data/store")
    assert _parsed("embed", "src").store == "/data/store"
    assert _parsed("ls").store == "/data/store"


@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"shard_size": 0}, "--shard-size"),
        ({"image_size": 5000}, "--image-size"),
        ({"dtype": "float64"}, "--dtype"),
        ({"autocast": "fp8"}, "--autocast"),
        ({"limit": 0}, "--limit"),
    ],
)
def test_bad_embed_values_name_the_option(values: dict, flag: str) -> None:
    # Mutation: skipping _option_problems in __post_init__ accepts every one of these.
    with pytest.raises(TransferPipeError, match=flag):
        EmbedConfig(source="src", **values)


@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"lr": 0.0}, "--lr"),
        ({"lr_decay": 1.5}, "--lr-decay"),
        ({"time_budget_s": 0.0}, "--time-budget"),
        ({"bn": "both"}, "--bn"),
        ({"augment": "mixup"}, "--augment"),
        ({"policy": "top-zero"}, "freeze policy"),
        ({"val_fraction": 0.0}, "--val-fraction"),
    ],
)
def test_bad_finetune_values_name_the_option(values: dict, flag: str) -> None:
    with pytest.raises(TransferPipeError, match=flag):
        FinetuneConfig(feature_set="k", **values)


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(TransferPipeError) as err:
        TrainConfig(feature_set="k", heads=(), c_min=1.0, c_max=0.5, bootstrap=0)
    message = str(err.value)
    assert "--heads" in message and "--c-min" in message and "--bootstrap" in message


def test_a_feature_set_or_a_source_never_both() -> None:
    with pytest.raises(TransferPipeError, match="not both"):
        TrainConfig()
    with pytest.raises(TransferPipeError, match="same store"):
        TrainConfig(embed=EmbedConfig(source="s", store="a"), store="b")


def _not_in_the_cli_page(offered: Callable[[type], Iterable[Option]], *classes: type) -> list[str]:
    """The flags of ``offered(config_class)`` that the CLI page's block does not name (as a
    whole flag: ``--lr`` is not found inside ``--lr-decay``)."""
    page = (Path(__file__).parents[2] / "docs" / "pages" / "cli.md").read_text()
    cli_block = page.split("# CLI", 1)[1].split("```", 2)[1]
    return [
        f"{opt.flag} of {config_class.__name__}"
        for config_class in classes
        for opt in offered(config_class)
        if not opt.positional and not re.search(re.escape(opt.flag) + r"(?![\w-])", cli_block)
    ]


def test_the_cli_page_lists_every_option() -> None:
    # Mutation: a new config field (an option) not added to the CLI page's block fails here.
    # Mutation seen failing: `[--random-limit N]` dropped from docs/pages/cli.md's block.
    runs = (EmbedConfig, TrainConfig, FinetuneConfig, SweepConfig, PredictConfig)
    assert _not_in_the_cli_page(run_options, *runs) == []


@pytest.mark.parametrize(
    ("command", "config_classes"),
    [
        (("serve",), (ServeOptions,)),
        (("verify", "KEY"), (VerifyOptions, ReportOutput)),
        (("show", "KEY"), (ShowOptions, ListingOutput)),
        (("heads", "ls"), (HeadsListOptions, ListingOutput)),
        (("gc",), (GcConfig, ReportOutput)),
        (("embed", "src"), (RunOutput,)),
    ],
)
def test_every_command_takes_its_flags_and_defaults_from_the_fields(
    command: tuple[str, ...], config_classes: tuple[type, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mutation seen failing: serve's --port written again in the parser with default 4300.
    monkeypatch.delenv("TRANSFER_PIPE_STORE", raising=False)
    args = vars(_parsed(*command))
    for config_class in config_classes:
        for opt in options(config_class):
            if not opt.positional:
                assert args[opt.name] == opt.default, f"{opt.flag} of {' '.join(command)}"


def test_the_cli_page_lists_every_command_option() -> None:
    commands = (ServeOptions, VerifyOptions, ShowOptions, HeadsListOptions, GcConfig)
    commands += (RunOutput, ReportOutput, ListingOutput)
    assert _not_in_the_cli_page(options, *commands) == []


def test_a_benchmark_offers_an_option_with_its_own_default() -> None:
    image_size, limit = with_defaults(EmbedConfig, ("image_size", "limit"), image_size=64)
    assert (image_size.default, image_size.help) == (64, "input size in pixels")
    assert image_size.minimum == 8 and limit == next(options(EmbedConfig, only=("limit",)))
    with pytest.raises(ValueError, match="batch_size"):
        with_defaults(EmbedConfig, ("limit",), batch_size=8)
