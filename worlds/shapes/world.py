"""The shapes world: scenes of coloured shapes on a 4x4 grid, sampled to satisfy a GenEval prompt, rendered exactly.

A scene is a 64x64 image cut into a 4x4 grid of 16x16 cells. Each cell is empty or holds one shape (circle,
square, triangle, diamond) in one of six well-separated colours, with a little size and position jitter. One cell
is one image token, so the generator emits N = 16 tokens per image (BLIP3o-NEXT emits 729: same idea, small).

Shapes never leave their cell (1 px margin), so two shapes never touch and the exact detector
(`worlds/shapes/detector.py`) can read every scene by connected components. The geometry below
(`shape_mask`) is shared by the ground-truth renderer and the detector's templates, so "exact" means the
detector re-renders what it sees with the same rule.

Pure numpy: the detector imports this module without pulling torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
# Six of GenEval's ten colour names, far apart in RGB and all far from the white background. (Orange was tried
# and dropped: too close to red and yellow for a pixel-space k-means codebook to keep apart.)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (235, 200, 20),
    "green": (30, 160, 60),
    "blue": (30, 80, 230),
    "purple": (150, 50, 200),
    "black": (30, 30, 30),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
BACKGROUND: tuple[int, int, int] = (255, 255, 255)

GRID = 4  # cells per side
CELL = 16  # pixels per cell side
IMAGE_SIZE = GRID * CELL  # 64
MAX_OBJECTS = GRID * GRID
# Half the bounding-box side of a shape: a little size jitter, so a class has several looks (and codes). Shapes
# sit at their cell centre (no position jitter): with it, k-means codes mixed close colours (measured: 5.6% of
# patches impure at K=64), because a 1 px shift moves more pixels than a colour change. With half sizes in
# [5, 6] the world has exactly 61 distinct cell patches (4+2+2+2 rasterisations per colour, 6 colours, + empty),
# so a K=64 k-means codebook learns every one of them: the VQ is exact and each code is one class.
# A shape of half size <= 6 stays >= 2 px inside its 16 px cell, so shapes never touch.
MIN_HALF_SIZE, MAX_HALF_SIZE = 5.0, 6.0
MAX_CENTER_JITTER = 0.0


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    row: int
    col: int
    half_size: float = 6.0  # half the bounding-box side, pixels
    dx: float = 0.0  # centre offset from the cell centre, pixels
    dy: float = 0.0

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) in pixels; pixel (i, j) covers [j, j+1) x [i, i+1)."""
        return (self.col * CELL + CELL / 2 + self.dx, self.row * CELL + CELL / 2 + self.dy)

    def box(self) -> tuple[float, float, float, float]:
        cx, cy = self.center
        h = self.half_size
        return (cx - h, cy - h, cx + h, cy + h)


@dataclass
class Scene:
    objects: list[ShapeObject] = field(default_factory=list)

    def __post_init__(self) -> None:
        seen: set[tuple[int, int]] = set()
        for obj in self.objects:
            if obj.shape not in SHAPES:
                raise ValueError(f"unknown shape {obj.shape!r}; the shapes world has {SHAPES}")
            if obj.color not in COLORS:
                raise ValueError(f"unknown colour {obj.color!r}; the shapes world has {COLOR_NAMES}")
            if not (0 <= obj.row < GRID and 0 <= obj.col < GRID):
                raise ValueError(f"cell ({obj.row}, {obj.col}) is outside the {GRID}x{GRID} grid")
            if (obj.row, obj.col) in seen:
                raise ValueError(f"two objects in cell ({obj.row}, {obj.col})")
            seen.add((obj.row, obj.col))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for obj in self.objects:
            out[obj.shape] = out.get(obj.shape, 0) + 1
        return out


