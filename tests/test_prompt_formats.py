"""The prompt-format registry: recipes' `rollout.prompts.format` finds its loader by name, a world's format is
imported only when asked for, a new format plugs in without editing `prompts/`, and mistakes are clear errors."""

import subprocess
import sys

import pytest

from prompts import formats
from prompts.formats import known_prompt_formats, prompt_format_loader, register_prompt_format
from prompts.prompt_sets import load_prompt_rows
from prompts.row_files import PromptSetError
from rl.recipe import PromptSource


def test_a_registered_format_loads_rows_through_the_recipe_prompt_source(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "_LOADERS", dict(formats._LOADERS))  # leave the process registry as it was

    def countdown(source, base_dir):
        return [{"prompt": f"{n} circles", "from": str(base_dir)} for n in (3, 2, 1)]

    register_prompt_format("countdown", countdown)
    register_prompt_format("countdown", countdown)  # the same loader again is a no-op
    assert "countdown" in known_prompt_formats()
    # PromptSource's `format` is a Literal today; a loader only reads the fields it needs.
    source = PromptSource.model_construct(format="countdown", max_prompt_chars=4096)
    rows = load_prompt_rows(source, tmp_path)
    assert [r["prompt"] for r in rows] == ["3 circles", "2 circles", "1 circles"]
    assert rows[0]["from"] == str(tmp_path)
    with pytest.raises(ValueError, match="'countdown' is already registered.*countdown"):
        register_prompt_format("countdown", lambda source, base_dir: [])


def test_an_unknown_format_names_the_known_ones():
    with pytest.raises(PromptSetError, match="unknown prompt format 'nope'; known: .*coco_generated.*shapes"):
        prompt_format_loader("nope")


def test_the_shapes_formats_are_imported_by_name_only_when_asked_for():
    # A fresh interpreter: loading an inline prompt set imports no world, asking for `shapes` imports it.
    code = (
        "import sys\n"
        "from prompts.prompt_sets import load_prompt_rows\n"
        "from rl.recipe import PromptSource\n"
        "rows = load_prompt_rows(PromptSource(format='inline', prompts=['a photo of a circle']))\n"
        "assert rows == [{'prompt': 'a photo of a circle'}], rows\n"
        "assert 'worlds.shapes.prompts' not in sys.modules\n"
        "rows = load_prompt_rows(PromptSource(format='shapes', split='heldout'))\n"
        "assert 'worlds.shapes.prompts' in sys.modules\n"
        "from worlds.shapes.prompts import shapes_prompt_rows\n"
        "assert rows == shapes_prompt_rows('heldout') and len(rows) > 10\n"
        "edit = load_prompt_rows(PromptSource(format='shapes_edit', split='heldout'))\n"
        "assert edit and all('instruction' in r and r['reference_image'].dtype.name == 'uint8' for r in edit)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_path_formats_need_a_path():
    with pytest.raises(PromptSetError, match="format 'geneval_jsonl' needs a 'path'"):
        load_prompt_rows(PromptSource(format="geneval_jsonl"))
