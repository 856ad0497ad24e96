"""Janus-Pro presets (`model: {source: preset, preset: NAME}`), random weights, no hub:

| name | LM (Llama) | K | N | VQ decoder | image |
|---|---|---|---|---|---|
| `janus-pro-tiny` | 2 layers, hidden 64 | 64 | 16 (4x4) | 4 levels, 32 channels | 32 px |
| `janus-pro-small` | 4 layers, hidden 512 | 16,384 | 64 (8x8) | 4 levels, 32 channels | 64 px |
| `janus-pro-1b-shape` | Janus-Pro-1B's: 24 layers, hidden 2048, 16 heads, MLP 5632, text vocab 102,400 | 16,384 | 576 (24x24) | 5 levels (1,1,2,2,4) x 128 | 384 px |

Both go through the same path as a real checkpoint: the tiny one is written in the released layout
(`rollouts/janus/tiny_checkpoint.py`) to a temporary folder and loaded by `load_janus_checkpoint`; the 1B shape is
built in memory from transformers' `JanusConfig` (for GPU throughput benchmarks only; its understanding tower is
cut to one layer since text-to-image never runs it). The 1B shape numbers are from the released
deepseek-community/Janus-Pro-1B config as we remember it (DeepSeek-LLM-1.5B body): not checked against the file.
"""

from __future__ import annotations

import tempfile

import torch

from rollouts.config import ModelConfig


def janus_pro_tiny(cfg: ModelConfig):
    from rollouts.janus.checkpoint import load_janus_checkpoint
    from rollouts.janus.tiny_checkpoint import write_tiny_janus_checkpoint

    with tempfile.TemporaryDirectory(prefix="janus-pro-tiny-") as tmp:
        write_tiny_janus_checkpoint(tmp, seed=cfg.seed)
        gen = load_janus_checkpoint(tmp, cfg)
    gen.load_report["source"] = f"preset:janus-pro-tiny (seed {cfg.seed})"
    return gen


def janus_pro_small(cfg: ModelConfig):
    """For CPU throughput benchmarks: a real-size codebook and a mid-size LM (the `small` BLIP3o preset's width)."""
    from rollouts.janus.checkpoint import load_janus_checkpoint
    from rollouts.janus.tiny_checkpoint import write_tiny_janus_checkpoint

    with tempfile.TemporaryDirectory(prefix="janus-pro-small-") as tmp:
        write_tiny_janus_checkpoint(tmp, seed=cfg.seed, tokens_side=8, num_codes=16384, hidden=512, layers=4)
        gen = load_janus_checkpoint(tmp, cfg)
    gen.load_report["source"] = f"preset:janus-pro-small (seed {cfg.seed})"
    return gen


def janus_pro_1b_shape(cfg: ModelConfig):
    from transformers import JanusConfig, JanusForConditionalGeneration, JanusImageProcessor, JanusProcessor

    from rollouts.janus.checkpoint import assemble_janus_generator
    from rollouts.janus.tiny_checkpoint import BOI, CHAT_TEMPLATE, IMAGE_TOKEN, build_tokenizer

    tokenizer = build_tokenizer()
    text = dict(model_type="llama", vocab_size=102_400, hidden_size=2048, intermediate_size=5632,
                num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=16384,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=1024, num_hidden_layers=1, num_attention_heads=16, image_size=384, patch_size=16,
                  projection_dim=2048, depth=2, num_image_tokens=576)
    vq = dict(embed_dim=8, num_embeddings=16384, latent_channels=256, base_channels=128,
              channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=2, projection_dim=2048,
              image_token_embed_dim=2048, num_hidden_layers=2)
    config = JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else (
        "cpu" if cfg.device == "auto" else cfg.device)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(cfg.seed)
        model = JanusForConditionalGeneration(config).eval()
    processor = JanusProcessor(image_processor=JanusImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3),
                               tokenizer=tokenizer, chat_template=CHAT_TEMPLATE, num_image_tokens=576)
    generation = {"bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id,
                  "guidance_scale": 5.0, "generation_kwargs": {"boi_token_id": tokenizer.convert_tokens_to_ids(BOI)}}
    gen = assemble_janus_generator(model, processor, generation, cfg, f"preset:janus-pro-1b-shape (seed {cfg.seed})")
    gen.generation_config = None  # a preset has no generation_config.json to take sampling from
    return gen
