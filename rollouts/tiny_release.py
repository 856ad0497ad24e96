"""Tiny checkpoints in the exact layout of each released BLIP3o-NEXT variant (for tests and `nativerl doctor`).

No released weights can be downloaded here, so this writes miniature models (the `tiny` preset's shapes) the way
upstream's code saves them (branch BLIP3o-NEXT: `blip3o_arch.py::initialize_vision_tokenizer`,
`blip3o_qwen*.py`, HF `save_pretrained` under transformers 4.54; branch BLIP3o-NEXT-edit for `edit`):

    <root>/<variant>/config.json              Qwen3Config fields as transformers 4.51-4.54 wrote them (`rope_theta`,
                                              `rope_scaling: null`, `torch_dtype`), `model_type` / `architectures`
                                              of the variant's class, upstream's extra fields (diffusion_name_or_path
                                              = the SANA hub id, mm_vision_tower, image_start_tag_id,
                                              image_end_tag_id, scale_start/end_token_id, num_scale_tokens,
                                              image_start/end_token_id, num_image_tokens, num_new_tokens, ...)
    <root>/<variant>/generation_config.json   Qwen3's (do_sample, temperature 0.6, top_k 20, top_p 0.95)
    <root>/<variant>/model-0000i-of-0000n.safetensors + model.safetensors.index.json
                                              model.embed_tokens/layers/norm (no lm_head.*: tied, as Qwen3-1.7B),
                                              model.diffusion_connector.*, model.vision_tower.* (TA-Tok encoder),
                                              model.sana.* and model.sana_vae.* (the renderer is a submodule, so
                                              save_pretrained writes it into the shards), and for `edit`:
                                              model.und_image_vae_connector.* and the unused
                                              model.und_image_vae_as_noise_connector.0.*
    <root>/<variant>/tokenizer.json ...       Qwen-style text vocabulary (with <|vision_start|>, <|vision_end|>,
                                              <|image_pad|>), then `<im_start>` `<im_end>` (special), `<S0>`..`<S2>`,
                                              `<I0>`..`<I{K-1}>` (plain added tokens), as upstream adds them
    <root>/SANA1.5_1.6B_1024px_diffusers/             the diffusers folder `diffusion_name_or_path` names (transformer/,
                                              vae/, scheduler/), with the *base* weights: the shards' SANA weights
                                              differ (upstream trains caption_projection), so a test can tell which
                                              source the loader used
    <root>/ta_tok.pth (+ siglip-config/)      for `edit`: a tiny TA-Tok file in the released layout

Unverified details (the real files could not be inspected): whether a released config says `blip3o_qwen` or
`blip3o_qwen_grpo` for the GRPO variants (both load), the exact generation_config.json values, and the shape of the
unused `und_image_vae_as_noise_connector` (the loader skips it whatever its shape).

    python -m rollouts.tiny_release OUT_DIR      writes all four variants + the SANA folder + ta_tok.pth
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from seeding import derive_seed

VARIANTS = ("sft", "grpo-geneval", "grpo-text", "edit")
# Which released checkpoint each tiny variant stands for (shared notes blip3o-next.md §5).
RELEASED_NAMES = {"sft": "BLIP3o/BLIP3o-NEXT-SFT-3B", "grpo-geneval": "BLIP3o/BLIP3o-NEXT-GRPO-Geneval-3B",
                  "grpo-text": "BLIP3o/BLIP3o-NEXT-GRPO-TexT-3B", "edit": "BLIP3o/BLIP3o-NEXT-edit-VAE"}
SANA_HUB_ID = "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers"
# Named like the hub id's last part and placed next to the checkpoints: the documented place the loader looks
# (rollouts/blip3o_checkpoint.py::resolve_diffusion_dir), so the tiny checkpoints load with no diffusion_path.
TINY_SANA_DIR = SANA_HUB_ID.rsplit("/", 1)[1]
# Qwen3's text-side special tokens (ids 151643.. in the real tokenizer), before BLIP3o-NEXT's additions.
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>")
QWEN3_GENERATION_CONFIG = {"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95}


@dataclass(frozen=True)
class TinyRelease:
    checkpoint: Path  # the checkpoint folder (what model.path points at)
    diffusion: Path  # the SANA diffusers folder (what model.diffusion_path points at)
    image_tokenizer: Path | None  # the TA-Tok file (edit only)


def build_release_tokenizer(num_image_tokens: int, trailing_tokens: tuple[str, ...] = ()):
    """Byte-level text vocabulary + Qwen's specials, then upstream's image vocabulary, added as upstream adds it
    (`<im_start>`/`<im_end>` special, scale and image tokens plain); `trailing_tokens` are appended after `<I..>`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from rollouts.text_tokenizer import CHAT_TEMPLATE
    from rollouts.vocab import IM_END, IM_START, NUM_SCALE_TOKENS, image_token, scale_token

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (IM_START, IM_END)])
    plain = [scale_token(i) for i in range(NUM_SCALE_TOKENS)] + [image_token(k) for k in range(num_image_tokens)]
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain + list(trailing_tokens)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(lm_cfg, tokenizer, vocab, variant: str) -> dict:
    """config.json as upstream's save_pretrained (transformers 4.54) writes it."""
    c = lm_cfg
    grpo = variant.startswith("grpo")
    out = {
        "architectures": ["blip3oQwenForGRPOLM" if grpo else "blip3oQwenForCausalLM"],
        "model_type": "blip3o_qwen_grpo" if grpo else "blip3o_qwen",
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"), "head_dim": c.head_dim, "hidden_act": "silu",
        "hidden_size": c.hidden_size, "initializer_range": 0.02, "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_position_embeddings, "max_window_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads, "num_hidden_layers": c.num_hidden_layers,
        "num_key_value_heads": c.num_key_value_heads, "rms_norm_eps": c.rms_norm_eps,
        "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": True,
        "torch_dtype": "float32", "transformers_version": "4.54.1", "use_cache": True, "use_sliding_window": False,
        "vocab_size": c.vocab_size,
        # upstream's additions (blip3o_arch.py, train.py model_args)
        "diffusion_name_or_path": SANA_HUB_ID, "mm_vision_tower": "TA-Tok", "vision_tower_pretrained": "",
        "mm_use_im_start_end": True, "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "flat", "mm_hidden_size": 1152, "use_mm_proj": True,
        "tokenizer_padding_side": "left", "tokenizer_model_max_length": 1024,
        "image_start_tag_id": vocab.im_start_id, "image_end_tag_id": vocab.im_end_id,
        "scale_start_token_id": vocab.scale_ids[0], "scale_end_token_id": vocab.scale_ids[-1],
        "num_scale_tokens": len(vocab.scale_ids),
        "image_start_token_id": vocab.image_token_offset,
        "image_end_token_id": vocab.image_token_offset + vocab.num_image_tokens - 1,
        "num_image_tokens": vocab.num_image_tokens, "num_new_tokens": vocab.num_image_tokens,
    }
    if variant == "edit":
        out.update({"use_und_image_vae": True, "use_und_image_vae_as_noise": True,
                    "only_use_und_image_vae_as_noise": False})
    return out


