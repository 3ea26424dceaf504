"""The `transfer-pipe` command run by the tests: in this process, or as a real process
against a Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from transfer_pipe.app.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    """Run the CLI in this process with ``--json``; returns its last line's object."""
    assert main([*args, "--json"]) == 0
    result: dict[str, object] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return result


def cli(*args: str, api: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": api}
    return subprocess.run(
        [sys.executable, "-m", "transfer_pipe.app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=600,
    )
