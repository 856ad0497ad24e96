"""Sample grids: a PNG of rollout images with each one's prompt and reward underneath."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def save_sample_grid(path: str | Path, images: list[np.ndarray], captions: list[str], *, columns: int = 4,
                     cell: int = 192) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = (len(images) + columns - 1) // columns
    text_h = 44
    grid = Image.new("RGB", (columns * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (img, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * cell, (i // columns) * (cell + text_h)
        tile = Image.fromarray(np.asarray(img, dtype=np.uint8)).resize((cell, cell), Image.NEAREST)
        grid.paste(tile, (x, y))
        lines = textwrap.wrap(caption, width=cell // 6)[:3]
        draw.multiline_text((x + 2, y + cell + 1), "\n".join(lines), fill="black", spacing=1)
    tmp = path.with_suffix(".tmp.png")
    grid.save(tmp)
    tmp.replace(path)
    return path
