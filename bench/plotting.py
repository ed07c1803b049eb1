"""One line plot per benchmark, log2 x axis, saved beside the JSON (matplotlib is optional)."""

from __future__ import annotations

from pathlib import Path


def save_lines(path: Path, series: dict[str, tuple[list, list]], *, xlabel: str, ylabel: str, title: str,
               target: float | None = None, ylim: tuple | None = None, log_x: bool = True,
               logy: bool = False) -> bool:
    """``series``: label -> (xs, ys). Returns False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (bash scripts/install.sh bench)")
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", label=f"target {target:g}")
    if log_x:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True