def write_tiny_release(root: str | Path, variant: str, *, seed: int = 0, max_shard_bytes: int = 150_000,
                       trailing_tokens: tuple[str, ...] = ()) -> TinyRelease:
    """Write `<root>/<variant>/` (and the shared tiny SANA folder, `<root>/ta_tok.pth`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from rollouts.blip3o_checkpoint import save_shards
    from rollouts.connector import build_connector
    from rollouts.presets import resolve_component_class, tiny_spec
    from rollouts.vocab import ImageVocab

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    root = Path(root)
    out = root / variant
    out.mkdir(parents=True, exist_ok=True)
    spec = tiny_spec()
    k = spec.num_image_tokens
    tokenizer = build_release_tokenizer(k, trailing_tokens)
    vocab = ImageVocab.from_tokenizer(tokenizer, k)
    lm_kwargs = {**spec.lm_config, "tie_word_embeddings": True}
    with torch.random.fork_rng():
        # Base renderer: the same for every variant (one SANA folder); fine-tuned parts: per variant.
        torch.manual_seed(1234)
        transformer = SanaTransformer2DModel(**spec.transformer_config)
        vae = resolve_component_class(spec.vae_class)(**spec.vae_config)
        torch.manual_seed(derive_seed(seed, "tiny_weights", VARIANTS.index(variant)))
        lm = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                          **lm_kwargs))
        caption = int(transformer.config.caption_channels)
        connector = build_connector(lm.config.hidden_size, caption)
        tuned_caption = {k2: v + 0.01 * torch.randn_like(v)
                         for k2, v in transformer.caption_projection.state_dict().items()}
        vision_tower = {"model.vision_tower.vision_tower.encoder.embeddings.patch_embedding.weight":
                        torch.randn(8, 3, 4, 4), "model.vision_tower.vision_tower.codebook": torch.randn(k, 8)}
        edit_parts = {}
        if variant == "edit":
            c = int(transformer.config.in_channels)
            edit_parts = {f"model.und_image_vae_connector.{n}": v
                          for n, v in build_connector(c, caption).state_dict().items()}
            noise_conn = torch.nn.Linear(2 * c, c)
            edit_parts.update({f"model.und_image_vae_as_noise_connector.0.{n}": v
                               for n, v in noise_conn.state_dict().items()})

    sana_dir = root / TINY_SANA_DIR
    if not (sana_dir / "transformer" / "config.json").exists():
        transformer.save_pretrained(str(sana_dir / "transformer"))
        vae.save_pretrained(str(sana_dir / "vae"))
        FlowMatchEulerDiscreteScheduler(**spec.scheduler_config).save_pretrained(str(sana_dir / "scheduler"))

    state = {f"model.{n.removeprefix('model.')}": v for n, v in lm.state_dict().items() if n != "lm_head.weight"}
    state.update({f"model.diffusion_connector.{n}": v for n, v in connector.state_dict().items()})
    sana_state = transformer.state_dict()
    sana_state.update({f"caption_projection.{n}": v for n, v in tuned_caption.items()})
    state.update({f"model.sana.{n}": v for n, v in sana_state.items()})
    state.update({f"model.sana_vae.{n}": v for n, v in vae.state_dict().items()})
    state.update(vision_tower)
    state.update(edit_parts)
    save_shards({n: v.detach().contiguous().clone() for n, v in state.items()}, out, max_shard_bytes)
    (out / "config.json").write_text(json.dumps(_config(lm.config, tokenizer, vocab, variant), indent=2))
    gen_cfg = {"bos_token_id": tokenizer.pad_token_id, "eos_token_id": [tokenizer.eos_token_id,
                                                                        tokenizer.pad_token_id],
               "pad_token_id": tokenizer.pad_token_id, **QWEN3_GENERATION_CONFIG, "transformers_version": "4.54.1"}
    (out / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2))
    tokenizer.save_pretrained(str(out))

    ta_tok = None
    if variant == "edit":
        ta_tok = root / "ta_tok.pth"
        if not ta_tok.exists():
            from transformers import SiglipVisionConfig

            from rollouts.ta_tok_checkpoint import write_tiny_ta_tok_checkpoint

            teacher = root / "siglip-config"  # the file names its teacher; a local folder keeps it offline
            SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                               image_size=32, patch_size=8).save_pretrained(teacher)
            write_tiny_ta_tok_checkpoint(ta_tok, num_codes=k, image_size=32, patch_size=8, teacher=str(teacher))
    return TinyRelease(out, sana_dir, ta_tok)


def write_all(root: str | Path) -> dict[str, TinyRelease]:
    return {v: write_tiny_release(root, v) for v in VARIANTS}


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) != 2:
        sys.exit("usage: python -m rollouts.tiny_release OUT_DIR")
    for name, rel in write_all(sys.argv[1]).items():
        print(f"{name}: {rel.checkpoint} (stands for {RELEASED_NAMES[name]})")
    print(f"SANA folder: {Path(sys.argv[1]) / TINY_SANA_DIR}")
