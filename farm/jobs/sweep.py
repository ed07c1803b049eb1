"""Sweeps: axes over job fields, zipped within a group and crossed between groups. Pure.

A spec file (YAML or JSON) looks like::

    prompt: "a {red|grey} fox in snow"     # or prompts: [...]; wildcards expand into prompts
    model: tiny-sd
    seeds: 0-3                              # an axis: range "A-B", list, or "a,b,c"
    steps: 1-8                              # every top-level list or range is its own axis
    axes:                                   # groups: fields inside one group are zipped
      - {guidance: [1.0, 1.5], size: [64x64, 96x96]}
    adapter:tiny-sd-toy: [0.2, 0.5, 0.8]    # an axis over one LoRA's weight
    wildcards: {mode: random, count: 4, seed: 7, lists: {animal: [fox, hare]}}

Cells are enumerated like nested loops in the order the axes are written (the last varies
fastest), so the same spec always expands to the same jobs in the same order.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, fields

from farm.errors import InputError
from farm.jobs.spec import JobRequest
from farm.jobs.values import parse_float, parse_int, parse_size

INT_AXES = ("seed", "steps", "width", "height", "mask_blur")
FLOAT_AXES = ("guidance", "strength", "control_scale", "upscale")  # issue 13's image settings sweep too
# every other job field is text (a new job field is a sweep axis and a spec-file field at once)
TEXT_AXES = tuple(f.name for f in fields(JobRequest) if f.name not in INT_AXES + FLOAT_AXES + ("adapters",))
ALIASES = {"seeds": "seed", "negative": "negative_prompt", "prompts": "prompt", "mask": "mask_image",
           "scale": "upscale"}
MAX_CELLS = 100_000


@dataclass(frozen=True)
class Sweep:
    """Axis groups: each group is a tuple of (field, values) with values of equal length."""

    groups: tuple[tuple[tuple[str, tuple], ...], ...] = ()

    @property
    def fields(self) -> list[str]:
        return [name for group in self.groups for name, _ in group]

    def cells(self) -> list[dict]:
        """Every combination: zipped within a group, crossed between groups."""
        per_group = [[dict(zip([n for n, _ in g], values)) for values in zip(*(v for _, v in g))] for g in self.groups]
        total = 1
        for options in per_group:
            total *= len(options)
        if total > MAX_CELLS:
            raise InputError("sweep", f"the axes make {total} cells; the limit is {MAX_CELLS}")
        return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*per_group)]

    def summary(self) -> str:
        return " x ".join(
            "(" + " | ".join(f"{n}:{len(v)}" for n, v in g) + ")" if len(g) > 1 else f"{g[0][0]}:{len(g[0][1])}"
            for g in self.groups) or "no axes"

    def crossed(self, other: "Sweep") -> "Sweep":
        clash = set(self.fields) & set(other.fields)
        if clash:
            raise InputError(sorted(clash)[0], "is swept twice")
        return Sweep(self.groups + other.groups)


def canonical_field(name: str) -> str:
    name = ALIASES.get(name, name)
    if name.startswith("adapter:"):
        from farm.models.names import check_name

        check_name("adapter", name.split(":", 1)[1])
        return name
    if name in INT_AXES + FLOAT_AXES + TEXT_AXES + ("size",):
        return name
    raise InputError("sweep", f"cannot sweep {name!r} (axes: seed, steps, guidance, size, width, height, "
                              f"{', '.join(TEXT_AXES)}, adapter:NAME)")


def _range(field_name: str, text: str) -> list[int]:
    lo_text, _, hi_text = text.partition("-")
    lo, hi = parse_int(field_name, lo_text, 0, 2**32 - 1), parse_int(field_name, hi_text, 0, 2**32 - 1)
    if hi < lo:
        raise InputError(field_name, f"range {text!r} runs backwards")
    if hi - lo >= MAX_CELLS:
        raise InputError(field_name, f"range {text!r} has more than {MAX_CELLS} values")
    return list(range(lo, hi + 1))


def axis_values(field_name: str, raw) -> tuple:
    """Values of one axis from a list, a range "A-B" (integers) or a comma list "a,b,c"."""
    if isinstance(raw, str):
        text = raw.strip()
        if field_name in INT_AXES and "-" in text.lstrip("-") and "," not in text:
            return tuple(_range(field_name, text))
        items = [t.strip() for t in text.split(",")] if field_name not in TEXT_AXES else [text]
    elif isinstance(raw, (list, tuple)):
        items = list(raw)
    else:
        items = [raw]
    if not items or any(i == "" for i in items):
        raise InputError(field_name, f"no values in {raw!r}")
    if field_name in INT_AXES:
        return tuple(parse_int(field_name, i, 0, 2**32 - 1) for i in items)
    if field_name in FLOAT_AXES or field_name.startswith("adapter:"):
        return tuple(parse_float(field_name, i) for i in items)
    if field_name == "size":
        return tuple(parse_size(str(i)) for i in items)
    if not all(isinstance(i, str) for i in items):
        raise InputError(field_name, "expected text values")
    return tuple(items)


def group(values: dict) -> tuple[tuple[str, tuple], ...]:
    """One zipped group from {field: values}; every field must have as many values."""
    if not isinstance(values, dict) or not values:
        raise InputError("axes", "each group of axes is a mapping of field to values")
    out = tuple((canonical_field(k), axis_values(canonical_field(k), v)) for k, v in values.items())
    lengths = {len(v) for _, v in out}
    if len(lengths) != 1:
        detail = ", ".join(f"{k}:{len(v)}" for k, v in out)
        raise InputError("axes", f"zipped axes need equal lengths ({detail})")
    return out


def is_axis(field_name: str, raw) -> bool:
    """A CLI or top-level value sweeps when it is a list, a range or a comma list."""
    if isinstance(raw, (list, tuple)):
        return True
    if not isinstance(raw, str) or field_name in TEXT_AXES:
        return False
    text = raw.strip()
    return "," in text or (field_name in INT_AXES and "-" in text.lstrip("-"))


@dataclass
class SpecFile:
    """A parsed spec file: base fields, prompt templates, axes, wildcard settings."""

    base: dict = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)
    sweep: Sweep = Sweep()
    wildcards: dict = field(default_factory=dict)
    variants: int | None = None


SCALAR_FIELDS = tuple(f.name for f in fields(JobRequest) if f.name != "prompt") + ("size", "variants", "priority")


def load_spec(name: str, text: str) -> SpecFile:
    if name.lower().endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" line {where.line + 1}" if where else ""
            raise InputError("spec", f"{name}:{line} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    elif name.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError("spec", f"{name}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    else:
        raise InputError("spec", f"{name}: a spec file is .yaml, .yml or .json")
    return spec_from_mapping(name, data)


def spec_from_mapping(name: str, data: object) -> SpecFile:
    """A spec from its fields as a mapping (a parsed spec file, or the body of an API request)."""
    if not isinstance(data, dict):
        raise InputError("spec", f"{name}: expected a mapping at the top level")
    spec = SpecFile()
    groups = []
    for key, raw in data.items():
        if key in ("prompt", "prompts"):
            prompts = [raw] if isinstance(raw, str) else raw
            if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise InputError("prompt", "expected a prompt or a list of prompts")
            spec.prompts = prompts
        elif key == "axes":
            if not isinstance(raw, list):
                raise InputError("axes", "expected a list of groups")
            groups += [group(g) for g in raw]
        elif key == "wildcards":
            if not isinstance(raw, dict):
                raise InputError("wildcards", "expected a mapping (mode, count, seed, lists)")
            unknown = set(raw) - {"mode", "count", "seed", "lists"}
            if unknown:
                raise InputError("wildcards", f"unknown setting {sorted(unknown)[0]!r}")
            spec.wildcards = raw
        elif key == "variants":
            spec.variants = parse_int("variants", raw, 1, 10_000)
        elif key.startswith("adapter:") or (key not in ("adapters",) and is_axis(ALIASES.get(key) or key, raw)):
            groups.append(group({key: raw}))
        elif ALIASES.get(key, key) in SCALAR_FIELDS:
            spec.base[ALIASES.get(key, key)] = raw
        else:
            raise InputError("spec", f"{name}: unknown field {key!r}")
    if not spec.prompts:
        raise InputError("prompt", f"{name}: the spec has no prompt")
    spec.sweep = Sweep(tuple(groups))
    spec.sweep.cells()  # refuse an oversized sweep now
    return spec
