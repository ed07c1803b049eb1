"""Contact sheets: a batch laid out as a labelled grid, columns and rows from its sweep axes.

Lives in workers/ because it decodes and draws images (PIL); the CLI imports it only when asked.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

LABEL_W, HEADER_H, TITLE_H, MIN_CELL = 140, 24, 28, 128


@dataclass(frozen=True)
class Layout:
    columns: list[str]
    rows: list[str]
    cell_w: int
    cell_h: int

    @property
    def size(self) -> tuple[int, int]:
        return LABEL_W + self.cell_w * len(self.columns), TITLE_H + HEADER_H + self.cell_h * len(self.rows)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _fit(label: str, font, width: int) -> str:
    """``label`` within ``width`` pixels, so neighbouring labels never run together: the values
    alone when "axis=value, ..." is too long, then cut with an ellipsis."""
    if not hasattr(font, "getlength") or font.getlength(label) <= width:
        return label
    values = ", ".join(part.split("=", 1)[-1] for part in label.split(", "))
    if font.getlength(values) <= width:
        return values
    label = values
    while label and font.getlength(label + "…") > width:
        label = label[:-1]
    return label + "…"


def layout(cells: list[tuple[str, str, int, int]]) -> Layout:
    """``cells``: (column label, row label, width, height); labels keep their first-seen order."""
    columns = list(dict.fromkeys(c for c, _, _, _ in cells))
    rows = list(dict.fromkeys(r for _, r, _, _ in cells))
    width = max(w for _, _, w, _ in cells)
    height = max(h for _, _, _, h in cells)
    scale = max(1, -(-MIN_CELL // min(width, height)))  # small renders are enlarged to stay readable
    return Layout(columns, rows, width * scale, height * scale)


def cell_image(data: bytes):
    """A cell's picture: the image, or a clip's first, middle and last frame side by side (issue 27)."""
    from PIL import Image

    from engine.clips import is_clip, key_frames

    if not is_clip(data):
        return Image.open(io.BytesIO(data)).convert("RGB")
    frames = key_frames(data)
    strip = Image.new("RGB", (sum(f.width for f in frames) + 2 * (len(frames) - 1), frames[0].height), "white")
    for i, frame in enumerate(frames):
        strip.paste(frame, (i * (frame.width + 2), 0))
    return strip


def contact_sheet(cells: list[tuple[str, str, bytes]], title: str) -> tuple[bytes, Layout]:
    """A PNG grid of (column label, row label, image bytes); one image per cell."""
    from PIL import Image, ImageDraw

    images = [(c, r, cell_image(data)) for c, r, data in cells]
    grid = layout([(c, r, im.width, im.height) for c, r, im in images])
    sheet = Image.new("RGB", grid.size, "white")
    draw = ImageDraw.Draw(sheet)
    small, big = _font(12), _font(16)
    draw.text((8, 6), title[:160], fill="black", font=big)
    for i, label in enumerate(grid.columns):
        draw.text((LABEL_W + i * grid.cell_w + 4, TITLE_H + 4), _fit(label[:40], small, grid.cell_w - 8),
                  fill="black", font=small)
    for j, label in enumerate(grid.rows):
        draw.text((4, TITLE_H + HEADER_H + j * grid.cell_h + 4), _fit(label[:40], small, LABEL_W - 8),
                  fill="black", font=small)
    for column, row, image in images:
        scale = max(1, min(grid.cell_w // image.width, grid.cell_h // image.height))
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        x = LABEL_W + grid.columns.index(column) * grid.cell_w + (grid.cell_w - image.width) // 2
        y = TITLE_H + HEADER_H + grid.rows.index(row) * grid.cell_h + (grid.cell_h - image.height) // 2
        sheet.paste(image, (x, y))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue(), grid
