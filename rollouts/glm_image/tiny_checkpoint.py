"""A tiny random GLM-Image checkpoint in the released diffusers layout (`zai-org/GLM-Image`), for tests.

`python -m rollouts.glm_image.tiny_checkpoint DIR` writes what `GlmImagePipeline.save_pretrained` writes:
`model_index.json` and one subfolder per pipeline component, each saved by its own library class:

| folder | class | tiny size |
|---|---|---|
| `vision_language_encoder/` | transformers `GlmImageForConditionalGeneration` (the AR prior) | 2 layers, hidden 64 |
| `processor/` | transformers `GlmImageProcessor` (tokenizer + image processor + chat template) | byte-level BPE |
| `transformer/` | diffusers `GlmImageTransformer2DModel` (the DiT, reads the prior token ids) | 1 layer, width 32 |
| `vae/` | diffusers `AutoencoderKL` (8x spatial compression, 16 latent channels) | 4 levels x 8 channels |
| `text_encoder/`, `tokenizer/` | transformers `T5EncoderModel` + `ByT5Tokenizer` (the glyph encoder) | 1 layer, d_model 16 |
| `scheduler/` | diffusers `FlowMatchEulerDiscreteScheduler` (dynamic shifting, as the pipeline's `mu`) | |

The AR's vocabulary is laid out as the released one: the first K + 2 ids are the image codes, then the
image-start and image-end ids (config `image_start_token_id` = K, `image_end_token_id` = K + 1; the real model:
K = 16,384), the generation head has `vision_vocab_size` = K + 2 outputs, and text tokens follow. The tokenizer is
built offline (no hub here) and its chat template is ours, not the released one (which we have not seen).
At 64x64 pixels the processor asks for a 2x2 target grid and its fixed 16x16 preview grid (260 prior tokens),
the pipeline upsamples the 2x2 grid to 4x4 = the DiT's 4x4 patches of the 8x8 latent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

IMAGE_START = "<|image_start|>"  # the processor's bos_token: what every generation prompt ends with
IMAGE_END = "<|image_end|>"
GRID_BOS, GRID_EOS = "<sop>", "<eop>"  # around "H W" grid sizes in the prompt
IMAGE_TOKEN = "<|image|>"
PAD = "<|endoftext|>"
ROLES = ("<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<|image|>' }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
)
TINY_RESOLUTION = 64


def build_tokenizer(num_codes: int):
    """Byte-level BPE whose first num_codes + 2 ids are the image codes, image start and image end."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<|code_{k}|>": k for k in range(num_codes)}
    vocab[IMAGE_START], vocab[IMAGE_END] = num_codes, num_codes + 1
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = [IMAGE_START, IMAGE_END, GRID_BOS, GRID_EOS, IMAGE_TOKEN, PAD, *ROLES]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=IMAGE_START, eos_token=IMAGE_END, pad_token=PAD,
                                   padding_side="left",
                                   extra_special_tokens={"image_token": IMAGE_TOKEN, "grid_bos_token": GRID_BOS,
                                                         "grid_eos_token": GRID_EOS})


def tiny_ar_config(tokenizer, num_codes: int, hidden: int = 64, layers: int = 2):
    from transformers import GlmImageConfig

    head_dim = hidden // 4
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=2048,
                vision_vocab_size=num_codes + 2, pad_token_id=tokenizer.pad_token_id, eos_token_id=num_codes + 1,
                # GLM's 3D rope: temporal / height / width sections of the rotary half-dimension.
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                 "partial_rotary_factor": 1.0})
    vision = dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=32, image_size=64, patch_size=16)
    vq = dict(embed_dim=16, num_embeddings=num_codes, latent_channels=16)
    return GlmImageConfig(text_config=text, vision_config=vision, vq_config=vq,
                          image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                          image_start_token_id=num_codes, image_end_token_id=num_codes + 1)


def build_tiny_pipeline(*, seed: int = 0, num_codes: int = 64, hidden: int = 64, layers: int = 2):
    """The seven components of a `GlmImagePipeline`, tiny and random."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, GlmImagePipeline, GlmImageTransformer2DModel
    from transformers import (ByT5Tokenizer, GlmImageForConditionalGeneration, GlmImageImageProcessor,
                              GlmImageProcessor, T5Config, T5EncoderModel)

    tokenizer = build_tokenizer(num_codes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ar = GlmImageForConditionalGeneration(tiny_ar_config(tokenizer, num_codes, hidden, layers)).eval()
        # transformers' init (std 0.02) leaves a near-uniform head on a 64-wide layer: larger head weights give
        # peaked, prompt-dependent distributions, so the log-prob parity tests compare something.
        with torch.no_grad():
            ar.lm_head.weight.normal_(0.0, 0.1)
        glyph_tokenizer = ByT5Tokenizer()
        t5 = T5Config(vocab_size=len(glyph_tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        text_encoder = T5EncoderModel(t5).eval()
        transformer = GlmImageTransformer2DModel(
            patch_size=2, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=16,
            num_attention_heads=2, text_embed_dim=16, time_embed_dim=32, condition_dim=8,
            prior_vq_quantizer_codebook_size=num_codes).eval()
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 8, 8),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=1, norm_num_groups=4, sample_size=TINY_RESOLUTION,
                            latents_mean=[0.0] * 16, latents_std=[1.0] * 16).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.25, max_shift=0.75,
                                                base_image_seq_len=256, time_shift_type="linear")
    processor = GlmImageProcessor(image_processor=GlmImageImageProcessor(), tokenizer=tokenizer,
                                  chat_template=CHAT_TEMPLATE)
    return GlmImagePipeline(tokenizer=glyph_tokenizer, processor=processor, text_encoder=text_encoder,
                            vision_language_encoder=ar, vae=vae, transformer=transformer, scheduler=scheduler)


def write_tiny_glm_image_checkpoint(directory: str | Path, *, seed: int = 0, num_codes: int = 64) -> Path:
    """Write the tiny random pipeline into `directory` (created) and return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_pipeline(seed=seed, num_codes=num_codes)
    pipe.save_pretrained(directory, safe_serialization=True)
    # The AR's generation config: sampling, as the released one asks of `generate` (do_sample).
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = write_tiny_glm_image_checkpoint(args.directory, seed=args.seed)
    print(json.dumps({"directory": str(out), "files": sorted(str(p.relative_to(out)) for p in out.rglob("*")
                                                               if p.is_file())}))


if __name__ == "__main__":
    main()
