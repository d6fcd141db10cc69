"""The user docs say what the code does: docs/cli.md lists every command and every option that
`searchlite COMMAND --help` shows, and nothing that is gone; the README keeps its Quick start (CI
runs its second command verbatim) and stays short."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI_MD = ROOT / "docs" / "cli.md"
QUICK_START = (
    "python3.11 -m venv .venv && .venv/bin/pip install -e '.[samples]' && .venv/bin/python scripts/make_sample_photos.py samples"
    " && .venv/bin/searchlite index samples && .venv/bin/searchlite query \"a cat\"\n"
    "python3.11 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest\n"
)
# an option's line in click's help: "  -k, --top K   ...", "  --shared-fs / --no-shared-fs   ..."
OPTION_LINE = re.compile(r"^\s{2}(-[\w-]+(?:,\s*-[\w-]+)*(?:\s*/\s*-[\w-]+)?)")
FLAG = re.compile(r"(?<![\w-])(--?[a-zA-Z0-9][\w-]*)")


def help_text(*command: str) -> str:
    env = dict(os.environ, COLUMNS="200", TERM="dumb", NO_COLOR="1")
    out = subprocess.run([sys.executable, "-m", "searchlite", *command, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def section(text: str, title: str) -> list[str]:
    """The lines of a help section ("Options:", "Commands:") up to the next blank line."""
    lines = text.splitlines()
    if f"{title}:" not in lines:
        return []
    start = lines.index(f"{title}:") + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def subcommands(text: str) -> list[str]:
    return [line.split()[0] for line in section(text, "Commands") if re.match(r"^\s{2}\w", line)]


def options(text: str) -> set[str]:
    found = set()
    for line in section(text, "Options"):
        match = OPTION_LINE.match(line)
        if match:
            found.update(FLAG.findall(match.group(1)))
    return found - {"--help"}


@pytest.fixture(scope="module")
def cli_help() -> dict[str, set[str]]:
    """Every command, as typed after `searchlite` ("probe train"), with the options its --help shows."""
    top = help_text()
    with ThreadPoolExecutor(4) as pool:
        texts = dict(zip(subcommands(top), pool.map(help_text, subcommands(top))))
        groups = {name: subcommands(text) for name, text in texts.items() if subcommands(text)}
        for name, subs in groups.items():  # a group (probe) is documented as its commands
            del texts[name]
            texts.update(zip([f"{name} {sub}" for sub in subs], pool.map(lambda sub: help_text(name, sub), subs)))
    return {"": options(top), **{command: options(text) for command, text in texts.items()}}


def documented() -> dict[str, set[str]]:
    """docs/cli.md's commands (a "## searchlite COMMAND" heading each) with the options of their table
    (a row per option, starting with its flags in backquotes); "" is the global options' table."""
    tables: dict[str, set[str]] = {}
    current = None
    for line in CLI_MD.read_text().splitlines():
        heading = re.match(r"^##\s+`?searchlite(?:\s+([a-z][a-z ]*?))?`?\s*$", line)
        if heading:
            current = (heading.group(1) or "").strip()
            tables.setdefault(current, set())
        elif line.startswith("#"):
            current = None
        elif current is not None and line.startswith("| `-"):
            first_cell = line.split("|")[1]
            tables[current].update(FLAG.findall(first_cell))
    return tables


def test_cli_md_lists_every_command(cli_help: dict[str, set[str]]) -> None:
    docs = documented()
    assert sorted(set(cli_help) - set(docs)) == [], "commands missing from docs/cli.md"
    assert sorted(set(docs) - set(cli_help)) == [], "docs/cli.md documents commands that are gone"


def test_cli_md_lists_every_option_of_each_command(cli_help: dict[str, set[str]]) -> None:
    docs = documented()
    for command, flags in cli_help.items():
        shown = docs.get(command, set())
        assert sorted(flags - shown) == [], f"options of 'searchlite {command}' missing from its table in docs/cli.md"
        assert sorted(shown - flags) == [], f"docs/cli.md lists options 'searchlite {command}' no longer has"


def test_every_flag_cli_md_mentions_exists(cli_help: dict[str, set[str]]) -> None:
    """Prose too: a flag named anywhere in docs/cli.md is an option of some command."""
    known = set().union(*cli_help.values()) | {"--help"}
    text = re.sub(r"```.*?```", "", CLI_MD.read_text(), flags=re.S)  # examples may pipe to other tools
    mentioned = {flag for span in re.findall(r"`([^`]*)`", text) for flag in FLAG.findall(span) if flag.startswith("--")}
    assert sorted(mentioned - known) == []


def test_readme_keeps_its_quick_start_and_stays_short() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"## Quick start\n\n```bash\n{QUICK_START}```\n" in readme
    assert len(readme.splitlines()) <= 350


def test_docs_links_resolve() -> None:
    """Relative links between the README and docs/ point at files that exist."""
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"^[a-z]+:", target) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_library_md_names_the_whole_public_api() -> None:
    import searchlite

    text = (ROOT / "docs" / "library.md").read_text()
    assert sorted(name for name in searchlite.__all__ if f"`{name}`" not in text) == []
