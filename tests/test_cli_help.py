"""Every command explains itself and speaks JSON: `--help` text for each, and `--json` on every
command a script might read (all but `farm worker`, which runs workers in the foreground)."""

import click
import pytest
from click.testing import CliRunner

from farm.cli import COMMANDS as LAZY
from farm.cli import cli

FOREGROUND = {"worker", "serve", "dispatch"}  # long-running processes, not reports


def leaves(command: click.Command, path: tuple[str, ...] = ()):
    if isinstance(command, click.Group):
        if path:
            yield path, command  # a group is a command too (`farm workers` lists the fleet)
        ctx = click.Context(command)
        for name in command.list_commands(ctx):  # the top group imports each command's module here
            yield from leaves(command.get_command(ctx, name), path + (name,))
    else:
        yield path, command


COMMANDS = list(leaves(cli))


def test_the_lazy_command_table_names_what_each_module_registers():
    import importlib
    import pkgutil

    import farm.cli as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "__main__":  # `python -m farm.cli`: it runs the CLI
            importlib.import_module(f"farm.cli.{info.name}")
    assert set(cli.commands) == set(LAZY)
    assert all(cli.commands[name].callback.__module__ == f"farm.cli.{module}" for name, module in LAZY.items())


def test_a_command_imports_only_its_own_module():
    import subprocess
    import sys

    code = ("import sys; from farm.cli import cli; import click; cli.get_command(click.Context(cli), 'status'); "
            "print(sorted(m for m in sys.modules if m.startswith('farm.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['farm.cli.status']"


def test_the_walk_sees_every_command_group():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"submit", "run", "status", "jobs list", "results get", "workers", "models add", "db current"} <= names


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_has_help(path, command):
    assert (command.help or "").strip(), f"farm {' '.join(path)} has no help text"
    result = CliRunner().invoke(cli, [*path, "--help"])
    first_line = " ".join(command.help.strip().splitlines()[0].split())
    assert result.exit_code == 0 and first_line in " ".join(result.output.split())  # click re-wraps it


@pytest.mark.parametrize("path,command", [(p, c) for p, c in COMMANDS if not isinstance(c, click.Group)
                                          and " ".join(p) not in FOREGROUND], ids=lambda v: " ".join(v)
                         if isinstance(v, tuple) else "")
def test_every_command_that_reports_has_json(path, command):
    options = {opt for p in command.params for opt in getattr(p, "opts", [])}
    assert "--json" in options, f"farm {' '.join(path)} has no --json"
