"""Shapes-edit reward: exact check that an edited shapes-world image follows its instruction and keeps the rest.

Definition (version `exact`): the shapes world's exact detector (`worlds/shapes/detector.py`) reads every
object of the edited image; `worlds.shapes_edit.edits.check_edit` compares it, cell by cell, with the result the
instruction asks for ("make the circle blue", "add a red square left of the triangle", "remove the diamond").
Two versions of the partial-credit score (the GRPO reward), defined in `check_edit`'s docstring:
- `shaped` (default): 0.5·edit_credit + 0.5·untouched_accuracy, where a misplaced "add" earns half the edit credit
  and the edited cell is not also counted against the image, so trying the edit never scores below doing nothing;
- `exact`: 0.5·edit_ok + 0.5·cell_accuracy, which scores an unchanged image 0.5 on "add", above a misplaced add.
Details carry `correct` (the exact pass/fail used for accuracy, GenEval-style; the same under both versions),
`tag`, `edit_ok`, `cell_accuracy`, `edit_credit`, `untouched_accuracy`. There is no external reference
implementation: this world is ours; the checker is exact on ground-truth edits (tests/test_editing_shapes.py).
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np

from rewards.base import RewardOutput


class ShapesEditReward:
    name: ClassVar[str] = "shapes_edit"
    VERSIONS: ClassVar[tuple[str, ...]] = ("shaped", "exact")

    def __init__(self, version: str = "shaped"):
        if version not in self.VERSIONS:
            raise ValueError(f"shapes_edit: unknown version {version!r}; versions: {self.VERSIONS}")
        from worlds.shapes.detector import ShapesDetector

        self.version = version
        self.detector = ShapesDetector()

    def __call__(self, images: Sequence[np.ndarray], prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]]) -> RewardOutput:
        from worlds.shapes_edit.edits import check_edit, detected_cells

        if len(images) != len(metadata):
            raise ValueError(f"shapes_edit: {len(images)} images but {len(metadata)} metadata rows")
        details = []
        for i, (image, row) in enumerate(zip(images, metadata)):
            if "reference_scene" not in row or "edit" not in row:
                raise ValueError(f"shapes_edit: metadata row {i} is not a shapes-editing row "
                                 f"(needs reference_scene and edit): {sorted(row)}")
            details.append(check_edit(row, detected_cells(self.detector.detect(image))))
        key = "shaped_score" if self.version == "shaped" else "score"
        return RewardOutput(scores=[d[key] for d in details], details=details)
