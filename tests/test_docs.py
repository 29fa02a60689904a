"""The documentation: the site builds with `mkdocs build --strict` (a broken link or a page
missing from the nav fails), and every shell block marked ```` ```sh tiny ```` in docs/ runs,
as written, in a copy of the tests' tiny build (read from the Markdown, not copied here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, copy_built

BIN = Path(sys.executable).parent
TINY_BLOCK = re.compile(r"^```sh tiny\n(.*?)^```$", re.M | re.S)


def tiny_blocks() -> list[tuple[str, str]]:
    """(page and block number, script) of every runnable block."""
    found = []
    for page in sorted((REPO / "docs").glob("*.md")):
        for n, match in enumerate(TINY_BLOCK.finditer(page.read_text()), start=1):
            found.append((f"{page.name}#{n}", match.group(1)))
    return found


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    site = tmp_path / "site"
    pages = {p.parent.relative_to(site).as_posix() for p in site.rglob("index.html")}
    topics = {p.stem for p in (REPO / "docs").glob("*.md")} - {"index"}
    assert topics <= pages  # every topic page is built (and strict mode holds them to the nav)
    results = {p.stem for p in (REPO / "bench" / "results").glob("*.md")}
    assert {f"results/{r}" for r in results} <= pages  # the measurements the pages link to


def test_there_are_tiny_blocks_to_run():
    assert len(tiny_blocks()) >= 3


@pytest.mark.e2e
@pytest.mark.parametrize(("where", "script"), tiny_blocks(), ids=[w for w, _ in tiny_blocks()])
def test_a_tiny_block_runs_as_written(where, script, tiny_release_build, tmp_path):
    assert tiny_release_build.result.returncode == 0
    repo = copy_built(tiny_release_build.repo, tmp_path / "repo")
    runnable = script.replace(".venv/bin", str(BIN))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", runnable], cwd=repo,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{where}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_every_command_says_what_it_does_and_points_to_its_page():
    from pipeline import cli

    parser = cli._parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == set(cli.DOCS)
    for name, command in commands.items():
        assert command.description and "\n" not in command.description, name
        page = command.epilog.removeprefix("docs: ")
        assert (REPO / page).is_file(), (name, page)
