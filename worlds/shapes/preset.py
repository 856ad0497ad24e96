"""The `shapes` preset: BLIP3o-NEXT's architecture at the size of the shapes world (random weights).

| part | BLIP3o-NEXT 3B | shapes |
|---|---|---|
| AR | Qwen3-1.7B, text vocab 151,669 | Qwen3, 2 layers, hidden 128, word-level vocab of the world (~50 words) |
| image tokens | TA-Tok, K = 65,536, N = 729 (27x27) | k-means VQ, K = 64, N = 16 (4x4 cells) |
| conditioning | last hidden states of `<S0>` + 729 tokens | last hidden states of `<S0>` + 16 tokens |
| connector | Linear-GELU-Linear-RMSNorm to 2304 | same, to 64 |
| renderer | SANA 1.5 1.6B, 20 layers, 32x32x32 latent | SANA, 2 layers, width 64, 4x4x16 latent, sin-cos positions |
| VAE | DC-AE f32c32 | PCA patch autoencoder f16c16 (`patch_autoencoder.py`) |

`ModelConfig(preset="shapes")` builds this with random weights and an unfitted (all-zero) VAE; the usable model is
the committed pre-trained checkpoint (`worlds.shapes.model.PRETRAINED_DIR`), made by `worlds/shapes/sft.py`.
The prompt template for this world is the caption alone (no chat turns, no instruction sentence), so the tiny AR
reads ~10 tokens per prompt: `SHAPES_PROMPT_TEMPLATE`.
"""

from __future__ import annotations

from rollouts.config import PromptTemplateConfig
from rollouts.presets import GeneratorSpec
from worlds.shapes.prompts import world_vocabulary
from worlds.shapes.world import CELL, GRID, IMAGE_SIZE
from rollouts.text_tokenizer import build_word_tokenizer

NUM_IMAGE_TOKENS = 64  # K: k-means codes
LATENT_CHANNELS = 16  # PCA components per cell (measured: 16 reconstructs every test scene readably, 8 does not)
SHAPES_PROMPT_TEMPLATE = PromptTemplateConfig(use_chat_template=False, system_message=None,
                                              caption_template="{prompt}")


def shapes_tokenizer(num_image_tokens: int = NUM_IMAGE_TOKENS):
    return build_word_tokenizer(world_vocabulary(), num_image_tokens)


def shapes_spec() -> GeneratorSpec:
    return GeneratorSpec(
        lm_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=32, max_position_embeddings=128, tie_word_embeddings=False),
        transformer_config=dict(in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_attention_heads=2,
                                attention_head_dim=32, num_layers=2, num_cross_attention_heads=2,
                                cross_attention_head_dim=32, cross_attention_dim=64, caption_channels=64,
                                sample_size=GRID, patch_size=1,
                                # Sin-cos positions (SANA's own option): a 4x4 latent has no other cue
                                # telling a cell which of the 17 conditioning vectors is its own.
                                interpolation_scale=1),
        vae_class="PatchAutoencoder",
        vae_config=dict(image_size=IMAGE_SIZE, patch_size=CELL, in_channels=3, latent_channels=LATENT_CHANNELS),
        num_image_tokens=NUM_IMAGE_TOKENS,
        tokens_per_image=GRID * GRID,
        tokenizer_factory=shapes_tokenizer,
    )
