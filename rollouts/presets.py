"""Randomly initialised generators of the BLIP3o-NEXT architecture, built from config (no hub, no weights).

A `GeneratorSpec` names every part's config; `build_from_spec` builds the model with a fixed seed. Presets:

| name | LM (Qwen3) | K | N | renderer | image |
|---|---|---|---|---|---|
| `tiny` | 2 layers, hidden 64, 4/2 heads | 64 | 16 (4×4) | 1-layer SANA, width 16; 3-level AutoencoderDC, 4 ch | 32 px |
| `small` | 4 layers, hidden 512, 8/4 heads | 16,384 | 64 | 2-layer SANA, width 128; AutoencoderDC f8c8 | 64 px |
| `blip3o-next-3b-shape` | Qwen3-1.7B shape: 28 layers, 2048, 16/8 heads, text vocab 151,669 | 65,536 | 729 | SANA-1.6B shape (20 layers, width 2240, caption 2304); DC-AE f32c32 shape | 1024 px |

A world (worlds/, e.g. `shapes`) names its own presets and renderer component classes in its manifest
(worlds/manifest.py); they are looked up there when a name is not one of these. `register_preset` adds one at run
time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rollouts.config import PromptTemplateConfig
from rollouts.text_tokenizer import build_byte_tokenizer

# Components a checkpoint's config.json may name in `_class_name` that are not diffusers classes, beyond those the
# worlds register (`component_classes` in a world's manifest). Lazy "module:Class" strings, imported on first use.
EXTRA_COMPONENT_CLASSES: dict[str, str] = {}


def _component_classes() -> dict[str, str]:
    import worlds

    return {**worlds.contributions("component_classes"), **EXTRA_COMPONENT_CLASSES}


def resolve_component_class(name: str) -> type:
    """A renderer component class by name: diffusers first, then EXTRA_COMPONENT_CLASSES and the worlds'."""
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is not None:
        return cls
    known = _component_classes()
    target = known.get(name)
    if target is None:
        raise ValueError(f"unknown component class {name!r}: not in diffusers, nor registered by a world "
                         f"(worlds/*/__init__.py) or in rollouts.presets.EXTRA_COMPONENT_CLASSES ({sorted(known)})")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class GeneratorSpec:
    """Everything needed to build a random generator. `lm_config` omits vocab_size (taken from the tokenizer)."""

    lm_config: dict[str, Any]
    transformer_config: dict[str, Any]
    vae_class: str
    vae_config: dict[str, Any]
    num_image_tokens: int
    tokens_per_image: int
    tokenizer_factory: Callable[[int], Any] = build_byte_tokenizer  # K -> tokenizer with the image vocabulary
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    # The world's prompt template; None = BLIP3o-NEXT's (ModelConfig.prompt_template, when set, wins).
    prompt_template: PromptTemplateConfig | None = None


def tiny_spec() -> GeneratorSpec:
    return GeneratorSpec(
        lm_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 1024, "tie_word_embeddings": False},
        transformer_config={"in_channels": 4, "out_channels": 4, "num_attention_heads": 2, "attention_head_dim": 8,
                                "num_layers": 1, "num_cross_attention_heads": 2, "cross_attention_head_dim": 8,
                                "cross_attention_dim": 16, "caption_channels": 32, "sample_size": 8, "patch_size": 1},
        vae_class="AutoencoderDC",
        vae_config={"in_channels": 3, "latent_channels": 4, "attention_head_dim": 8, "encoder_block_types": "ResBlock",
                        "decoder_block_types": "ResBlock", "encoder_block_out_channels": (8, 16, 32),
                        "decoder_block_out_channels": (8, 16, 32), "encoder_layers_per_block": (1, 1, 1),
                        "decoder_layers_per_block": (1, 1, 1), "encoder_qkv_multiscales": ((), (), ()),
                        "decoder_qkv_multiscales": ((), (), ()), "scaling_factor": 0.5},
        num_image_tokens=64,
        tokens_per_image=16,
    )


def small_spec() -> GeneratorSpec:
    return GeneratorSpec(
        lm_config={"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4, "num_attention_heads": 8,
                       "num_key_value_heads": 4, "head_dim": 64, "max_position_embeddings": 4096, "tie_word_embeddings": False},
        transformer_config={"in_channels": 8, "out_channels": 8, "num_attention_heads": 4, "attention_head_dim": 32,
                                "num_layers": 2, "num_cross_attention_heads": 4, "cross_attention_head_dim": 32,
                                "cross_attention_dim": 128, "caption_channels": 256, "sample_size": 8, "patch_size": 1},
        vae_class="AutoencoderDC",
        vae_config={"in_channels": 3, "latent_channels": 8, "attention_head_dim": 16, "encoder_block_types": "ResBlock",
                        "decoder_block_types": "ResBlock", "encoder_block_out_channels": (32, 64, 128, 128),
                        "decoder_block_out_channels": (32, 64, 128, 128), "encoder_layers_per_block": (1, 1, 1, 1),
                        "decoder_layers_per_block": (1, 1, 1, 1), "encoder_qkv_multiscales": ((), (), (), ()),
                        "decoder_qkv_multiscales": ((), (), (), ()), "scaling_factor": 0.5},
        num_image_tokens=16384,
        tokens_per_image=64,
    )


