"""The shapes-editing generator: the shapes world's model (`worlds/shapes/preset.py`) with an editing prompt.

Same AR (Qwen3, 2 layers, hidden 128), same renderer (SANA, 2 layers, 4×4×16 latent, PCA patch VAE), same k-means
VQ image tokenizer (K = 64, N = 16): the VQ now also tokenizes the reference. The text tokenizer adds the
instruction words (`EDIT_WORDS`) and the vision markers. The prompt is BLIP3o-NEXT-edit's layout without chat turns
(the tiny AR reads ~25 tokens): `{instruction} <|vision_start|> 16 reference tokens <|vision_end|> <im_start><S0>`.
The renderer takes no reference latents here (both options off): in this world the tokens say everything.

Two constructors:
- `edit_generator_from_text_to_image(dir)`: what editing SFT starts from. The committed text-to-image checkpoint
  (`worlds/shapes/pretrained`), whose renderer already draws what the tokens say (99.5% on ground truth), with
  its text vocabulary widened to the editing tokenizer: every LM weight is copied, embedding and output-head rows
  are matched by token *string* (the new words and markers get the mean row), and the renderer, VAE and VQ are the
  checkpoint's own, so the AR keeps emitting the codes the renderer was trained on.
- `build_shapes_edit_generator(seed)`: a fresh, random one (kept for tests and ablations).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from rollouts.generator import NativeImageGenerator
from rollouts.presets import build_components
from rollouts.reference_image import EditTemplateConfig, add_reference_markers
from worlds.shapes.model import PRETRAINED_DIR, fit_patch_autoencoder, load_shapes_model
from worlds.shapes.preset import NUM_IMAGE_TOKENS, SHAPES_PROMPT_TEMPLATE, shapes_spec
from worlds.shapes.prompts import world_vocabulary
from worlds.shapes.image_tokenizer import ShapesImageTokenizer
from worlds.shapes.vq_tokenizer import ShapesVQTokenizer, VQTokenizerConfig
from worlds.shapes_edit.edits import EDIT_WORDS
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
    gen.enable_editing(ShapesImageTokenizer(vq), SHAPES_EDIT_TEMPLATE)
    gen.load_report = {"source": "worlds.shapes_edit.model.build_shapes_edit_generator", "seed": seed}
    return gen, vq


def _rows_by_token(new: torch.Tensor, old: torch.Tensor, new_tok, old_tok) -> list[str]:
    """Copy `old`'s row of every token string both tokenizers know into `new`; mean row elsewhere → new tokens."""
    old_vocab = old_tok.get_vocab()
    fresh = []
    with torch.no_grad():
        new.copy_(old.mean(dim=0, keepdim=True).expand_as(new))
        for token, i in new_tok.get_vocab().items():
            j = old_vocab.get(token)
            if j is None:
                fresh.append(token)
            else:
                new[i] = old[j]
    return sorted(fresh)


def edit_generator_from_text_to_image(directory: str | Path = PRETRAINED_DIR
                                      ) -> tuple[NativeImageGenerator, ShapesVQTokenizer]:
    """The text-to-image checkpoint at `directory` as an editing generator (see the module docstring).
    `gen.load_report["new_tokens"]` lists the tokens that got the mean row."""
    t2i, vq = load_shapes_model(directory)
    spec = shapes_edit_spec()
    lm, tokenizer, vocab, _ = build_components(spec, 0, "cpu")
    old_state = t2i.lm.state_dict()
    new_state = lm.state_dict()
    if set(old_state) != set(new_state):
        raise ValueError(f"{directory}: LM parameters differ from the shapes-edit spec's: "
                         f"{sorted(set(old_state) ^ set(new_state))}")
    fresh: list[str] = []
    for name, value in new_state.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            fresh = _rows_by_token(value, old_state[name], tokenizer, t2i.tokenizer)
        elif value.shape != old_state[name].shape:
            raise ValueError(f"{directory}: parameter {name} has shape {tuple(old_state[name].shape)}, "
                             f"the shapes-edit spec wants {tuple(value.shape)}")
        else:
            with torch.no_grad():
                value.copy_(old_state[name])
    gen = NativeImageGenerator(lm, tokenizer, vocab, t2i.renderer, t2i.tokens_per_image, SHAPES_PROMPT_TEMPLATE)
    gen.enable_editing(ShapesImageTokenizer(vq), SHAPES_EDIT_TEMPLATE)
    gen.load_report = {"source": "worlds.shapes_edit.model.edit_generator_from_text_to_image",
                       "text_to_image": str(directory), "new_tokens": fresh}
    return gen, vq
