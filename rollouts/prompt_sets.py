"""Prompt sets: load rows from the field's file formats, and stream them step by step.

Formats:
- `ocr_txt` (Flow-GRPO `dataset/ocr/*.txt`): one prompt a line, the target text inside double quotes.
- `geneval_jsonl` (GenEval `evaluation_metadata.jsonl`, Flow-GRPO `dataset/geneval/*_metadata.jsonl`): rows with
  `tag`, `prompt`, `include` (and optionally `exclude`).
- `jsonl`: any rows with at least `prompt`.
- `inline`: a list of prompt strings in the recipe.
- `coco_generated`: GenEval-style rows generated from the 80 COCO classes (`rollouts/coco_prompts.py`).
- `edit_jsonl`: editing rows `{instruction, reference_image}` (`rollouts/edit_prompts.py`).
- a world's format (`prompt_formats` in its manifest, worlds/manifest.py), e.g. `shapes` (the shapes world's train
  / held-out prompts) or `shapes_edit` (its editing rows): the world makes the rows for `split`.
A bad row is an error naming the file and the line number.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterator

GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


class PromptSetError(ValueError):
    pass


def load_ocr_txt(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    rows = []
    for lineno, line in enumerate(_read(path).splitlines(), 1):
        text = line.strip()
        if not text:
            continue
        if text.count('"') < 2:
            raise PromptSetError(f"{path}:{lineno}: OCR prompt has no double-quoted target text: {text[:80]!r}")
        rows.append({"prompt": text})
    if not rows:
        raise PromptSetError(f"{path}: no prompts")
    return rows


def _check_clause(clause: Any, where: str, need_count: bool = True) -> None:
    if not isinstance(clause, dict) or "class" not in clause:
        raise PromptSetError(f"{where}: each clause needs a 'class', got {clause!r}")
    if need_count and not isinstance(clause.get("count"), int):
        raise PromptSetError(f"{where}: clause {clause!r} needs an integer 'count'")
    pos = clause.get("position")
    if pos is not None and (not isinstance(pos, (list, tuple)) or len(pos) != 2):
        raise PromptSetError(f"{where}: 'position' must be [relation, index], got {pos!r}")


def jsonl_objects(path: Path, error: type[Exception] = ValueError) -> Iterator[tuple[str, dict[str, Any]]]:
    """("file:line", row) for every non-blank line; a line that is not a JSON object raises `error` naming it."""
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}: not valid JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise error(f"{where}: a row is a JSON object, got {type(row).__name__}")
        yield where, row


def load_jsonl(path: str | Path, *, geneval: bool = False) -> list[dict[str, Any]]:
    path = Path(path)
    _read(path)  # a missing file is a PromptSetError naming it
    rows = []
    for where, row in jsonl_objects(path, PromptSetError):
        if not isinstance(row.get("prompt"), str):
            raise PromptSetError(f"{where}: a row needs a string 'prompt'")
        if geneval:
            if row.get("tag") not in GENEVAL_TAGS:
                raise PromptSetError(f"{where}: 'tag' must be one of {GENEVAL_TAGS}, got {row.get('tag')!r}")
            include = row.get("include")
            if isinstance(include, str):  # Flow-GRPO's HF-dataset export stores it as a JSON string
                include = row["include"] = json.loads(include)
            if not isinstance(include, list) or not include:
                raise PromptSetError(f"{where}: 'include' must be a non-empty list of clauses")
            for clause in include:
                _check_clause(clause, where)
            for clause in row.setdefault("exclude", []):
                _check_clause(clause, where)
        rows.append(row)
    if not rows:
        raise PromptSetError(f"{path}: no rows")
    return rows


def _read(path: Path) -> str:
    if not path.is_file():
        raise PromptSetError(f"prompt file not found: {path}")
    return path.read_text(encoding="utf-8")


def resolve_path(path: str, base: Path | None) -> Path:
    p = Path(path)
    if not p.is_absolute() and base is not None and (base / p).exists():
        return base / p
    return p


def load_prompt_rows(source: Any, base_dir: Path | None = None) -> list[dict[str, Any]]:
    """Rows for a recipe's `PromptSource`. A prompt longer than `source.max_prompt_chars` is refused here (so
    `nativerl validate` catches it): one 100,000-character prompt is tokenised into a context the AR attends over
    for every image token, and took 20 GB before crashing."""
    rows = _load_prompt_rows(source, base_dir)
    limit = getattr(source, "max_prompt_chars", None)
    if limit is not None:
        for i, row in enumerate(rows):
            text = row.get("prompt")
            if isinstance(text, str) and len(text) > limit:
                where = f"{source.path}: row {i + 1}" if getattr(source, "path", None) else f"prompt {i}"
                raise PromptSetError(f"{where}: the prompt has {len(text)} characters; max_prompt_chars is {limit} "
                                     "(rollout.prompts.max_prompt_chars)")
    return rows


def _load_prompt_rows(source: Any, base_dir: Path | None = None) -> list[dict[str, Any]]:
    fmt = source.format
    if fmt == "inline":
        if not source.prompts:
            raise PromptSetError("rollout.prompts: format 'inline' needs a non-empty 'prompts' list")
        return [{"prompt": p} for p in source.prompts]
    import worlds

    world_rows = worlds.lookup("prompt_formats", fmt)
    if world_rows is not None:
        return worlds.load_object(world_rows)(source.split)
    if fmt == "coco_generated":
        from rollouts.coco_prompts import coco_prompt_rows

        return coco_prompt_rows(source.coco, base_dir)
    if source.path is None:
        raise PromptSetError(f"rollout.prompts: format {fmt!r} needs a 'path'")
    path = resolve_path(source.path, base_dir)
    if fmt == "ocr_txt":
        return load_ocr_txt(path)
    if fmt == "edit_jsonl":
        from rollouts.edit_prompts import EditPromptError, load_edit_jsonl

        try:
            return load_edit_jsonl(path)
        except EditPromptError as exc:
            raise PromptSetError(str(exc)) from None
    return load_jsonl(path, geneval=fmt == "geneval_jsonl")


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
            random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
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
