"""The Prefect UI as a person sees it, in a real browser: ``transfer-pipe serve`` as a
subprocess, a ``transfer-pipe train`` run against it, and the run's page (the address the CLI
prints) opened in headless Chromium (Debian's ``chromium``), rendered by the UI's JavaScript.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.browser import Browser, chromium_path
from tests.support.images import make_dataset
from tests.support.prefect_api import api
from tests.support.serve import Served, cli

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        chromium_path() is None,
        reason="Chromium is not installed (Debian: apt-get install chromium; .ci/run does)",
    ),
]

STATE = "Completed"
"""The state the run's page must show. (Mutation checked: expecting "Failed" here fails.)"""

RUN_URL = re.compile(r"View at (http://\S+/runs/flow-run/([0-9a-f-]{36}))")


@pytest.fixture(scope="module")
def train_run(served: Served, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A ``train`` run with its artifacts: (the run page's address the CLI printed, run id)."""
    images = tmp_path_factory.mktemp("images")
    # Enough images per class for stratified train/val/test splits of two classes.
    make_dataset(images, classes=2, per_class=12, bad=True)
    args = ("train", str(images), "--store", str(images.parent / "store"))
    done = cli(served.home, *args, "--backbone", "tiny_test", "--heads", "logreg,ridge")
    assert done.returncode == 0, done.stderr
    # The first "View at" is the train run itself; its subflow (embed) follows.
    found = RUN_URL.search(done.stdout + done.stderr)
    assert found, f"the CLI printed no run address:\n{done.stdout}\n{done.stderr}"
    url, run_id = found.groups()
    assert url.startswith(f"http://127.0.0.1:{served.port}/")  # serve's UI, not :4200
    return url, run_id


def artifacts_of(served: Served, run_id: str) -> list[dict[str, Any]]:
    body = {"artifacts": {"flow_run_id": {"any_": [run_id]}}}
    found: list[dict[str, Any]] = api("POST", f"{served.api_url}/artifacts/filter", body)
    return found


def assert_not_blank(png: Path) -> None:
    """A rendered page has text, badges and a graph: many colours. A blank page or a lone
    spinner on the dark background has a handful."""
    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 500, f"{png} looks blank ({len(colours)} colours)"


def test_the_run_page_shows_the_state_and_the_artifacts(
    served: Served, train_run: tuple[str, str], tmp_path: Path
) -> None:
    url, run_id = train_run
    run = api("GET", f"{served.api_url}/flow_runs/{run_id}")
    artifacts = artifacts_of(served, run_id)
    keys = sorted(a["key"] for a in artifacts if a["key"])
    # The heads x metrics table is the train run's own; each head's report is its task's.
    # Mutation checked: a train flow that creates no heads-metrics table fails here.
    assert any(key.startswith("heads-metrics") for key in keys), keys
    with Browser(width=1400, height=1000) as browser:
        browser.open(url)
        # The heading (run name, state badge) is rendered by the UI's JavaScript once it
        # has fetched the run: the HTML the server sends holds neither.
        browser.wait_for_text(run["name"], "Task runs")
        heading = browser.evaluate("document.querySelector('.page-heading').innerText")
        # Mutation checked: a serve whose UI calls the API on another port (the issue's
        # PREFECT_UI_API_URL bug) renders no run: the name never appears and this fails.
        assert STATE in heading, heading
        browser.click_text("Artifacts")
        # Every artifact of the run is listed by its key, with its kind.
        shown = browser.wait_for_text(*keys)
        assert "TABLE" in shown.upper() and "MARKDOWN" in shown.upper()
        picture = browser.screenshot(tmp_path / "run-page.png")
    assert_not_blank(picture)
    # Kept where pytest keeps its temporary folders, named in the output for CI logs.
    kept = tmp_path.parent / "ui-run-page.png"
    shutil.copy(picture, kept)
    print(f"screenshot of {url}: {kept}")


def test_the_heads_table_artifact_shows_each_head(
    served: Served, train_run: tuple[str, str], tmp_path: Path
) -> None:
    _, run_id = train_run
    (table,) = [
        a for a in artifacts_of(served, run_id) if (a["key"] or "").startswith("heads-metrics")
    ]
    with Browser(width=1400, height=900) as browser:
        browser.open(f"http://127.0.0.1:{served.port}/artifacts/artifact/{table['id']}")
        # One row per fitted head, with its metrics, as the CLI's table prints them.
        # Mutation checked: a heads-metrics table of its first row only (summary.table[:1]
        # in flows/train.py) never shows "2 Items" nor "ridge", and this fails.
        browser.wait_for_text(table["key"], "2 Items", "accuracy", "macro_f1", "logreg", "ridge")
        assert_not_blank(browser.screenshot(tmp_path / "heads-table.png"))