QWEN3_TEXT_VOCAB = 151_669  # Qwen3 tokenizer size before BLIP3o-NEXT's additions (shared notes §1)


def blip3o_next_3b_shape_spec() -> GeneratorSpec:
    """Qwen3-1.7B + SANA-1.5-1.6B-shaped random model, for GPU throughput benchmarks (not for CPU tests)."""
    return GeneratorSpec(
        lm_config={"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
                       "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
                       "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
                       "tie_word_embeddings": True, "rms_norm_eps": 1e-6},
        transformer_config={"in_channels": 32, "out_channels": 32, "num_attention_heads": 70, "attention_head_dim": 32,
                                "num_layers": 20, "num_cross_attention_heads": 20, "cross_attention_head_dim": 112,
                                "cross_attention_dim": 2240, "caption_channels": 2304, "mlp_ratio": 2.5, "sample_size": 32,
                                "patch_size": 1},
        vae_class="AutoencoderDC",
        vae_config={"in_channels": 3, "latent_channels": 32, "attention_head_dim": 32,
                        "encoder_block_types": ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
                        "decoder_block_types": ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
                        "encoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
                        "decoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
                        "encoder_layers_per_block": (2, 2, 2, 3, 3, 3), "decoder_layers_per_block": (3, 3, 3, 3, 3, 3),
                        "encoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
                        "decoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
                        "upsample_block_type": "interpolate", "downsample_block_type": "Conv",
                        "decoder_norm_types": ("batch_norm",) * 3 + ("rms_norm",) * 3,
                        "decoder_act_fns": ("relu",) * 3 + ("silu",) * 3, "scaling_factor": 0.41407},
        num_image_tokens=65536,
        tokens_per_image=729,
        tokenizer_factory=lambda k: build_byte_tokenizer(k, text_vocab_size=QWEN3_TEXT_VOCAB),
    )


PRESETS: dict[str, Callable[[], GeneratorSpec]] = {
    "tiny": tiny_spec,
    "small": small_spec,
    "blip3o-next-3b-shape": blip3o_next_3b_shape_spec,
}

# Presets defined in other packages, imported on first use ("module:function" returning a GeneratorSpec). The
# worlds' presets (`presets` in a world's manifest) are found the same way.
LAZY_PRESETS: dict[str, str] = {}


def register_preset(name: str, factory: Callable[[], GeneratorSpec]) -> None:
    PRESETS[name] = factory


def _lazy_presets() -> dict[str, str]:
    import worlds

    return {**worlds.contributions("presets"), **LAZY_PRESETS}


def known_presets() -> list[str]:
    return sorted(set(PRESETS) | set(_lazy_presets()))


def preset_spec(name: str) -> GeneratorSpec:
    if name not in PRESETS:
        lazy = _lazy_presets()
        if name in lazy:
            module, _, attr = lazy[name].partition(":")
            PRESETS[name] = getattr(importlib.import_module(module), attr)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {known_presets()}")
    return PRESETS[name]()


def build_components(spec: GeneratorSpec, seed: int, device: torch.device | str = "cpu"):
    """→ (lm, tokenizer, vocab, renderer), float32, random weights drawn from `seed` (global RNG untouched)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from rollouts.connector import build_connector
    from rollouts.renderer import Renderer
    from rollouts.vocab import ImageVocab

    tokenizer = spec.tokenizer_factory(spec.num_image_tokens)
    vocab = ImageVocab.from_tokenizer(tokenizer, spec.num_image_tokens)
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(seed)
        lm_cfg = Qwen3Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **spec.lm_config)
        lm = Qwen3ForCausalLM(lm_cfg)
        transformer = SanaTransformer2DModel(**spec.transformer_config)
        vae = resolve_component_class(spec.vae_class)(**spec.vae_config)
        connector = build_connector(lm_cfg.hidden_size, int(transformer.config.caption_channels))
    scheduler = FlowMatchEulerDiscreteScheduler(**spec.scheduler_config)
    renderer = Renderer(connector, transformer, vae, scheduler)
    return lm, tokenizer, vocab, renderer