def shape_mask(shape: str, cx: float, cy: float, h: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pixels whose centres (xs+0.5, ys+0.5) lie inside `shape` with centre (cx, cy) and bounding-box half side h.

    The one geometric definition of the world: the renderer paints it, the detector matches against it.
    """
    px, py = xs + 0.5 - cx, ys + 0.5 - cy
    if shape == "circle":
        return px * px + py * py <= h * h
    if shape == "square":
        return (np.abs(px) <= h) & (np.abs(py) <= h)
    if shape == "triangle":  # apex up, base at the bottom of the box
        return (py <= h) & (np.abs(px) <= (py + h) / 2)
    if shape == "diamond":
        return np.abs(px) + np.abs(py) <= h
    raise ValueError(f"unknown shape {shape!r}; the shapes world has {SHAPES}")


def render_scene(scene: Scene) -> np.ndarray:
    """Ground-truth rendering: uint8 [64, 64, 3], hard edges (no anti-aliasing, so it is exact)."""
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
    for obj in scene.objects:
        cx, cy = obj.center
        img[shape_mask(obj.shape, cx, cy, obj.half_size, xs, ys)] = COLORS[obj.color]
    return img


# --------------------------------------------------------------------------------------------------------------
# Sampling scenes that satisfy a GenEval metadata row
# --------------------------------------------------------------------------------------------------------------

# Cell-offset directions for GenEval relations ("A left of B": A's column is smaller). A relation is placed with
# its axis strictly dominant (|main offset| > |cross offset|), which GenEval's position rule (rewards.md §2,
# threshold 0.1) reads as that one relation only.
_RELATION_AXIS = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}


def _jittered(shape: str, color: str, row: int, col: int, rng: np.random.Generator) -> ShapeObject:
    return ShapeObject(
        shape=shape, color=color, row=row, col=col,
        half_size=float(rng.uniform(MIN_HALF_SIZE, MAX_HALF_SIZE)),
        dx=float(rng.uniform(-MAX_CENTER_JITTER, MAX_CENTER_JITTER)),
        dy=float(rng.uniform(-MAX_CENTER_JITTER, MAX_CENTER_JITTER)),
    )


def _relation_cells(relation: str, anchor: tuple[int, int], free: set[tuple[int, int]]) -> list[tuple[int, int]]:
    drow, dcol = _RELATION_AXIS[relation]
    out = []
    for r, c in free:
        main = (r - anchor[0]) * drow + (c - anchor[1]) * dcol  # offset along the relation's direction
        cross = abs((r - anchor[0]) * dcol) + abs((c - anchor[1]) * drow)
        if main > 0 and main > cross:
            out.append((r, c))
    return sorted(out)


def sample_scene(metadata: dict[str, Any], rng: np.random.Generator, max_tries: int = 100) -> Scene:
    """A random scene that satisfies the GenEval row exactly (right counts, colours and relations, nothing else).

    Colours not named by the prompt are drawn uniformly per object. Used to make SFT data and ground truth.
    """
    includes = metadata.get("include")
    if not includes:
        raise ValueError(f"metadata row {metadata.get('prompt')!r} has no 'include' clauses")
    total = sum(int(c["count"]) for c in includes)
    if total > MAX_OBJECTS:
        raise ValueError(f"prompt {metadata.get('prompt')!r} asks for {total} objects; a scene holds {MAX_OBJECTS}")
    for _ in range(max_tries):
        free = {(r, c) for r in range(GRID) for c in range(GRID)}
        placed: list[list[ShapeObject]] = []
        ok = True
        for clause in includes:
            objs: list[ShapeObject] = []
            for _k in range(int(clause["count"])):
                if "position" in clause:
                    relation, target = clause["position"]
                    if relation not in _RELATION_AXIS:
                        raise ValueError(f"unknown relation {relation!r} in {metadata.get('prompt')!r}")
                    candidates = set(free)
                    for anchor in placed[int(target)]:
                        candidates &= set(_relation_cells(relation, (anchor.row, anchor.col), free))
                    choices = sorted(candidates)
                else:
                    choices = sorted(free)
                if not choices:
                    ok = False
                    break
                row, col = choices[int(rng.integers(len(choices)))]
                color = clause.get("color") or COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
                objs.append(_jittered(clause["class"], color, row, col, rng))
                free.discard((row, col))
            if not ok:
                break
            placed.append(objs)
        if ok:
            return Scene([o for objs in placed for o in objs])
    raise RuntimeError(f"could not place a scene for {metadata.get('prompt')!r} in {max_tries} tries")


def sample_random_scene(rng: np.random.Generator, max_objects: int = 4) -> Scene:
    """Any scene with 1..max_objects shapes in random cells (for fitting the tokenizer and the autoencoder)."""
    n = int(rng.integers(1, max_objects + 1))
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    return Scene([
        _jittered(SHAPES[int(rng.integers(len(SHAPES)))], COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))],
                  int(cell) // GRID, int(cell) % GRID, rng)
        for cell in cells
    ])


def cell_patches(images: np.ndarray) -> np.ndarray:
    """[B, 64, 64, 3] uint8 -> [B, 16, 16*16*3] float32 in [0, 1], cells in raster order (row-major)."""
    b = images.shape[0]
    x = images.reshape(b, GRID, CELL, GRID, CELL, 3).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, GRID * GRID, CELL * CELL * 3).astype(np.float32) / 255.0


def patches_to_images(patches: np.ndarray) -> np.ndarray:
    """Inverse of `cell_patches`: [B, 16, 768] float in [0, 1] -> [B, 64, 64, 3] uint8."""
    b = patches.shape[0]
    x = patches.reshape(b, GRID, GRID, CELL, CELL, 3).transpose(0, 1, 3, 2, 4, 5)
    return (np.clip(x.reshape(b, IMAGE_SIZE, IMAGE_SIZE, 3), 0, 1) * 255 + 0.5).astype(np.uint8)


__all__ = [
    "SHAPES", "COLORS", "COLOR_NAMES", "BACKGROUND", "GRID", "CELL", "IMAGE_SIZE", "ShapeObject", "Scene",
    "shape_mask", "render_scene", "sample_scene", "sample_random_scene", "cell_patches", "patches_to_images",
]
