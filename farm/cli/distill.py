"""`farm distill`: train an LCM-LoRA (or a full LCM model) from a teacher, as a farm job (issue 14)."""

from __future__ import annotations

import click

from farm.cli import State, cli, emit_json
from farm.jobs.training import DEFAULTS, SOLVERS


@cli.command("distill")
@click.option("--teacher", required=True, metavar="MODEL", help="The base model to distil (SD1.5, SDXL or SSD-1B family).")
@click.option("--data", required=True, metavar="DIR|s3://PREFIX|batch:ID",
              help="Captioned images: NAME.png + NAME.txt, or a metadata.jsonl; or a farm batch (its prompts).")
@click.option("--name", required=True, help="Name the result is registered under (an lcm-lora accelerator).")
@click.option("--steps", default=None, metavar="N", help=f"Training steps (default {DEFAULTS['steps']}).")
@click.option("--rank", default=None, metavar="R", help=f"LoRA rank (default {DEFAULTS['rank']}).")
@click.option("--skip", default=None, metavar="K",
              help=f"Skipping step k of the DDIM solver: 1000/k timesteps (default {DEFAULTS['skip']}).")
@click.option("--guidance-range", "guidance_range", default=None, metavar="MIN,MAX",
              help="The teacher's guidance scale w, drawn per example (default 2,8).")
@click.option("--solver", type=click.Choice(SOLVERS), default=None, help="ODE solver used in training.")
@click.option("--batch-size", "batch_size", default=None, metavar="B",
              help=f"Examples per step (default {DEFAULTS['batch_size']}).")
@click.option("--lr", default=None, metavar="LR", help=f"Learning rate (default {DEFAULTS['lr']:g}).")
@click.option("--checkpoint-every", "checkpoint_every", default=None, metavar="N",
              help=f"Steps between checkpoints in the store (default {DEFAULTS['checkpoint_every']}).")
@click.option("--eval-samples", "eval_samples", default=None, metavar="N",
              help=f"Samples per sampler and step count in the final evaluation (default {DEFAULTS['eval_samples']}).")
@click.option("--resolution", default=None, metavar="PX",
              help="Images are resized (shorter side) and centre-cropped to PX x PX (default: the teacher's native size).")
@click.option("--gradient-checkpointing", "gradient_checkpointing", is_flag=True, default=None,
              help="Recompute activations in the backward pass: less GPU memory, slower steps (SDXL on one GPU).")
@click.option("--full", is_flag=True, help="Distil every UNet weight into a model of kind lcm, not a LoRA.")
@click.option("--seed", type=int, default=None, help="Training seed (default: drawn and recorded).")
@click.option("--priority", type=int, default=0, show_default=True, help="0..9, higher runs first.")
@click.option("--json", "as_json", is_flag=True, help="Print {batch, job, name, examples} as JSON.")
@click.pass_obj
def distill_cmd(state: State, teacher, data, name, as_json, priority, seed, full, **settings):
    """Distil TEACHER into an LCM-LoRA on the farm: one training job that a worker runs to the
    end (progress in `farm status --watch`, checkpoints in the store, resumed after a crash), then
    evaluates against the teacher and registers as an accelerator for the lcm-lora recipe."""
    farm = state.farm
    if state.remote:  # FARM_URL: the server reads the dataset (batch:ID or an allowed s3:// prefix)
        made = farm.distill_request(teacher, data, name, seed=seed, priority=priority, full=full or None,
                                    **{k: v for k, v in settings.items() if v is not None})
        emit_json(made) if as_json else click.echo(f"batch {made['batch']}: distilling {teacher} into {name} "
                                                   f"({made['steps']} steps on {made['examples']} examples)")
        return
    planned = farm.plan_distill(teacher, data, name, seed=seed, priority=priority, full=full,
                                **{k: v for k, v in settings.items() if v is not None})
    result = farm.submit_plan(planned, force=True)
    spec = planned.specs[0]
    examples = (spec.training or {})["data"]["examples"]
    if as_json:
        emit_json({"batch": result.batch, "job": result.job_ids[0], "name": name, "examples": examples,
                   "steps": spec.steps, "seed": spec.seed})
    else:
        click.echo(f"batch {result.batch}: distilling {teacher} into {name} ({spec.steps} steps on {examples} "
                   f"examples, seed {spec.seed}); follow it with `farm status --watch {result.batch}`")
