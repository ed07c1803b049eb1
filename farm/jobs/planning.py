"""From what a user typed (a prompt, a prompts file or a spec file, plus job options) to a
validated ``Plan``: the one place the CLI and the Python API turn options into jobs.

Pure apart from reading the files it is given: nothing here touches the ledger, the broker or the
store, so bad input of any kind raises ``InputError`` before anything is written.
"""

from __future__ import annotations

import random
from dataclasses import fields
from pathlib import Path

from farm.errors import InputError
from farm.jobs.kinds import INPUT_FIELDS
from farm.jobs.plan import Plan, plan
from farm.jobs.spec import Catalog, JobRequest
from farm.jobs.sweep import SpecFile, Sweep, is_axis, load_spec, spec_from_mapping
from farm.jobs.sweep import group as sweep_group
from farm.jobs.values import parse_float, parse_int, parse_size
from farm.jobs.variants import PromptRow, expand_row_wildcards, read_prompt_file
from farm.jobs.wildcards import parse_list_file

# request fields that the defaults never carry: the prompt comes from the rows, the seed is the
# base seed (or a seed axis), and adapters are stacked from the spec and the options
_NOT_DEFAULTS = ("prompt", "seed", "adapters")


def read_text(option: str, file: str) -> str:
    """A UTF-8 file's text, or an ``InputError`` naming ``option`` and saying what is wrong."""
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


def _rows(prompt: str | None, file: str | None, spec: SpecFile | None, lent: bool = False) -> list[PromptRow]:
    """``lent``: the jobs start from earlier jobs' images, which lend their prompts when none is given."""
    given = [name for name, value in (("PROMPT", prompt), ("--file", file), ("--spec", spec)) if value is not None]
    if len(given) > 1:
        raise InputError("prompt", f"give one of a PROMPT, --file or --spec, not {' and '.join(given)}")
    if file is not None:
        return read_prompt_file(str(file), read_text("file", str(file)))
    if spec is not None:
        return [PromptRow(JobRequest(prompt=p)) for p in spec.prompts]
    if prompt is None and lent:
        return [PromptRow(JobRequest())]
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
            lists[path.stem] = parse_list_file(path.stem, read_text("wildcards", str(path)))
    return lists


def _adapter_options(adapters) -> list[str]:
    """``--adapter`` values as ``NAME[:WEIGHT[,WEIGHT...]]`` text; a script may also pass
    (name, weight) pairs, or one string for one adapter."""
    if isinstance(adapters, str):
        adapters = (adapters,)
    out = []
    for raw in adapters or ():
        if isinstance(raw, (tuple, list)) and len(raw) == 2:
            raw = f"{raw[0]}:{raw[1]}"
        if not isinstance(raw, str):
            raise InputError("adapter", f"expected NAME[:WEIGHT], got {raw!r}")
        out.append(raw)
    return out


