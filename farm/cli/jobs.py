"""Producer commands: run, submit, status, jobs list, results get."""

from __future__ import annotations

import functools
from contextlib import contextmanager
import os
import getpass
import random
import time
from pathlib import Path

import click

from farm import states
from farm.cli import State, cli, emit_json, warn
from farm.errors import InputError
from farm.producer import Plan, check_key, estimate, plan, republish, submit
from farm.spec import JobRequest, parse_float, parse_int, parse_size
from farm.sweep import SpecFile, Sweep, is_axis, load_spec
from farm.sweep import group as sweep_group
from farm.variants import PromptRow, expand_row_wildcards, read_prompt_file
from farm.wildcards import parse_list_file


def job_options(func):
    """The options that describe jobs, shared by ``run`` and ``submit``. Values with a range
    (``1-8``) or a comma list (``1,1.5,2``) are sweep axes, crossed with each other."""
    options = [
        click.option("--variants", "-n", type=int, default=1, show_default=True,
                     help="Images per prompt, with seeds S, S+1, ..."),
        click.option("--seed", type=int, default=None, help="Base seed S (default: drawn at random and recorded)."),
        click.option("--seeds", default=None, help="Seed axis: 0-15 or 1,5,9 (instead of --variants)."),
        click.option("--model", default=None, help="Model name (default: FARM_DEFAULT_MODEL or tiny-sd)."),
        click.option("--recipe", default=None, help="Few-step recipe (default lcm-lora; see `farm recipes list`)."),
        click.option("--steps", default=None, help="Denoising steps, or an axis: 1-8, 2,4,8."),
        click.option("--guidance", default=None, help="Guidance scale, or an axis: 1,1.5,2."),
        click.option("--size", default=None, help="WIDTHxHEIGHT, or an axis: 512x512,768x512."),
        click.option("--negative", default=None, help="Negative prompt (ignored when guidance <= 1)."),
        click.option("--decoder", type=click.Choice(["full", "tiny"]), default=None,
                     help="full: the model's VAE (default); tiny: TAESD, a much cheaper decoder for previews."),
        click.option("--adapter", "adapters", multiple=True, metavar="NAME[:WEIGHT[,WEIGHT...]]",
                     help="A style LoRA on top of the recipe's accelerator; several weights sweep it. Repeatable."),
        click.option("--spec", "spec_file", default=None, help="Sweep spec (.yaml or .json): prompts, axes, wildcards."),
        click.option("--wildcards", "wildcard_dir", default=None,
                     help="Directory of __name__ lists (NAME.txt, one entry per line)."),
        click.option("--wildcard-mode", type=click.Choice(["combinatorial", "random"]), default=None,
                     help="Expand {a|b} and __name__ into every combination, or pick at random (seeded)."),
        click.option("--wildcard-count", type=int, default=None, help="Random mode: prompts per template."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), func)


def _read_text(option: str, file: str) -> str:
    try:
        return Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(option, f"{file}: no such file") from None
    except IsADirectoryError:
        raise InputError(option, f"{file}: is a directory") from None
    except UnicodeDecodeError:
        raise InputError(option, f"{file}: not UTF-8 text") from None
    except OSError as exc:
        raise InputError(option, f"{file}: {exc.strerror}") from None


def _rows(prompt: str | None, file: str | None, spec: SpecFile | None) -> list[PromptRow]:
    given = [name for name, value in (("PROMPT", prompt), ("--file", file), ("--spec", spec)) if value is not None]
    if len(given) > 1:
        raise InputError("prompt", f"give one of a PROMPT, --file or --spec, not {' and '.join(given)}")
    if file is not None:
        return read_prompt_file(file, _read_text("file", file))
    if spec is not None:
        return [PromptRow(JobRequest(prompt=p)) for p in spec.prompts]
    if prompt is None:
        raise InputError("prompt", "missing: give a PROMPT, --file or --spec")
    return [PromptRow(JobRequest(prompt=prompt))]


def _wildcard_lists(directory: str | None, spec: SpecFile | None) -> dict[str, list[str]]:
    lists: dict[str, list[str]] = {}
    for name, entries in ((spec.wildcards.get("lists") if spec else None) or {}).items():
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries) or not entries:
            raise InputError("wildcards", f"list {name!r} must be a non-empty list of text")
        lists[name] = entries
    if directory is not None:
        folder = Path(directory)
        if not folder.is_dir():
            raise InputError("wildcards", f"{directory}: not a directory")
        for path in sorted(folder.glob("*.txt")):
            lists[path.stem] = parse_list_file(path.stem, _read_text("wildcards", str(path)))
    return lists


