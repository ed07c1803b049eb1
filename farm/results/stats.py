"""Stats from the ledger, pure: images, throughput, failure rate and per-stage percentiles.

Rows come from ``Ledger.attempt_rows`` (one per finished attempt in the window); grouping is by
model, recipe, device or worker.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from farm.errors import InputError

STAGES = ("queue_wait", "model_load", "adapter_load", "text_encode", "denoise", "vae_decode", "image_encode",
          "upload", "total")
GROUPS = ("model", "recipe", "device", "worker")


def parse_since(text: str, now: datetime) -> datetime:
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text or "")
    if not match:
        raise InputError("since", f"expected a duration such as 30m, 1h or 7d, got {text!r}")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return now - timedelta(seconds=int(match.group(1)) * unit)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = int(position), min(len(ordered) - 1, int(position) + 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(rows: list[dict], by: str | None = None) -> list[dict]:
    """One summary per group (or one overall). ``rows``: outcome, finished_at, the group keys and
    each stage's ms."""
    if by is not None and by not in GROUPS:
        raise InputError("by", f"{by!r} is not one of {', '.join(GROUPS)}")
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row.get(by)) if by else "all", []).append(row)
    out = []
    for key, items in sorted(groups.items()):
        done = [r for r in items if r["outcome"] == "succeeded"]
        failed = [r for r in items if r["outcome"] in ("failed", "lost", "timeout", "retry")]
        ends = [r["finished_at"] for r in done if r["finished_at"] is not None]
        starts = [r.get("started_at") or r["finished_at"] for r in done if r["finished_at"] is not None]
        # from the first claim to the last completion: a group of two images is not "131 img/s"
        span = (max(ends) - min(starts)).total_seconds() if ends else 0.0
        stage_stats = {}
        for stage in STAGES:
            values = [r[stage] for r in done if r.get(stage) is not None]
            stage_stats[stage] = {f"p{int(q * 100)}": None if not values else round(percentile(values, q), 2)
                                  for q in (0.5, 0.95, 0.99)}
        out.append({
            "group": key, "images": len(done), "attempts": len(items),
            "failure_rate": round(len(failed) / len(items), 4) if items else 0.0,
            "images_per_s": round(len(done) / span, 3) if span > 0 else None,
            "stages_ms": stage_stats,
        })
    return out
