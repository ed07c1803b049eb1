"""Values a user types (integers, numbers, sizes), parsed with a one-line error that names the
field. Pure: the bottom of ``farm.jobs``, imported by the spec, the kinds and the sweeps alike."""

from __future__ import annotations

import math

from farm.errors import InputError


def parse_duration(field_name: str, text: object, lo_s: int, hi_s: int, *, examples: str, bounds: str) -> int:
    """``900``, ``15m``, ``2h``, ``30d`` in seconds, within ``lo_s..hi_s`` (``bounds`` says so in words)."""
    import re

    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", str(text or ""))
    if not match:
        raise InputError(field_name, f"expected a duration such as {examples}, got {text!r}")
    seconds = int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if not lo_s <= seconds <= hi_s:
        raise InputError(field_name, f"{text} is outside {bounds}")
    return seconds


def is_sha256(text: str) -> bool:
    """64 lowercase hex digits: a content id as the farm writes it."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def parse_int(field_name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise InputError(field_name, f"expected an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise InputError(field_name, f"expected an integer, got {value!r}") from None
    if not isinstance(value, int):
        raise InputError(field_name, f"expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InputError(field_name, f"{value} is outside {lo}..{hi}")
    return value


def parse_float(field_name: str, value: object) -> float:
    if isinstance(value, bool):
        raise InputError(field_name, f"expected a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(field_name, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InputError(field_name, f"expected a finite number, got {value!r}")
    return number


def parse_size(value: str) -> tuple[int, int]:
    """'WxH' or a single 'N' for a square."""
    text = value.strip().lower()
    parts = text.split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InputError("size", f"expected WIDTHxHEIGHT such as 512x512, got {value!r}")
    return int(parts[0]), int(parts[1])
