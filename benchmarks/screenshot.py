"""Retake docs/ui-run.png: a real ``train`` run's page in the Prefect UI, with its artifacts.

Starts its own ``transfer-pipe serve`` (own home, free loopback port, fresh store), runs
``transfer-pipe train fashion-mnist --limit N`` against it, opens the page of that run (the
address the CLI prints) in headless Chromium (Debian's ``chromium``), waits until the UI has
rendered the run, opens its Artifacts tab and photographs the window. A second picture shows
the heads x metrics table artifact.

    python benchmarks/screenshot.py [--limit 500] [--output docs/ui-run.png]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image
from serve_stack import Stack, api, exit_on_sigterm, serve_stack

from transfer_pipe.app.cli import add_options
from transfer_pipe.config import EmbedConfig, with_defaults

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the browser driver is the tests' (tests/support/browser.py)

from tests.support.browser import Browser  # noqa: E402

RUN_URL = re.compile(r"View at (http://\S+/runs/flow-run/([0-9a-f-]{36}))")


def train(stack: Stack, store: Path, limit: int, image_size: int) -> tuple[str, str]:
    """A ``train`` run on Fashion-MNIST; (its page's address as the CLI printed it, its id)."""
    args = ["train", "fashion-mnist", "--limit", str(limit), "--image-size", str(image_size)]
    done = stack.cli(*args, "--store", str(store))
    if done.returncode != 0:
        raise RuntimeError(f"transfer-pipe train failed:\n{done.stderr}")
    found = RUN_URL.search(done.stdout + done.stderr)  # the first: the train run itself
    if not found:
        raise RuntimeError(f"the CLI printed no run address:\n{done.stdout}\n{done.stderr}")
    return found.group(1), found.group(2)


def save_small(png: Path, output: Path) -> None:
    """Save as a 256-colour PNG: the UI's flat colours survive it, the file shrinks 3-4x."""
    with Image.open(png) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    output.parent.mkdir(parents=True, exist_ok=True)
    small.save(output, optimize=True)
    print(f"wrote {output} ({output.stat().st_size // 1024} KB)")


def photograph(stack: Stack, url: str, run_id: str, output: Path, work: Path) -> None:
    run = api("GET", f"{stack.api_url}/flow_runs/{run_id}")
    body = {"artifacts": {"flow_run_id": {"any_": [run_id]}}}
    artifacts = api("POST", f"{stack.api_url}/artifacts/filter", body)
    table = next(a for a in artifacts if (a["key"] or "").startswith("heads-metrics"))
    with Browser(width=1400, height=1250) as browser:
        browser.open(url)
        # Rendered once the UI's JavaScript fetched the run: wait for what a person reads.
        browser.wait_for_text(run["name"], "Task runs", "Completed")
        browser.click_text("Artifacts")
        browser.wait_for_text(*[a["key"] for a in artifacts if a["key"]])
        save_small(browser.screenshot(work / "run.png"), output)
    with Browser(width=1400, height=700) as browser:
        browser.open(f"{stack.ui_url}/artifacts/artifact/{table['id']}")
        browser.wait_for_text(table["key"], "accuracy", "logreg", "mlp")
        table_output = output.with_name(output.stem + "-heads.png")
        save_small(browser.screenshot(work / "table.png"), table_output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    embedding = with_defaults(EmbedConfig, ("limit", "image_size"), limit=500, image_size=64)
    add_options(parser, embedding)  # of Fashion-MNIST
    parser.add_argument(
        "--output", type=Path, default=ROOT / "docs" / "pages" / "img" / "ui-run.png"
    )
    options = parser.parse_args()
    exit_on_sigterm()
    base = Path(tempfile.mkdtemp(prefix="transfer-pipe-screenshot-"))
    try:
        with serve_stack(base, base / "store") as stack:
            url, run_id = train(stack, base / "store", options.limit, options.image_size)
            print(f"train run: {url}")
            photograph(stack, url, run_id, options.output, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
