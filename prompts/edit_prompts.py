"""Editing prompt rows: `{instruction, reference_image, ...}`, loaded from jsonl, and their reference pixels.

A row (docs/CONTRACTS.md, "Prompt rows") carries:
- `instruction` (str): what to change, e.g. "make the circle blue";
- `reference_image`: the image to edit, a path (str; relative paths are resolved against the jsonl's folder when
  loaded), `skimage:<name>` for one of the photos that ship inside scikit-image (offline starter sets such as
  recipes/prompts/edit_starter.jsonl), or, for in-process worlds such as shapes editing, a uint8 [H, W, 3] array;
- `prompt`: set to the instruction when absent, so code that reads `row["prompt"]` (logging, sample grids) works;
- anything else (e.g. `tag`, checker targets) is kept and reaches the rewards as metadata.

Every sample of a group is drawn from the same row, so every sample in a group shares the reference
(`rollouts/edit_rollout.py`). Errors: a malformed row names the file and the line number; a missing image file
names the file (and the line that asked for it).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from prompts.row_files import jsonl_objects

INSTRUCTION = "instruction"
REFERENCE = "reference_image"
SAMPLE_SCHEME = "skimage:"
# RGB photos bundled in the scikit-image wheel (no download): `skimage.data.<name>()`.
SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                 "colorwheel")


class EditPromptError(ValueError):
    pass


def is_edit_row(row: dict[str, Any]) -> bool:
    return REFERENCE in row


def load_edit_jsonl(path: str | Path, *, check_images: bool = True) -> list[dict[str, Any]]:
    """Rows of an editing jsonl; `reference_image` paths become absolute. Bad rows raise `EditPromptError`."""
    path = Path(path)
    if not path.is_file():
        raise EditPromptError(f"editing prompt file not found: {path}")
    rows = []
    for where, row in jsonl_objects(path, EditPromptError):
        instruction = row.get(INSTRUCTION)
        if not isinstance(instruction, str) or not instruction.strip():
            raise EditPromptError(f"{where}: a row needs a non-empty string 'instruction'")
        ref = row.get(REFERENCE)
        if not isinstance(ref, str) or not ref:
            raise EditPromptError(f"{where}: a row needs 'reference_image', a path to the image to edit")
        if ref.startswith(SAMPLE_SCHEME):
            if ref[len(SAMPLE_SCHEME):] not in SAMPLE_IMAGES:
                raise EditPromptError(f"{where}: {ref!r} is not a bundled sample image; choose one of "
                                      + ", ".join(SAMPLE_SCHEME + n for n in SAMPLE_IMAGES))
            row.setdefault("prompt", instruction)
            rows.append(row)
            continue
        ref_path = Path(ref).expanduser()
        if not ref_path.is_absolute():
            ref_path = path.parent / ref_path
        if check_images and not ref_path.is_file():
            raise EditPromptError(f"{where}: reference image file not found: {ref_path}")
        row[REFERENCE] = str(ref_path)
        row.setdefault("prompt", instruction)
        rows.append(row)
    if not rows:
        raise EditPromptError(f"{path}: no rows")
    return rows


class _ImageCache:
    """A few decoded reference images, by path (a group's G samples and the rewards read the same file)."""

    def __init__(self, size: int = 64):
        self.size, self.items = size, OrderedDict()

    def get(self, path: str) -> np.ndarray:
        if path in self.items:
            self.items.move_to_end(path)
            return self.items[path]
        if path.startswith(SAMPLE_SCHEME):
            return self._remember(path, _sample_image(path[len(SAMPLE_SCHEME):]))
        from PIL import Image

        p = Path(path)
        if not p.is_file():
            raise EditPromptError(f"reference image file not found: {p}")
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except OSError as exc:
            raise EditPromptError(f"cannot read reference image {p}: {exc}") from None
        return self._remember(path, arr)

    def _remember(self, key: str, arr: np.ndarray) -> np.ndarray:
        arr.setflags(write=False)
        self.items[key] = arr
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return arr


def _sample_image(name: str) -> np.ndarray:
    if name not in SAMPLE_IMAGES:
        raise EditPromptError(f"{SAMPLE_SCHEME}{name} is not a bundled sample image ({', '.join(SAMPLE_IMAGES)})")
    import skimage.data

    return np.ascontiguousarray(getattr(skimage.data, name)()[..., :3], dtype=np.uint8)


_CACHE = _ImageCache()


def reference_pixels(row: dict[str, Any]) -> np.ndarray:
    """The row's reference image as uint8 [H, W, 3]."""
    ref = row.get(REFERENCE)
    if ref is None:
        raise EditPromptError(f"row has no {REFERENCE!r}: {sorted(row)}")
    if isinstance(ref, np.ndarray):
        if ref.dtype != np.uint8 or ref.ndim != 3 or ref.shape[-1] != 3:
            raise EditPromptError(f"in-memory reference_image must be uint8 [H, W, 3], got {ref.dtype} {ref.shape}")
        return ref
    if isinstance(ref, (str, Path)):
        return _CACHE.get(str(ref))
    raise EditPromptError(f"reference_image must be a path or a uint8 array, got {type(ref).__name__}")
