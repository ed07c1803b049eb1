"""Prompt wildcards: ``{red|green|blue}`` alternatives and ``__name__`` lists, pure.

Expanded either combinatorially (every combination, in a fixed order) or by seeded random choice
(``count`` prompts per template); the same template, lists and seed always give the same prompts.
"""

from __future__ import annotations

import itertools
import random
import re

from farm.errors import InputError

LIST_RE = re.compile(r"__([A-Za-z0-9][A-Za-z0-9_-]*)__")
ALTERNATIVES_RE = re.compile(r"\{([^{}]*)\}")
MAX_EXPANSIONS = 100_000
MODES = ("combinatorial", "random")


def parse_list_file(name: str, text: str) -> list[str]:
    """A wildcard list: one entry per line, blank lines and '#' comments skipped."""
    entries = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise InputError("wildcards", f"list {name!r} is empty")
    return entries


def _choice_points(template: str, lists: dict[str, list[str]]) -> list[tuple[tuple[int, int], list[str]]]:
    """Each (span, options) in the template, left to right."""
    points = []
    for match in LIST_RE.finditer(template):
        name = match.group(1)
        if name not in lists:
            raise InputError("wildcards", f"__{name}__ has no list (known: {', '.join(sorted(lists)) or 'none'})")
        points.append((match.span(), lists[name]))
    for match in ALTERNATIVES_RE.finditer(template):
        options = match.group(1).split("|")
        if len(options) < 2 and "|" not in match.group(0):
            continue  # plain braces are text, not a choice
        points.append((match.span(), [o.strip() for o in options]))
    points.sort()
    for (_start, end), (next_start, _) in zip((p[0] for p in points), (p[0] for p in points[1:])):
        if next_start < end:
            raise InputError("wildcards", f"overlapping wildcards in {template!r}")
    return points


def _fill(template: str, points, picks) -> str:
    out, last = [], 0
    for ((start, end), _), pick in zip(points, picks):
        out.append(template[last:start])
        out.append(pick)
        last = end
    out.append(template[last:])
    return " ".join("".join(out).split())


def expand_wildcards(template: str, lists: dict[str, list[str]] | None = None, *, mode: str = "combinatorial",
                     count: int = 1, seed: int = 0) -> list[str]:
    """The prompts a template stands for. A template without wildcards is itself."""
    if mode not in MODES:
        raise InputError("wildcards", f"mode {mode!r} is not one of {', '.join(MODES)}")
    points = _choice_points(template, lists or {})
    if not points:
        return [template]
    if mode == "combinatorial":
        total = 1
        for _, options in points:
            total *= len(options)
        if total > MAX_EXPANSIONS:
            raise InputError("wildcards", f"{template!r} expands to {total} prompts; the limit is {MAX_EXPANSIONS}")
        return [_fill(template, points, picks) for picks in itertools.product(*(o for _, o in points))]
    if not 1 <= count <= MAX_EXPANSIONS:
        raise InputError("wildcards", f"count {count} is outside 1..{MAX_EXPANSIONS}")
    rng = random.Random(f"{seed}:{template}")  # str seeds hash deterministically (not PYTHONHASHSEED)
    return [_fill(template, points, [rng.choice(options) for _, options in points]) for _ in range(count)]
