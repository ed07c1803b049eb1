"""`farm recipes list`: the few-step recipes with their ranges and defaults."""

from __future__ import annotations

import click

from farm.cli import cli, emit_json


@cli.group("recipes")
def recipes_group():
    """Few-step recipes: scheduler, steps, guidance, accelerator."""


@recipes_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def recipes_list(as_json):
    """The recipes with their allowed and default steps and guidance."""
    from farm.models.recipes import RECIPES

    if as_json:
        emit_json([r.as_dict() for r in RECIPES.values()])
        return
    for r in RECIPES.values():
        steps = ",".join(map(str, r.step_choices)) if r.step_choices else f"{r.steps[0]}-{r.steps[1]}"
        click.echo(f"{r.name:<10} steps {steps:<12} (default {r.default_steps:<2}) guidance "
                   f"{r.guidance[0]:g}-{r.guidance[1]:g} (default {r.default_guidance:g})  "
                   f"{r.scheduler or 'model default':<30} {r.summary}")