def plan_submission(catalog: Catalog, default_model: str, *, prompt: str | None = None,
                    file: str | Path | None = None, spec_file: str | Path | None = None, variants: int = 1,
                    seed: int | None = None, seeds=None, model: str | None = None, recipe: str | None = None,
                    steps=None, guidance=None, size=None, negative: str | None = None, adapters=(),
                    decoder: str | None = None, wildcard_dir: str | Path | None = None,
                    wildcard_mode: str | None = None, wildcard_count: int | None = None, priority: int = 0,
                    rng: random.Random | None = None, from_batch: str | None = None, inputs=None,
                    spec_data: dict | None = None, **job_fields) -> Plan:
    """Validate and expand one submission into a ``Plan`` (what ``farm submit`` would write).

    Give exactly one source of prompts: ``prompt``, ``file`` (.txt, .csv or .jsonl) or
    ``spec_file`` (.yaml or .json, with axes and wildcards) or ``spec_data`` (the same fields as a
    mapping: an API request's body). ``steps``, ``guidance`` and ``size``
    take a value or an axis (``"1-8"``, ``"1,1.5,2"``, a list); ``seeds`` is a seed axis instead of
    ``variants``; an adapter with several weights (``"toy:0.2,0.8"``) sweeps them. Options given
    here beat the spec file's fields. ``job_fields`` sets any other ``JobRequest`` field by name
    (fields added after this function was written need no change here). ``rng`` draws the base
    seed when none is given (default: the system's random source).

    Images (issue 13): ``init_image``, ``mask_image`` and ``control_image`` take a path, an s3:// URI
    or ``job:ID`` (a list of them is an axis), read by ``inputs`` (a ``farm.intake.images.InputReader``);
    ``from_batch`` makes every succeeded image of that batch an init image (the outermost axis). A
    job that starts from ``job:ID`` takes that job's prompt when none is given.

    Raises ``InputError`` (``field: what is wrong``) for any bad input; reads only the files named.
    """
    request_fields = {f.name for f in fields(JobRequest)}
    unknown = sorted(set(job_fields) - (request_fields - set(_NOT_DEFAULTS)))
    if unknown:
        raise TypeError(f"plan_submission() got an unexpected keyword argument {unknown[0]!r}")
    spec = load_spec(str(spec_file), read_text("spec", str(spec_file))) if spec_file is not None else None
    if spec_data is not None:
        if spec is not None:
            raise InputError("spec", "give a spec file or a spec's fields, not both")
        spec = spec_from_mapping("request", spec_data)
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
    scalar_or_axis("size", size, lambda v: parse_size(str(v)))
    if seeds is not None:
        groups.append(sweep_group({"seed": seeds}))
    for name, value in list(job_fields.items()):  # a list or a range of a later job field is an axis too
        if name in INPUT_FIELDS and isinstance(value, (list, tuple)) and len(value) <= 1:
            value = job_fields[name] = value[0] if value else None  # a repeatable CLI option given once, or not
        if value is not None and is_axis(name, value):
            groups.append(sweep_group({name: value}))
            job_fields[name] = None
    for name, value in {"negative_prompt": negative, "model": model, "recipe": recipe, "decoder": decoder,
                        **job_fields}.items():
        if value is not None:
            base[name] = value
    if from_batch is not None:  # issue 13: each succeeded image of the batch, one after another
        if base.get("init_image") is not None or "init_image" in [n for g in groups for n, _ in g]:
            raise InputError("from_batch", "give --from-batch or --init-image, not both")
        if inputs is None:
            raise InputError("from_batch", "starting from a batch needs the farm's ledger")
        groups.insert(0, sweep_group({"init_image": inputs.batch_sources(from_batch)}))
    stack = list(base.pop("adapters", None) or [])
    for raw in _adapter_options(adapters):
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
    # every request field the submission fixes, by name: a new job field flows through untouched
    defaults = JobRequest(adapters=tuple(stack), **{
        name: value for name, value in base.items() if name in request_fields and name not in _NOT_DEFAULTS})
    sweep = (spec.sweep if spec else Sweep()).crossed(Sweep(tuple(groups)))
    inits = [base.get("init_image")] + [v for g in sweep.groups for n, values in g if n == "init_image" for v in values]
    lent = any(isinstance(init, str) and init.startswith("job:") for init in inits)  # from_batch's are too
    rows = _rows(prompt, None if file is None else str(file), spec, lent)
    settings = dict(spec.wildcards) if spec else {}
    mode = wildcard_mode or settings.get("mode", "combinatorial")
    count = wildcard_count if wildcard_count is not None else parse_int("wildcards", settings.get("count", 1), 1, 100_000)
    rows = expand_row_wildcards(rows, _wildcard_lists(None if wildcard_dir is None else str(wildcard_dir), spec),
                                mode=mode, count=count,
                                seed=parse_int("wildcards", settings.get("seed", 0), 0, 2**32 - 1))
    if seed is None and base.get("seed") is not None:
        seed = parse_int("seed", base["seed"], 0, 2**32 - 1)
    return plan(rows, defaults, variants=variants, seed=seed, catalog=catalog, default_model=default_model,
                rng=rng or random.SystemRandom(), priority=priority, sweep=sweep, inputs=inputs)
