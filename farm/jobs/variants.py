"""Expanding a submission into job requests, and reading prompt files. Pure: text in, requests out.

A prompt with ``variants=N`` and base seed ``S`` becomes N jobs with seeds S, S+1, ..., S+N-1.
A prompt file gives one row per prompt; a row may override any job field (and its own variants
or base seed) in CSV and JSON Lines.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, fields, replace

from farm.errors import InputError
from farm.jobs.spec import MAX_SEED, JobRequest, parse_adapter
from farm.jobs.sweep import Sweep
from farm.jobs.values import parse_int, parse_size
from farm.jobs.wildcards import expand_wildcards

MAX_VARIANTS = 10_000
MAX_JOBS = 100_000
ROW_FIELDS = {f.name for f in fields(JobRequest)} | {"variants", "size", "negative", "adapter"}
FILE_FORMATS = ("txt", "csv", "jsonl")


@dataclass(frozen=True)
class PromptRow:
    """One prompt and its overrides, as read from the command line or a file."""

    request: JobRequest
    variants: int | None = None
    where: str = ""  # "prompts.csv:4" for messages


def detect_format(filename: str) -> str:
    lower = filename.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lower.endswith((".txt", ".prompts")) or "." not in lower.rsplit("/", 1)[-1]:
        return "txt"
    raise InputError("file", f"{filename}: unknown format (use .txt, .csv or .jsonl)")


def _row_from_mapping(values: dict, where: str) -> PromptRow:
    unknown = sorted(k for k in values if k not in ROW_FIELDS)
    if unknown:
        raise InputError(f"{where}", f"unknown field {unknown[0]!r} (fields: {', '.join(sorted(ROW_FIELDS))})")
    values = {k: v for k, v in values.items() if v is not None and v != ""}
    if "negative" in values:
        values["negative_prompt"] = values.pop("negative")
    if "adapter" in values:
        values["adapters"] = values.pop("adapter")
    if "size" in values:
        try:
            values["width"], values["height"] = parse_size(str(values.pop("size")))
        except InputError as exc:
            raise InputError(where, str(exc)) from None
    adapters = values.get("adapters")
    if isinstance(adapters, str):  # CSV: "toy:0.8 ink:0.3" or "toy:0.8,ink:0.3"
        values["adapters"] = tuple(a for a in adapters.replace(",", " ").split() if a)
    elif isinstance(adapters, list):
        values["adapters"] = tuple(tuple(a) if isinstance(a, list) else a for a in adapters)
    variants = values.pop("variants", None)
    if variants is not None:
        try:
            variants = parse_int("variants", variants, 1, MAX_VARIANTS)
        except InputError as exc:
            raise InputError(where, str(exc)) from None
    if "prompt" not in values:
        raise InputError(where, "prompt: missing")
    return PromptRow(JobRequest(**values), variants, where)


def read_prompt_file(filename: str, text: str, fmt: str | None = None) -> list[PromptRow]:
    """Rows of a prompt file. Blank lines and '#' comment lines of text files are skipped."""
    fmt = fmt or detect_format(filename)
    name = filename.rsplit("/", 1)[-1]
    rows: list[PromptRow] = []
    if fmt == "txt":
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                rows.append(PromptRow(JobRequest(prompt=stripped), None, f"{name}:{number}"))
    elif fmt == "csv":
        # newline="" lets the csv module see a lone carriage return as the line break it is
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            header = reader.fieldnames  # reading the header can already fail on malformed input
        except csv.Error as exc:
            raise InputError("file", f"{name}: malformed CSV ({exc})") from None
        if not header or "prompt" not in [f.strip() for f in header]:
            raise InputError("file", f"{name}: a CSV prompt file needs a header with a 'prompt' column")
        try:
            for number, record in enumerate(reader, 2):
                if None in record:
                    raise InputError(f"{name}:{number}", "more values than header columns")
                record = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in record.items()}
                if not any(record.values()):
                    continue
                rows.append(_row_from_mapping(record, f"{name}:{number}"))
        except csv.Error as exc:
            raise InputError("file", f"{name}: malformed CSV ({exc})") from None
    elif fmt == "jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{name}:{number}", f"invalid JSON ({exc.msg})") from None
            if isinstance(record, str):
                record = {"prompt": record}
            if not isinstance(record, dict):
                raise InputError(f"{name}:{number}", "expected a JSON object or string per line")
            rows.append(_row_from_mapping(record, f"{name}:{number}"))
    else:
        raise InputError("file", f"unknown format {fmt!r} (use {', '.join(FILE_FORMATS)})")
    if not rows:
        raise InputError("file", f"{name} holds no prompts")
    return rows


def _apply_cell(merged: dict, cell: dict) -> tuple[dict, dict]:
    """The request fields with one sweep cell applied, and the cell as recorded axis values."""
    request, axes = dict(merged), {}
    for name, value in cell.items():
        if name == "size":
            request["width"], request["height"] = value
            axes["size"] = f"{value[0]}x{value[1]}"
        elif name.startswith("adapter:"):
            adapter = name.split(":", 1)[1]
            stack = [parse_adapter(a) for a in (request.get("adapters") or ())]
            stack = [(n, w) for n, w in stack if n != adapter] + [(adapter, value)]
            request["adapters"] = tuple(stack)
            axes[name] = value
        else:
            request[name] = value
            axes[name] = value
    return request, axes


def expand(rows: list[PromptRow], defaults: JobRequest, variants: int, base_seed: int,
           sweep: Sweep = Sweep()) -> list[tuple[str, JobRequest, dict]]:
    """Each row crossed with every cell of the sweep; without a seed axis, each row gets
    ``variants`` consecutive seeds as the innermost axis. Row fields beat defaults, axes beat both.

    Returns (where, request, axes) triples: where points validation errors at their file row,
    axes records the cell's values for contact sheets.
    """
    variants = parse_int("variants", variants, 1, MAX_VARIANTS)
    seed_swept = "seed" in sweep.fields
    if seed_swept and variants > 1:
        raise InputError("variants", "give --variants or a seed axis (--seeds), not both")
    cells = sweep.cells()
    out: list[tuple[str, JobRequest, dict]] = []
    for row in rows:
        merged = {f.name: getattr(defaults, f.name) for f in fields(JobRequest)}
        for f in fields(JobRequest):
            value = getattr(row.request, f.name)
            if value is not None and value != ():
                merged[f.name] = value
        row_cells = cells
        if not seed_swept:
            count = row.variants or variants
            try:
                first = parse_int("seed", merged["seed"] if merged["seed"] is not None else base_seed, 0, MAX_SEED)
                if first + count - 1 > MAX_SEED:
                    raise InputError("seed", f"seeds {first}..{first + count - 1} run past {MAX_SEED}")
            except InputError as exc:
                raise (InputError(row.where, str(exc)) if row.where else exc) from None
            row_cells = [{**cell, "seed": first + i} for cell in cells for i in range(count)]
        for cell in row_cells:
            request, axes = _apply_cell(merged, cell)
            if len(rows) > 1:
                axes = {"prompt": request["prompt"], **axes}
            out.append((row.where, JobRequest(**request), axes))
            if len(out) > MAX_JOBS:
                raise InputError("variants", f"the submission expands to more than {MAX_JOBS} jobs")
    return out


def expand_row_wildcards(rows: list[PromptRow], lists: dict | None, *, mode: str = "combinatorial",
                         count: int = 1, seed: int = 0) -> list[PromptRow]:
    """Rows whose prompt holds wildcards become one row per expanded prompt (same overrides)."""
    out = []
    for row in rows:
        prompt = row.request.prompt
        if not isinstance(prompt, str):
            out.append(row)
            continue
        for text in expand_wildcards(prompt, lists, mode=mode, count=count, seed=seed):
            out.append(replace(row, request=replace(row.request, prompt=text)))
    return out