def _plan(state: State, *, prompt, file, variants, seed, seeds, model, recipe, steps, guidance, size,
          negative, adapters, decoder=None, spec_file=None, wildcard_dir=None, wildcard_mode=None, wildcard_count=None,
          priority=0) -> Plan:
    spec = load_spec(spec_file, _read_text("spec", spec_file)) if spec_file is not None else None
    base = dict(spec.base) if spec else {}
    groups = []

    def scalar_or_axis(name, raw, parse):
        if raw is None:
            return
        if is_axis(name, raw):
            groups.append(sweep_group({name: raw}))
        else:
            base[name] = parse(raw)

    scalar_or_axis("steps", steps, lambda v: parse_int("steps", v, 1, 200))
    scalar_or_axis("guidance", guidance, lambda v: parse_float("guidance", v))
    scalar_or_axis("size", size, parse_size)
    if seeds is not None:
        groups.append(sweep_group({"seed": seeds}))
    if negative is not None:
        base["negative_prompt"] = negative
    if model is not None:
        base["model"] = model
    if recipe is not None:
        base["recipe"] = recipe
    if decoder is not None:
        base["decoder"] = decoder
    stack = list(base.pop("adapters", None) or [])
    for raw in adapters:
        name, _, weights = raw.partition(":")
        if "," in weights:
            groups.append(sweep_group({f"adapter:{name}": weights}))
        else:
            stack.append(raw)
    if "size" in base:
        width, height = base.pop("size") if isinstance(base["size"], tuple) else parse_size(str(base["size"]))
        base["width"], base["height"] = width, height
    if spec and spec.variants is not None and variants == 1:
        variants = spec.variants
    defaults = JobRequest(negative_prompt=base.get("negative_prompt"), seed=None, steps=base.get("steps"),
                          guidance=base.get("guidance"), width=base.get("width"), height=base.get("height"),
                          model=base.get("model"), recipe=base.get("recipe"), adapters=tuple(stack),
                          decoder=base.get("decoder"))
    sweep = (spec.sweep if spec else Sweep()).crossed(Sweep(tuple(groups)))
    rows = _rows(prompt, file, spec)
    settings = dict(spec.wildcards) if spec else {}
    mode = wildcard_mode or settings.get("mode", "combinatorial")
    count = wildcard_count if wildcard_count is not None else parse_int("wildcards", settings.get("count", 1), 1, 100_000)
    rows = expand_row_wildcards(rows, _wildcard_lists(wildcard_dir, spec), mode=mode, count=count,
                                seed=parse_int("wildcards", settings.get("seed", 0), 0, 2**32 - 1))
    if seed is None and base.get("seed") is not None:
        seed = parse_int("seed", base["seed"], 0, 2**32 - 1)
    return plan(rows, defaults, variants=variants, seed=seed, catalog=state.catalog(),
                default_model=state.config.default_model, rng=random.SystemRandom(), priority=priority, sweep=sweep)


def _publisher(state: State):
    from farm.dispatch import Publisher
    from farm.localfarm import ensure_redis

    return Publisher(state.config, ensure_redis(state.config))


@contextmanager
def publishing(state: State):
    """A publisher to the farm's broker (the private Redis is started if it is the broker)."""
    publisher = _publisher(state)
    try:
        yield publisher
    finally:
        publisher.close()


def _sizer(state: State):
    """Micro-batch size per job family and resolution (FARM_MICRO_BATCH_SIZES, FARM_MICRO_BATCH)."""
    return lambda spec: state.config.micro_batch_for(spec.family, spec.width, spec.height)


def _submitter() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return ""


@cli.command("submit")
@click.argument("prompt", required=False)
@job_options
@click.option("--file", "-f", "file", default=None, help="Prompts file: .txt (one per line), .csv (prompt column), .jsonl.")
@click.option("--key", default=None, help="Idempotency key: the same key returns the existing batch.")
@click.option("--priority", type=int, default=0, show_default=True, help="0..9, higher renders first.")
@click.option("--force", is_flag=True, help="Render every job, even those whose image already exists.")
@click.option("--dry-run", is_flag=True, help="Print the expansion and an ETA; write and enqueue nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print {batch, jobs, to_render, reused, ...} as JSON.")
@click.pass_obj
def submit_cmd(state: State, prompt, file, key, priority, force, dry_run, as_json, **options):
    """Validate, expand and enqueue a batch (workers render it: see `farm up`)."""
    check_key(key)
    planned = _plan(state, prompt=prompt, file=file, priority=priority, **options)
    for message in planned.warnings:
        warn(message)
    if dry_run:
        report = estimate(state.ledger, planned, force=force)
        if as_json:
            emit_json(report)
        else:
            click.echo(f"{report['jobs']} jobs ({report['to_render']} to render, {report['reused']} reused); "
                       f"axes {report['axes']}; {report['prompts']} prompt(s), models {', '.join(report['models'])}, "
                       f"recipes {', '.join(report['recipes'])}; ETA {report['eta']} on {report['workers']} worker(s)")
        return
    with publishing(state) as publisher:
        result = submit(state.ledger, publisher, planned, micro_batch=_sizer(state), key=key,
                        submitter=_submitter(), force=force)
    if as_json:
        emit_json(result.as_dict())
    else:
        verb = "submitted" if result.created else "exists (same key)"
        seeds = "" if "seed" in planned.sweep.fields else f", base seed {result.base_seed}"
        click.echo(f"batch {result.batch}: {result.jobs} jobs {verb} ({result.to_render} to render, "
                   f"{result.reused} reused){seeds}")


