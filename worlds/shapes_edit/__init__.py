"""Shapes editing: instructions with an exact checker on the shapes world (`edits`), train / held-out rows
(`prompts`), the small editing generator (`model`) and its committed checkpoint (`pretrained/`), the exact
`shapes_edit` reward (`reward`), the editing SFT (`sft`) and the held-out edit evaluation (`evaluate`).
Built on `worlds/shapes/` without changing it.

`WORLD` below is everything the generic packages learn about it (worlds/manifest.py).
"""

from worlds.manifest import RecipeKind, World

WORLD = World(
    name="shapes_edit",
    description="editing instructions on shapes-world scenes, exact edit checker",
    prompt_formats={"shapes_edit": "worlds.shapes_edit.prompts:load_shapes_edit_format"},
    rewards={"shapes_edit": "worlds.shapes_edit.reward:ShapesEditReward"},
    recipe_kinds={"shapes_edit_sft": RecipeKind(schema="worlds.shapes_edit.sft:ShapesEditSFTConfig",
                                                run="worlds.shapes_edit.sft:run_recipe", label="editing SFT")},
)
