"""Reading prompt rows from the field's file formats; a bad row is an error naming the file and the line number.

- `ocr_txt` (Flow-GRPO `dataset/ocr/*.txt`): one prompt a line, the target text inside double quotes.
- `geneval_jsonl` (GenEval `evaluation_metadata.jsonl`, Flow-GRPO `dataset/geneval/*_metadata.jsonl`): rows with
  `tag`, `prompt`, `include` (and optionally `exclude`).
- `jsonl`: any rows with at least `prompt`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from prompts.vocabulary import GENEVAL_TAGS


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
