"""Choosing a contact sheet's axes: which sweep axis runs across, which down, and the label of each
cell. Pure: job records in, cells out (``engine.sheets`` draws them)."""

from __future__ import annotations

from farm.errors import InputError


def _label(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def sheet_cells(jobs: list[dict], columns: str | None = None, rows: str | None = None) -> tuple[list, str, str]:
    """(column label, row label, job) per job with an image, and the axes used.

    By default the first axis that varies across the batch gives the columns and every other
    varying axis together gives the rows (e.g. steps 1..8 across, seeds down).
    """
    done = [j for j in jobs if j.get("artifact")]
    if not done:
        raise InputError("batch", "has no stored images yet")
    names = list(dict.fromkeys(k for j in done for k in (j.get("axes") or {})))
    varying = [n for n in names if len({_label(j["axes"].get(n)) for j in done}) > 1]
    for option, axis in (("cols", columns), ("rows", rows)):
        if axis is not None and axis not in names:
            raise InputError(option, f"{axis!r} is not an axis of this batch (axes: {', '.join(names) or 'none'})")
    if columns is None and rows is None and "init_image" in varying:
        # variations of a batch (issue 13): one row per source image, its variations across
        across = [n for n in varying if n != "init_image"]
        cells = [(", ".join(f"{n}={_label((j.get('axes') or {}).get(n))}" for n in across) or f"job {j['id']}",
                  f"init_image={_label(j['axes'].get('init_image'))}", j) for j in done]
        return cells, "+".join(across) or "-", "init_image"
    columns = columns or (varying[0] if varying else (names[0] if names else None))
    row_axes = [rows] if rows else [n for n in varying if n != columns]
    cells = []
    for job in done:
        axes = job.get("axes") or {}
        column = f"{columns}={_label(axes.get(columns))}" if columns else f"job {job['id']}"
        row = ", ".join(f"{n}={_label(axes.get(n))}" for n in row_axes) or "-"
        cells.append((column, row, job))
    return cells, columns or "-", "+".join(row_axes) or "-"
