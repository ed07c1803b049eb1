"""The ``farm`` command line (click): producer and admin.

Every error a user can cause ends as one line, ``error: <message>``, on stderr with a stable exit
status (2: bad input or usage, 1: jobs failed or an internal error, 3: broker/database/store
failure, 130: interrupted), never a traceback. ``--json`` prints machine-readable results on
stdout; progress and warnings go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click

from farm.config import Config, load_config

if TYPE_CHECKING:
    from farm.api import Farm
from farm.errors import FarmError


@dataclass
class State:
    """What the commands share: the configuration (from FARM_* variables) and the library API
    over it (``farm.api.Farm``), opened on first use and closed when the command ends."""

    config: Config
    _farm: Farm | None = field(default=None, repr=False)

    @property
    def remote(self) -> bool:
        """FARM_URL and FARM_API_KEY name a farm's HTTP API: the commands go through it."""
        return bool(os.environ.get("FARM_URL") and os.environ.get("FARM_API_KEY"))

    @property
    def farm(self) -> Farm:
        if self._farm is None:
            from farm.api import Farm

            if self.remote:
                self._farm = Farm.remote(os.environ["FARM_URL"], os.environ["FARM_API_KEY"])
            else:
                self._farm = Farm(self.config)
        return self._farm

    def catalog(self):
        """Built-in plus registered models and adapters (a farm home without a ledger yet has
        registered nothing, and reading it creates nothing)."""
        return self.farm.catalog()

    def close(self) -> None:
        if self._farm is not None:
            self._farm.close()


def emit_json(payload) -> None:
    click.echo(json.dumps(payload, indent=None, sort_keys=False, default=str))


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


# command -> the module of farm/cli that defines it, imported when the command is asked for: a
# command pays for its own imports only (`farm status` does not import the distillation's).
# tests/test_cli_help.py checks this table against what the modules register.
COMMANDS = {
    "adapters": "adapters", "batches": "batches", "cancel": "batches", "retry": "batches", "pause": "batches",
    "resume": "batches", "controlnets": "controlnets", "db": "db", "distill": "distill", "embeddings": "embeddings",
    "jobs": "jobs", "reap": "maintenance", "reconcile": "maintenance", "dispatch": "maintenance",
    "models": "models", "recipes": "recipes",
    "replay": "replay", "results": "results", "run": "run", "stats": "stats", "status": "status",
    "submit": "submit", "workers": "workers", "worker": "workers", "up": "workers", "down": "workers",
    "serve": "serve", "keys": "keys", "tenants": "keys", "webhooks": "webhooks", "motion": "motion",
    "fleet": "fleet",
}


class FarmGroup(click.Group):
    """A click group that turns every error into one line and a stable exit status, and imports a
    command's module only when that command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            import importlib

            importlib.import_module(f"farm.cli.{COMMANDS[cmd_name]}")
        return self.commands.get(cmd_name)

    def main(self, args=None, prog_name=None, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name or "farm", standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(2)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "farm"
            click.echo(f"error: {exc.format_message()} (see `{command} --help`)", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt):
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except FarmError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - a bug: still one line, details on request
            if os.environ.get("FARM_DEBUG"):
                raise
            click.echo(f"error: internal error: {type(exc).__name__}: {exc} (set FARM_DEBUG=1 for a traceback)",
                       err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=FarmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="farm", prog_name="farm")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """A render farm for few-step diffusion (LCM-LoRA, Turbo, Lightning, Hyper-SD).

    Configuration comes from FARM_* environment variables: FARM_HOME (default ./.farm),
    FARM_DATABASE_URL, FARM_BROKER_URL (default: a private Redis under the farm home),
    FARM_STORE_URL (file://... or s3://bucket/prefix), FARM_S3_ENDPOINT_URL, FARM_MODEL_CACHE.
    """
    state = State(load_config())
    ctx.obj = state
    ctx.call_on_close(state.close)


def main() -> None:
    cli.main()