def _counts(state: State, batch: str) -> dict[str, int]:
    return state.ledger.batch_counts(batch)


@cli.command("status")
@click.argument("batch")
@click.option("--watch", "-w", is_flag=True, help="Follow progress until every job is done.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status_cmd(state: State, batch, watch, as_json):
    """Counts per state of a batch."""
    from farm.progress import watch as follow

    info = state.ledger.get_batch(batch)
    counts = _counts(state, batch)
    if watch:
        counts = follow(lambda: _counts(state, batch), info.job_count, stream=click.get_text_stream("stderr"))
    done = sum(counts[s] for s in states.TERMINAL)
    if as_json:
        emit_json({"batch": batch, "jobs": info.job_count, "done": done, "counts": counts,
                   "created_at": info.created_at.isoformat(), "base_seed": info.base_seed,
                   "model": info.model, "recipe": info.recipe, "priority": info.priority})
    else:
        summary = ", ".join(f"{s} {counts[s]}" for s in states.STATES if counts[s])
        click.echo(f"batch {batch}: {done}/{info.job_count} done ({summary or 'empty'})")


@cli.group("jobs")
def jobs_group():
    """Inspect jobs."""


@jobs_group.command("list")
@click.option("--batch", default=None)
@click.option("--state", "job_state", type=click.Choice(states.STATES), default=None)
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def jobs_list(state: State, batch, job_state, limit, as_json):
    """Jobs with seed, state, per-stage timings (ms) and artifact key."""
    if batch:
        state.ledger.get_batch(batch)
    rows = state.ledger.list_jobs(batch, job_state, limit)
    if as_json:
        emit_json(rows)
        return
    click.echo(f"{'id':>6} {'batch':<10} {'idx':>4} {'seed':>10} {'state':<9} {'total_ms':>9} artifact")
    for r in rows:
        total = r["timings"].get("total")
        click.echo(f"{r['id']:>6} {r['batch']:<10} {r['index']:>4} {r['seed']:>10} {r['state']:<9} "
                   f"{'' if total is None else f'{total:.1f}':>9} {r['artifact'] or ''}")


@cli.group("results")
def results_group():
    """Fetch rendered images."""


@results_group.command("get")
@click.argument("batch")
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False), help="Directory to write into.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def results_get(state: State, batch, out, as_json):
    """Copy a batch's images (verified by sha256) into a directory, with an index.html gallery."""
    paths = _fetch_with_gallery(state, batch, Path(out))
    if as_json:
        emit_json({"batch": batch, "outputs": [str(p) for p in paths], "gallery": str(Path(out) / "index.html")})
    else:
        click.echo(f"{len(paths)} images written to {out} (gallery: {Path(out) / 'index.html'})")


def _fetch_with_gallery(state: State, batch: str, out: Path) -> list[Path]:
    from farm.gallery import gallery_html
    from farm.results import fetch_batch

    fetched = fetch_batch(state.ledger, batch, out, s3_endpoint_url=state.config.s3_endpoint_url)
    rows = {r["id"]: r for r in state.ledger.list_jobs(batch)}
    page = gallery_html(batch, [(path.name, rows[job_id]) for job_id, path in fetched])
    (out / "index.html").write_text(page, encoding="utf-8")
    return [path for _, path in fetched]


