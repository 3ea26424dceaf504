"""deploy/: the Prefect deployments and the compose file name flows, pools and commands that
exist in this project (Docker cannot run here, so the compose file is checked by reading)."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from transfer_pipe.app import serve
from transfer_pipe.app.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "deploy" / "prefect.yaml"
COMPOSE = ROOT / "deploy" / "compose.yaml"


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def deployments() -> list[dict[str, Any]]:
    return list(load(PREFECT_YAML)["deployments"])


def test_every_entrypoint_is_a_flow_in_flows() -> None:
    from prefect import Flow

    checked = 0
    for entry in deployments():
        path, name = entry["entrypoint"].split(":")
        assert path.startswith("flows/"), entry["name"]
        if entry["name"] == "nightly" and not (ROOT / path).exists():
            continue  # the pipeline flow may not be written yet: serve skips it too
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        # Mutation: a misspelt entrypoint (flows/embed.py:embed) fails here.
        assert isinstance(getattr(module, name, None), Flow), entry["entrypoint"]
        checked += 1
    assert checked >= 3


def test_deployments_are_described_tagged_and_on_pools_serve_creates() -> None:
    entries = {entry["name"]: entry for entry in deployments()}
    assert {"embed", "train-heads", "finetune", "nightly"} <= set(entries)
    for name, entry in entries.items():
        assert entry["description"].strip() and entry["tags"], name
        assert {"source", "store"} <= set(entry["parameters"]), name
        # Mutation: a pool named `default` (which serve does not create) fails here.
        assert entry["work_pool"]["name"] in serve.WORK_POOLS, name
    assert entries["finetune"]["work_pool"]["name"] == "gpu"
    assert entries["nightly"]["entrypoint"] == "flows/pipeline.py:pipeline_flow"
    # One cron schedule (the nightly pipeline), and manual-only deployments.
    crons = {name: [s.get("cron") for s in e.get("schedules") or []] for name, e in entries.items()}
    assert crons["nightly"] == ["0 2 * * *"]
    assert crons["embed"] == crons["train-heads"] == crons["finetune"] == crons["sweep"] == []


def test_runs_start_in_the_project_root() -> None:
    (step,) = load(PREFECT_YAML)["pull"]
    directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
    # Mutation: another variable name than the one serve sets for its worker fails here.
    assert directory == "{{ $" + serve.ROOT_ENV + " }}"


def test_serve_deploys_the_entries_whose_flow_file_exists(tmp_path: Path) -> None:
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "prefect.yaml").write_text(PREFECT_YAML.read_text())
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "embed.py").write_text("")
    (tmp_path / "flows" / "finetune.py").write_text("")
    assert serve.deployable(tmp_path) == ["embed", "finetune"]


# --- compose ---------------------------------------------------------------------------


def simple_commands(command: str | list[str]) -> list[list[str]]:
    """The simple commands a compose `command` runs: a `sh -c` script split at its
    operators and parentheses, redirections dropped."""
    if isinstance(command, str):
        command = shlex.split(command)
    if command[:2] != ["sh", "-c"]:
        return [command]
    script = re.sub(r"[0-9]?>\S+", " ", command[2])
    parts = re.split(r"&&|\|\||;|\(|\)", script)
    return [shlex.split(part) for part in parts if part.strip()]


def compose_commands() -> list[list[str]]:
    services = load(COMPOSE)["services"]
    return [
        words
        for service in services.values()
        if "command" in service
        for words in simple_commands(service["command"])
    ]


def check_prefect(args: list[str]) -> None:
    """Parse ``args`` with Prefect's own CLI (without running it): an unknown command or
    option raises. (``_app`` is the cyclopts app behind the ``prefect`` script.)"""
    from prefect.cli._app import _app

    args = [a for a in args if a not in ("--no-prompt", "--prompt")]  # session flags
    _app.parse_args(args, exit_on_error=False, print_error=False)


def check_dask(args: list[str]) -> None:
    """Parse ``dask scheduler|worker args`` with Dask's own click commands (without running
    them): an unknown command or option raises."""
    from distributed.cli import dask_scheduler, dask_worker

    commands = {"scheduler": dask_scheduler.main, "worker": dask_worker.main}
    commands[args[0]].make_context(f"dask {args[0]}", args[1:])


def test_compose_runs_commands_that_exist() -> None:
    commands = compose_commands()
    assert len(commands) >= 7  # server, two workers, the deploy job's six steps
    for words in commands:
        # Mutation: `prefect worker start --pool cpu --typ process` in compose.yaml fails;
        # so does `dask worker ... --resource GPU=1` (seen).
        assert words[0] in ("prefect", "transfer-pipe", "dask"), words  # what our image installs
        if words[0] == "transfer-pipe":
            build_parser().parse_args(words[1:])  # exits 2 on an unknown command or option
            continue
        if words[0] == "dask":
            check_dask(words[1:])
            continue
        check_prefect(words[1:])
        if "--prefect-file" in words:
            assert (ROOT / words[words.index("--prefect-file") + 1]).is_file()


@pytest.mark.parametrize("bad", ["prefect worker strat --pool cpu", "prefect worker start --pol x"])
def test_the_command_check_rejects_what_prefect_would(bad: str) -> None:
    # Mutation guard for the check itself: a misspelt command or option must not pass.
    with pytest.raises(Exception, match="Unknown"):
        check_prefect(shlex.split(bad)[1:])


def test_compose_has_postgres_server_two_workers_and_a_shared_store() -> None:
    compose = load(COMPOSE)
    services = compose["services"]
    server_env = services["server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    pools = {}
    for service in services.values():
        words = simple_commands(service.get("command", ["-"]))[0]
        if words[1:3] == ["worker", "start"]:
            pools[words[words.index("--pool") + 1]] = service
    assert set(pools) == set(serve.WORK_POOLS)
    for service in pools.values():
        assert "store:/data" in service["volumes"]
        assert service["environment"]["PREFECT_API_URL"] == "http://server:4200/api"
    build = services["cpu-worker"]["build"]
    dockerfile = (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve()
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            assert (ROOT / line.split()[1]).exists(), line
