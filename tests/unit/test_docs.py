"""The documentation: the README stays a short front page, the MkDocs site builds strictly,
and every generated benchmark table in it says what its results file says."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from transfer_pipe.app.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = ROOT / "docs" / "pages"
RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture(scope="module")
def tables() -> ModuleType:
    # benchmarks/ is a folder of scripts, not a package: load the script by its path
    # (registered first, so that its dataclass can find its module).
    spec = importlib.util.spec_from_file_location(
        "benchmark_tables", ROOT / "benchmarks" / "tables.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_table_in_the_docs_matches_its_results(tables: ModuleType) -> None:
    # Mutations seen failing: a row dropped from the store_layout generator; 40,017 typed
    # as 40,071 in the store layout page's table; the taps table's markers deleted from
    # its page (unplaced names it).
    assert tables.check() == []
    assert tables.unplaced() == []


def copy_page(tables: ModuleType, tmp_path: Path, page: str) -> tuple[Path, Path]:
    """The page and the results files of its tables, alone in a pages and a results folder."""
    pages, results = tmp_path / "pages", tmp_path / "results"
    (pages / page).parent.mkdir(parents=True)
    results.mkdir()
    shutil.copy(PAGES / page, pages / page)
    for match in tables.marked_tables((PAGES / page).read_text()):
        for name in tables.TABLES[match.group("name")].results:
            shutil.copy(RESULTS / name, results / name)
    return pages, results


def test_a_changed_result_names_the_page_and_the_table(tables: ModuleType, tmp_path: Path) -> None:
    # Mutation seen failing: check() comparing only each table's header line.
    pages, results = copy_page(tables, tmp_path, "benchmarks/run-phases.md")
    assert tables.check(pages, results) == []
    record = json.loads((results / "run_phases.json").read_text())
    record["cold"]["phases_s"]["flow_tasks"] += 1.0  # 70.43 -> 71.43 in one cell
    (results / "run_phases.json").write_text(json.dumps(record))

    problems = tables.check(pages, results)

    assert problems == ["benchmarks/run-phases.md: table run_phases disagrees with run_phases.json"]
    assert tables.main(["--check", "--pages", str(pages), "--results", str(results)]) == 1
    # Rewriting the page brings it back in step, and touches only that table's cell.
    before = (pages / "benchmarks/run-phases.md").read_text()
    assert tables.main(["--pages", str(pages), "--results", str(results)]) == 0
    after = (pages / "benchmarks/run-phases.md").read_text()
    assert tables.check(pages, results) == []
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 1 and "70.43" in changed[0][0] and "71.43" in changed[0][1]


def test_a_hand_edited_table_and_an_unknown_table_are_named(
    tables: ModuleType, tmp_path: Path
) -> None:
    # Mutation seen failing: check() skipping names missing from TABLES.
    pages, results = copy_page(tables, tmp_path, "benchmarks/autocast-cpu.md")
    page = pages / "benchmarks/autocast-cpu.md"
    page.write_text(page.read_text().replace("23.6 s", "21.6 s", 1))
    page.write_text(page.read_text() + "\n<!-- table: no_such_table -->\n<!-- /table -->\n")

    assert tables.check(pages, results) == [
        "benchmarks/autocast-cpu.md: table autocast_cpu disagrees with autocast_cpu.json",
        "benchmarks/autocast-cpu.md: table no_such_table: no such table in benchmarks/tables.py",
    ]
    # Regenerating the page mends the known table and leaves the unknown one for check to
    # name. Mutation seen failing: rewrite() rendering every marked name (a KeyError).
    mended = tables.rewrite(page.read_text(), results)
    assert "23.6 s" in mended and "<!-- table: no_such_table -->\n<!-- /table -->" in mended


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    # Mutations seen failing: a page linking to a missing page (strict mode stops on the
    # warning); a page left out of the nav (omitted_files: warn).
    mkdocs = Path(sys.executable).parent / "mkdocs"
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [
            str(mkdocs),
            "build",
            "--strict",
            "-f",
            str(ROOT / "docs" / "mkdocs.yml"),
            "-d",
            str(site),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert "WARNING" not in build.stderr
    nightly = (site / "benchmarks" / "nightly" / "index.html").read_text()
    assert "<table>" in nightly and "-100 files, 100 rewritten" in nightly
    # deploy/README.md is included, not copied: its text is on the deploy page.
    first_line = (ROOT / "deploy" / "README.md").read_text().splitlines()[0].lstrip("# ")
    assert first_line in (site / "deploy" / "index.html").read_text()


def test_the_readme_is_a_short_front_page_starting_with_the_two_commands() -> None:
    # Mutations seen failing: the manual's CLI section pasted back (about 330 lines); a third
    # line (make check) added to the first code block; the paragraph's last line dropped
    # from the quick start page.
    lines = README.read_text().splitlines()
    assert len(lines) <= 200
    assert lines[0] == "# transfer-pipe" and lines[1] == ""
    assert lines[2] == "```" and lines[5] == "```"
    assert lines[3].startswith("make run    # ") and lines[4].startswith("make test   # ")
    # The quick start page opens the same way, word for word.
    opening = "\n".join(lines[2:]).split("\n## ", 1)[0]
    assert opening in (PAGES / "quickstart.md").read_text()


def test_the_readmes_links_resolve() -> None:
    # GitHub renders the README outside the site, so strict mode never sees its links.
    # Mutation seen failing: a link to docs/pages/store-layout.md (the page is store.md).
    targets = re.findall(r"\]\(([^)#]+)\)", README.read_text())
    local = [t for t in targets if "://" not in t]
    assert local, "the README links into the docs"
    assert [t for t in local if not (ROOT / t).exists()] == []


def test_the_readmes_commands_parse() -> None:
    # The quick starts use only commands and options the CLI has.
    # Mutation seen failing: `--feature-sets KEY` for `heads ls --feature-set KEY`.
    blocks = re.findall(r"```\n(.*?)```", README.read_text(), re.DOTALL)
    commands = [
        line.split("  #", 1)[0]
        for block in blocks
        for line in block.splitlines()
        if line.startswith("transfer-pipe ")
    ]
    assert len(commands) >= 8
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])  # exits 2 on an unknown option
