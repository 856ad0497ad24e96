"""Prompt sets: a recipe's `PromptSource` loaded into rows, and streamed step by step.

The loader of each `format` comes from the registry in `prompts/formats.py`:
- `ocr_txt`, `geneval_jsonl`, `jsonl`: files of the field's formats (`prompts/row_files.py`);
- `inline`: a list of prompt strings in the recipe;
- `coco_generated`: GenEval-style rows generated from the 80 COCO classes (`prompts/coco_prompts.py`);
- `edit_jsonl`: editing rows `{instruction, reference_image}` (`prompts/edit_prompts.py`);
- `shapes`, `shapes_edit`: the shapes world's train / held-out rows, registered by the world.
A bad row is an error naming the file and the line number.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from prompts.formats import prompt_format_loader
from prompts.row_files import PromptSetError
from seeding import derive_seed


def load_prompt_rows(source: Any, base_dir: Path | None = None) -> list[dict[str, Any]]:
    """Rows for a recipe's `PromptSource`. A prompt longer than `source.max_prompt_chars` is refused here (so
    `nativerl validate` catches it): one 100,000-character prompt is tokenised into a context the AR attends over
    for every image token, and took 20 GB before crashing."""
    rows = prompt_format_loader(source.format)(source, base_dir)
    limit = getattr(source, "max_prompt_chars", None)
    if limit is not None:
        for i, row in enumerate(rows):
            text = row.get("prompt")
            if isinstance(text, str) and len(text) > limit:
                where = f"{source.path}: row {i + 1}" if getattr(source, "path", None) else f"prompt {i}"
                raise PromptSetError(f"{where}: the prompt has {len(text)} characters; max_prompt_chars is {limit} "
                                     "(rollout.prompts.max_prompt_chars)")
    return rows


class PromptStream:
    """Endless, reproducible stream of prompt rows: shuffled once per epoch with the run seed.

    Its whole state is (epoch, position), saved in checkpoints so a resumed run sees the same prompts.
    """

    def __init__(self, rows: list[dict[str, Any]], seed: int, shuffle: bool = True):
        if not rows:
            raise PromptSetError("empty prompt set")
        self.rows, self.seed, self.shuffle = rows, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> list[int]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(derive_seed(self.seed, "prompt_order", self.epoch)).shuffle(order)
        return order

    def next(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order()
            out.append(self.rows[self._order[self.position]])
            self.position += 1
        return out

    def peek(self, n: int) -> list[dict[str, Any]]:
        """The next n rows, without advancing the stream."""
        state = self.state_dict()
        rows = self.next(n)
        self.load_state_dict(state)
        return rows

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order()
