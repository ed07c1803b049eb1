"""Tenants' quotas (issue 24): what a tenant may use per day and hold queued at once. Pure.

A submission is checked against its estimate inside the transaction that writes it, with the
tenant's row locked, so concurrent submissions are counted one after the other and cannot
overshoot together: the jobs a submission writes are its reservation. A day is the last 24 hours.
"""

from __future__ import annotations

from dataclasses import dataclass

LIMITS = ("images_per_day", "gpu_seconds_per_day", "max_queued")


@dataclass(frozen=True)
class Usage:
    images_today: int  # jobs to render (not reused) submitted in the last 24 h and not cancelled
    gpu_seconds_today: float  # their GPU time: measured where finished, estimated where not
    queued: int  # jobs queued or running now


def check_limits(limits: dict | None) -> dict:
    """A tenant's quotas as stored: known names, positive numbers; None or {} is no quota."""
    out: dict = {}
    for name, value in (limits or {}).items():
        if name not in LIMITS:
            raise ValueError(f"unknown quota {name!r} (known: {', '.join(LIMITS)})")
        if value is None:
            continue
        number = float(value)
        if number < 0 or number != number:
            raise ValueError(f"quota {name} must be 0 or more, got {value!r}")
        out[name] = number if name == "gpu_seconds_per_day" else int(number)
    return out


def refusal(tenant: str, limits: dict | None, usage: Usage, *, images: int, gpu_seconds: float) -> str | None:
    """Why a submission of ``images`` jobs estimated at ``gpu_seconds`` is refused, in one line
    saying what is left; None when it fits every quota."""
    limits = limits or {}
    cap = limits.get("images_per_day")
    if cap is not None and usage.images_today + images > cap:
        left = max(0, int(cap) - usage.images_today)
        return (f"tenant {tenant} quota: {left} of {int(cap)} images left today; this submission renders {images}")
    cap = limits.get("gpu_seconds_per_day")
    if cap is not None and usage.gpu_seconds_today + gpu_seconds > cap:
        left = max(0.0, float(cap) - usage.gpu_seconds_today)
        return (f"tenant {tenant} quota: {left:.0f} of {float(cap):.0f} GPU-seconds left today; this submission "
                f"needs about {gpu_seconds:.0f}")
    cap = limits.get("max_queued")
    if cap is not None and usage.queued + images > cap:
        left = max(0, int(cap) - usage.queued)
        return (f"tenant {tenant} quota: {usage.queued} jobs queued of at most {int(cap)} at once ({left} more "
                f"may queue); this submission queues {images}")
    return None
