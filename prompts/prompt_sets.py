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


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The run seed's shuffle of rows 0..n-1 for one epoch."""
    order = list(range(n))
    random.Random(derive_seed(seed, "prompt_order", epoch)).shuffle(order)
    return order


class RowStream:
    """What the trainer reads prompts from: `next(n)` rows (their indices in `served`), `peek`, and a JSON-able
    `state_dict` that checkpoints save, so a resumed run sees the same prompts."""

    def __init__(self, rows: list[dict[str, Any]]):
        if not rows:
            raise PromptSetError("empty prompt set")
        self.rows = rows
        self.served: list[int] = []  # row indices of the last `next`, in order

    def next(self, n: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def peek(self, n: int) -> list[dict[str, Any]]:
        """The next n rows, without advancing the stream."""
        state, served = self.state_dict(), self.served
        rows = self.next(n)
        self.load_state_dict(state)
        self.served = served
        return rows


class PromptStream(RowStream):
    """Endless, reproducible stream of prompt rows: shuffled once per epoch with the run seed.

    A row may be *rested* (`rest`): its next turn is skipped once, so steps go to rows that still teach something
    (the trainer rests rows whose whole group was solved, `rollout.rest_solved_at`). Its whole state is
    (epoch, position, resting rows), saved in checkpoints so a resumed run sees the same prompts.
    """

    def __init__(self, rows: list[dict[str, Any]], seed: int, shuffle: bool = True):
        super().__init__(rows)
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.position = 0, 0
        self.resting: set[int] = set()
        self._order = self._epoch_order()

    def _epoch_order(self) -> list[int]:
        return epoch_order(len(self.rows), self.seed, self.epoch) if self.shuffle else list(range(len(self.rows)))

    def _advance(self) -> int:
        if self.position >= len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order()
        index = self._order[self.position]
        self.position += 1
        return index

    def next(self, n: int) -> list[dict[str, Any]]:
        self.served = []
        for _ in range(n):
            index = self._advance()
            while index in self.resting:  # ends: every skip wakes a row, so at most len(rows) skips in a row
                self.resting.discard(index)
                index = self._advance()
            self.served.append(index)
        return [self.rows[i] for i in self.served]

    def rest(self, indices: list[int]) -> None:
        """Skip each of these rows (indices into `rows`, e.g. from `served`) once, at its next turn."""
        for index in indices:
            if not 0 <= index < len(self.rows):
                raise IndexError(f"prompt row {index} is out of range (0..{len(self.rows) - 1})")
            self.resting.add(int(index))

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "resting": sorted(self.resting)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") == "priority":
            raise ValueError("the checkpoint's prompt stream was prioritised (rollout.prompt_priority); resume with "
                             "the same setting or start a new run")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        # Checkpoints written before resting existed have no "resting" key: nothing rests.
        self.resting = {int(i) for i in state.get("resting", [])}
        if any(not 0 <= i < len(self.rows) for i in self.resting):
            raise ValueError(f"checkpoint's prompt stream rests rows outside the prompt set (0..{len(self.rows) - 1})")
        self._order = self._epoch_order()
