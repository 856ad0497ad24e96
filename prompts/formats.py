"""The registry of prompt formats: `rollout.prompts.format` (and `eval.prompts.format`) name a loader here.

A loader is `loader(source, base_dir) -> rows`: `source` is the recipe's `PromptSource` (its `path`, `split`,
`prompts`, `coco` fields, whichever the format reads), `base_dir` the recipe's folder (relative paths resolve
against it). Formats of this package are registered below; a world adds its own with `register_prompt_format`,
or names it in `LAZY_PROMPT_FORMATS` so the world is imported only when a recipe asks for the format (as
`rollouts/presets.py` does for generator presets). An unknown format is an error listing the known ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prompts.coco_prompts import coco_prompt_rows
from prompts.edit_prompts import EditPromptError, load_edit_jsonl
from prompts.row_files import PromptSetError, load_jsonl, load_ocr_txt, resolve_path

PromptRows = list[dict[str, Any]]
PromptFormatLoader = Callable[[Any, "Path | None"], PromptRows]

_LOADERS: dict[str, PromptFormatLoader] = {}

# Formats imported on first use: name -> "module:function" (a PromptFormatLoader). The worlds' formats
# (`prompt_formats` in a world's manifest, worlds/manifest.py: shapes, shapes_edit) are found the same way.
LAZY_PROMPT_FORMATS: dict[str, str] = {}


def _lazy_formats() -> dict[str, str]:
    import worlds

    return {**worlds.contributions("prompt_formats"), **LAZY_PROMPT_FORMATS}


def register_prompt_format(name: str, loader: PromptFormatLoader) -> None:
    """Make `format: <name>` load rows with `loader`. Registering another loader under a taken name is an error
    (two worlds claiming one format would otherwise depend on import order); the same loader again is a no-op."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a prompt format needs a non-empty string name, got {name!r}")
    current = _LOADERS.get(name)
    if current is not None and current is not loader:
        raise ValueError(f"prompt format {name!r} is already registered (by {_describe(current)})")
    _LOADERS[name] = loader


def known_prompt_formats() -> list[str]:
    """Every format a recipe may name: registered ones and the lazily imported ones of `LAZY_PROMPT_FORMATS`."""
    return sorted(set(_LOADERS) | set(_lazy_formats()))


def prompt_format_loader(name: str) -> PromptFormatLoader:
    """The loader of format `name`, importing the world that owns it on first use."""
    lazy = _lazy_formats() if name not in _LOADERS else {}
    if name not in _LOADERS and name in lazy:
        module, _, attr = lazy[name].partition(":")
        register_prompt_format(name, getattr(importlib.import_module(module), attr))
    if name not in _LOADERS:
        raise PromptSetError(f"unknown prompt format {name!r}; known: {', '.join(known_prompt_formats())}")
    return _LOADERS[name]


def _describe(loader: Callable) -> str:
    return f"{getattr(loader, '__module__', '?')}.{getattr(loader, '__qualname__', repr(loader))}"


def source_path(source: Any, base_dir: Path | None) -> Path:
    """The file a path-based format reads; a missing `path` is an error naming the format."""
    if getattr(source, "path", None) is None:
        raise PromptSetError(f"rollout.prompts: format {source.format!r} needs a 'path'")
    return resolve_path(source.path, base_dir)


# ---- the formats of this package ---------------------------------------------------------------------------

def _inline(source: Any, base_dir: Path | None) -> PromptRows:
    if not source.prompts:
        raise PromptSetError("rollout.prompts: format 'inline' needs a non-empty 'prompts' list")
    return [{"prompt": p} for p in source.prompts]


def _coco_generated(source: Any, base_dir: Path | None) -> PromptRows:
    return coco_prompt_rows(source.coco, base_dir)


def _ocr_txt(source: Any, base_dir: Path | None) -> PromptRows:
    return load_ocr_txt(source_path(source, base_dir))


def _jsonl(source: Any, base_dir: Path | None) -> PromptRows:
    return load_jsonl(source_path(source, base_dir))


def _geneval_jsonl(source: Any, base_dir: Path | None) -> PromptRows:
    return load_jsonl(source_path(source, base_dir), geneval=True)


def _edit_jsonl(source: Any, base_dir: Path | None) -> PromptRows:
    path = source_path(source, base_dir)
    try:
        return load_edit_jsonl(path)
    except EditPromptError as exc:
        raise PromptSetError(str(exc)) from None


register_prompt_format("inline", _inline)
register_prompt_format("coco_generated", _coco_generated)
register_prompt_format("ocr_txt", _ocr_txt)
register_prompt_format("jsonl", _jsonl)
register_prompt_format("geneval_jsonl", _geneval_jsonl)
register_prompt_format("edit_jsonl", _edit_jsonl)
