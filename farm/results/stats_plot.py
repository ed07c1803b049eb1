"""The picture of `farm stats --plot`: the stage breakdown (p50 per stage and group) and images
finished per interval over the window."""

from __future__ import annotations

from pathlib import Path

from farm.errors import InputError
from farm.results.stats import STAGES


def plot_stats(rows: list[dict], summary: list[dict], path: str, *, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plot", "matplotlib is not installed (bash scripts/install.sh bench)") from None
    if not rows:
        raise InputError("plot", "no finished attempts in the window: nothing to draw")
    stages = [s for s in STAGES if s not in ("total", "queue_wait")]  # waiting is shown apart: it dwarfs work
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    bottoms = [0.0] * len(summary)
    for stage in stages:
        values = [g["stages_ms"][stage]["p50"] or 0.0 for g in summary]
        labels = [f"{g['group']}\nwait {(g['stages_ms']['queue_wait']['p50'] or 0) / 1000:.1f}s" for g in summary]
        left.bar(labels, values, bottom=bottoms, label=stage)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    left.set_ylabel("ms per image (p50 of each stage)")
    left.set_title("stage breakdown (queue wait under each label)")
    left.legend(fontsize=7)
    done = sorted(r["finished_at"] for r in rows if r["outcome"] == "succeeded" and r["finished_at"])
    if done:
        span = max(1.0, (done[-1] - done[0]).total_seconds())
        width = max(1.0, span / 30)
        buckets: dict[int, int] = {}
        for t in done:
            index = int((t - done[0]).total_seconds() // width)
            buckets[index] = buckets.get(index, 0) + 1
        xs = sorted(buckets)
        right.plot([x * width for x in xs], [buckets[x] / width for x in xs], marker="o")
    right.set_xlabel("seconds since the first image in the window")
    right.set_ylabel("images/s")
    right.set_title("throughput")
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
