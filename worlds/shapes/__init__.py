"""The shapes world: nativerl's embedded default world.

Scenes of coloured shapes on a 4x4 grid (`world`), GenEval-style prompts with a train / held-out split
(`prompts`), a k-means VQ image tokenizer (`vq_tokenizer`, behind the generic interface in `image_tokenizer`), a
PCA patch autoencoder for the renderer (`patch_autoencoder`), the small BLIP3o-NEXT-shaped generator built from
them (`preset`, `model`), the committed pre-trained checkpoints (`pretrained/`, `pretrained_conditioned/`), the
exact detector that GenEval scoring reads (`detector`), the SFT that made the checkpoints (`sft`) and the held-out
GenEval evaluation (`evaluate`).

`WORLD` below is everything the generic packages learn about it (worlds/manifest.py); nothing else plugs it in.
"""

from worlds.manifest import RecipeKind, World

WORLD = World(
    name="shapes",
    description="coloured shapes on a 4x4 grid, GenEval-style prompts, exact detector",
    prompt_formats={"shapes": "worlds.shapes.prompts:load_shapes_format"},
    presets={"shapes": "worlds.shapes.preset:shapes_spec"},
    component_classes={"PatchAutoencoder": "worlds.shapes.patch_autoencoder:PatchAutoencoder"},
    image_tokenizers={"ShapesVQTokenizer": "worlds.shapes.image_tokenizer:ShapesImageTokenizer"},
    detectors={"shapes": "worlds.shapes.detector:ShapesDetector"},
    recipe_kinds={"sft": RecipeKind(schema="worlds.shapes.sft:SFTConfig", run="worlds.shapes.sft:run_recipe",
                                    label="SFT")},
)
