"""Every `farm ...` command the README and docs/ show exists, and takes the options shown."""

import re
from pathlib import Path

import click
import pytest

from farm.cli import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WORD = re.compile(r"^[a-z][a-z0-9-]*$")


def shown_commands(text: str) -> list[str]:
    """The text after ``farm`` of every command line in a fenced block and of every inline code
    span that starts with ``farm ``."""
    found = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            code = re.sub(r"^\s*(\$\s+)?(\.venv/bin/)?", "", line)
            if code.startswith("farm "):
                found.append(code.split("  #")[0].split(" # ")[0][len("farm "):])
        else:
            found += [span[len("farm "):] for span in re.findall(r"`(farm [^`]+)`", line)]
    return found


def resolve(words: list[str]) -> list[click.Command]:
    """The commands a path of words names (``models|adapters`` alternatives each), or [] if one
    of them is not a command."""
    commands = [cli]
    for word in words:
        nxt = []
        for command in commands:
            if not isinstance(command, click.Group):
                return commands  # the rest are arguments
            for alternative in word.split("|"):
                sub = command.get_command(click.Context(command), alternative)
                if sub is None:
                    return []
                nxt.append(sub)
        commands = nxt
    return commands


def check(shown: str) -> list[str]:
    tokens = re.split(r"\s+", shown.replace("\\|", "|").strip())
    path = []
    for token in tokens:
        if not re.match(r"^[a-z][a-z0-9-]*(\|[a-z][a-z0-9-]*)*$", token):
            break
        path.append(token)
    commands = resolve(path) if path else [cli]
    if not commands:
        return [f"`farm {shown}`: no such command"]
    problems = []
    for command in commands:
        options = {"--help", "-h"} | {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for option in re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", shown):
            if option not in options:
                problems.append(f"`farm {shown}`: {command.name} has no {option}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_farm_command_shown_exists_with_its_options(page):
    shown = shown_commands(page.read_text())
    problems = [p for s in shown for p in check(s)]
    assert problems == []


def test_the_pages_show_commands_and_the_check_can_fail():
    assert sum(len(shown_commands(p.read_text())) for p in PAGES) > 50
    assert check("submit --variants 4 --json") == []
    assert check("models add x --source s --family sd15") == []
    assert check("submit --no-such-option 1") != []
    assert check("no-such-group list") != []
    assert check("models frobnicate") != []
    assert check("models|adapters list --json") == []
    assert check("models|nothing list") != []


def test_the_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, page.name
