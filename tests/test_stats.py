"""Stats from ledger rows: counts, rate, failure rate and percentiles, checked by hand."""

from datetime import datetime, timedelta, timezone

import pytest

from farm.errors import InputError
from farm.results.stats import parse_since, percentile, summarise

T0 = datetime(2026, 11, 22, tzinfo=timezone.utc)


def row(i, outcome="succeeded", model="tiny-sd", denoise=None):
    return {"outcome": outcome, "finished_at": T0 + timedelta(seconds=i), "started_at": T0 + timedelta(seconds=i),
            "model": model, "recipe": "lcm-lora",
            "device": "cpu", "worker": "w", "denoise": denoise if denoise is not None else float(i), "total": 10.0}


def test_summary_numbers():
    rows = [row(i) for i in range(11)] + [row(3, "failed"), row(4, "lost")]
    [overall] = summarise(rows)
    assert (overall["images"], overall["attempts"]) == (11, 13)
    assert overall["failure_rate"] == round(2 / 13, 4)
    assert overall["images_per_s"] == 1.1  # 11 images over 10 s
    assert overall["stages_ms"]["denoise"] == {"p50": 5.0, "p95": 9.5, "p99": 9.9}
    assert overall["stages_ms"]["upload"] == {"p50": None, "p95": None, "p99": None}


def test_grouping_and_errors():
    rows = [row(1, model="a"), row(2, model="b"), row(3, model="b")]
    assert [(g["group"], g["images"]) for g in summarise(rows, "model")] == [("a", 1), ("b", 2)]
    with pytest.raises(InputError, match="^by: "):
        summarise(rows, "colour")
    with pytest.raises(InputError, match="^since: "):
        parse_since("yesterday", T0)
    assert parse_since("90m", T0) == T0 - timedelta(minutes=90)
    assert percentile([], 0.5) is None and percentile([4.0], 0.99) == 4.0


def test_eta_from_the_rate_so_far():
    from farm.results.progress import eta_seconds

    assert eta_seconds(10, 30, 5.0) == 15.0  # 2 images/s, 30 left
    assert eta_seconds(0, 30, 5.0) is None and eta_seconds(10, 30, 0.0) is None  # no rate yet
    assert eta_seconds(10, 0, 5.0) == 0.0