@results_group.command("sheet")
@click.argument("batch")
@click.option("--out", "-o", "out", required=True, help="PNG file to write.")
@click.option("--cols", default=None, help="Axis across (default: the first axis that varies).")
@click.option("--rows", default=None, help="Axis down (default: every other varying axis).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def results_sheet(state: State, batch, out, cols, rows, as_json):
    """A contact sheet: the batch as a grid labelled with its axis values."""
    from farm.results import ArtifactReader, sheet_cells

    info = state.ledger.get_batch(batch)
    jobs = state.ledger.list_jobs(batch)
    cells, column_axis, row_axis = sheet_cells(jobs, cols, rows)
    reader = ArtifactReader(state.config.s3_endpoint_url)
    images = [(c, r, reader.read(j["store_url"], j["artifact"], j["sha256"])) for c, r, j in cells]
    from workers.sheets import contact_sheet  # draws with PIL: only the workers package may

    first = cells[0][2]
    title = f"batch {batch}  {first['prompt'][:60]}  {info.model}/{info.recipe}"
    data, grid = contact_sheet(images, title)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_bytes(data)
    report = {"batch": batch, "out": out, "columns": len(grid.columns), "rows": len(grid.rows),
              "column_axis": column_axis, "row_axis": row_axis, "size": list(grid.size)}
    if as_json:
        emit_json(report)
    else:
        click.echo(f"{out}: {len(grid.columns)} x {len(grid.rows)} grid ({column_axis} across, {row_axis} down), "
                   f"{grid.size[0]}x{grid.size[1]} px")


@cli.command("run")
@click.argument("prompt", required=False)
@job_options
@click.option("--file", "-f", "file", default=None, help="Prompts file (.txt, .csv, .jsonl).")
@click.option("--out", "-o", "out", default="out", show_default=True, type=click.Path(file_okay=False),
              help="Directory the images are copied to.")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="CPU workers to start (default 1).")
@click.option("--devices", default=None, help="GPUs to start workers on, e.g. 0,1 (or 'cpu').")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600, show_default=True,
              help="Seconds to wait for the batch.")
@click.option("--json", "as_json", is_flag=True, help="Print {batch, jobs, succeeded, failed, outputs} as JSON.")
@click.pass_obj
def run_cmd(state: State, prompt, file, out, workers, devices, timeout, as_json, **options):
    """Render a batch end to end: start the farm if needed, submit, wait, fetch, stop."""
    from farm import localfarm
    from farm.progress import watch as follow

    planned = _plan(state, prompt=prompt, file=file, **options)  # all validation before anything starts
    device_list = localfarm.parse_devices(devices, workers)
    for message in planned.warnings:
        warn(message)
    state.ledger  # noqa: B018 - open (and migrate) the ledger before starting workers
    started_here = localfarm.supervisor_pid(state.config) is None
    began = time.monotonic()
    try:
        if started_here:
            localfarm.up(state.config, device_list)
        with publishing(state) as publisher:
            result = submit(state.ledger, publisher, planned, micro_batch=_sizer(state), submitter=_submitter())
        stream = click.get_text_stream("stderr")
        counts = follow(lambda: _counts(state, result.batch), result.jobs, stream=stream, timeout=timeout)
        elapsed = time.monotonic() - began
        paths = _fetch_with_gallery(state, result.batch, Path(out))
    finally:
        if started_here:
            localfarm.down(state.config)
    done = sum(counts[s] for s in states.TERMINAL)
    payload = {
        "batch": result.batch, "jobs": result.jobs, "succeeded": counts[states.SUCCEEDED],
        "failed": counts[states.FAILED], "cancelled": counts[states.CANCELLED],
        "unfinished": result.jobs - done, "base_seed": result.base_seed,
        "outputs": [str(p) for p in paths], "elapsed_s": round(elapsed, 3),
    }
    if as_json:
        emit_json(payload)
    else:
        click.echo(f"batch {result.batch}: {payload['succeeded']}/{result.jobs} images in {elapsed:.1f}s -> {out}")
    if payload["failed"] or payload["unfinished"]:
        for row in state.ledger.list_jobs(result.batch, states.FAILED, limit=3):
            warn(f"job {row['id']} failed: {' '.join(str(row['last_error']).split())[:500]}")
        if payload["unfinished"]:
            warn(f"{payload['unfinished']} jobs unfinished after {timeout:g}s")
        return 1
    return 0


@cli.command("replay")
@click.argument("job", type=int)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def replay_cmd(state: State, job, device, as_json):
    """Re-render a job from its record and print the largest pixel difference to the stored image."""
    if device not in ("cpu", "cuda"):
        raise InputError("device", f"{device!r} is not cpu or cuda")
    from workers.quiet import QUIET_ENV

    for key, value in QUIET_ENV.items():  # before transformers is imported, or it prints anyway
        os.environ.setdefault(key, value)
    from workers.replay import replay  # renders: only the workers package imports torch

    report = replay(state.ledger, job, model_cache=state.config.model_cache, device=device,
                    s3_endpoint_url=state.config.s3_endpoint_url)
    if as_json:
        emit_json(report)
    else:
        click.echo(f"job {job}: largest pixel difference {report['max_difference']} "
                   f"({report['differing_values']} of {report['values']} values differ) on {report['device']}")
        for note in report["notes"]:
            warn(note)
