"""The shapes-editing generator: the shapes world's model (`rollouts/shapes/preset.py`) with an editing prompt.

Same AR (Qwen3, 2 layers, hidden 128), same renderer (SANA, 2 layers, 4×4×16 latent, PCA patch VAE), same k-means
VQ image tokenizer (K = 64, N = 16): the VQ now also tokenizes the reference. The text tokenizer adds the
instruction words (`EDIT_WORDS`) and the vision markers. The prompt is BLIP3o-NEXT-edit's layout without chat turns
(the tiny AR reads ~25 tokens): `{instruction} <|vision_start|> 16 reference tokens <|vision_end|> <im_start><S0>`.
The renderer takes no reference latents here (both options off): in this world the tokens say everything.
"""

from __future__ import annotations

import dataclasses

from rollouts.generator import NativeImageGenerator
from rollouts.presets import build_components
from rollouts.reference_image import EditTemplateConfig, add_reference_markers
from rollouts.shapes.model import fit_patch_autoencoder
from rollouts.shapes.preset import NUM_IMAGE_TOKENS, SHAPES_PROMPT_TEMPLATE, shapes_spec
from rollouts.shapes.prompts import world_vocabulary
from rollouts.shapes.vq_tokenizer import ShapesVQTokenizer, VQTokenizerConfig
from rollouts.shapes_edit.edits import EDIT_WORDS
from rollouts.text_tokenizer import build_word_tokenizer

SHAPES_EDIT_TEMPLATE = EditTemplateConfig(use_chat_template=False, system_message=None,
                                          instruction_template="{instruction} <image>")


def shapes_edit_tokenizer(num_image_tokens: int = NUM_IMAGE_TOKENS):
    tok = build_word_tokenizer(sorted(set(world_vocabulary()) | set(EDIT_WORDS)), num_image_tokens)
    add_reference_markers(tok)  # appended after the image vocabulary
    return tok


def shapes_edit_spec():
    return dataclasses.replace(shapes_spec(), tokenizer_factory=shapes_edit_tokenizer)


def build_shapes_edit_generator(seed: int = 0, *, codec_fit_scenes: int = 1000
                                ) -> tuple[NativeImageGenerator, ShapesVQTokenizer]:
    """A fresh (untrained) editing generator on CPU, float32, with fitted VAE and VQ, editing enabled."""
    spec = shapes_edit_spec()
    lm, tokenizer, vocab, renderer = build_components(spec, seed, "cpu")
    renderer.vae = fit_patch_autoencoder(num_scenes=codec_fit_scenes, seed=seed)
    vq = ShapesVQTokenizer.fit(VQTokenizerConfig(num_codes=NUM_IMAGE_TOKENS, num_fit_scenes=codec_fit_scenes,
                                                 seed=seed))
    gen = NativeImageGenerator(lm, tokenizer, vocab, renderer, spec.tokens_per_image, SHAPES_PROMPT_TEMPLATE)
    gen.enable_editing(vq, SHAPES_EDIT_TEMPLATE)
    gen.load_report = {"source": "rollouts.shapes_edit.model.build_shapes_edit_generator", "seed": seed}
    return gen, vq
