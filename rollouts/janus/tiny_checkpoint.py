"""A tiny random Janus-Pro checkpoint in the released transformers layout, for tests and benchmarks.

`python -m rollouts.janus.tiny_checkpoint DIR [--tokens-side 4] [--seed 0]` writes what
`JanusForConditionalGeneration.save_pretrained` + `JanusProcessor.save_pretrained` write for the released
`deepseek-community/Janus-Pro-*` folders: `config.json` (model_type "janus", with text/vision/vq sub-configs),
`model.safetensors`, `generation_config.json`, the tokenizer files, the image processor and the processor config
with its chat template. Every module is transformers' own (`JanusConfig`, `JanusForConditionalGeneration`,
`JanusImageProcessor`, `JanusProcessor`); only the sizes are tiny and the tokenizer is a byte-level BPE built
offline (no hub here) carrying Janus's special tokens.

Sizes (defaults): Llama 2 layers, hidden 64; SigLIP-style vision tower 1 layer, hidden 16; VQ codebook K = 64
codes of dimension 8; 4x4 = 16 image tokens per image (the real model: 24x24 = 576), decoded by a 4-level VQ
decoder (8x upsampling) to 32x32 pixels (the real model: 16x to 384x384).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

# Janus's special tokens (DeepSeek-LLM tokenizer names, as in the released tokenizer).
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
IMAGE_TOKEN = "<image_placeholder>"
BOI = "<begin_of_image>"
EOI = "<end_of_image>"
ROLES = ("<|User|>", "<|Assistant|>")

# The released conversation format for generation ("deepseek" SFT format, empty system prompt):
# "<|User|>: {prompt}\n\n<|Assistant|>:" — the processor then appends <begin_of_image>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<|User|>: ' }}{% else %}{{ '<|Assistant|>: ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\n\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|Assistant|>:' }}{% endif %}"
)


def build_tokenizer():
    """Byte-level BPE (256 byte symbols, no merges) + Janus's specials; BOS is added to every encoded text."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, PAD, IMAGE_TOKEN, BOI, EOI, *ROLES]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   padding_side="left",
                                   extra_special_tokens={"image_token": IMAGE_TOKEN, "boi_token": BOI,
                                                         "eoi_token": EOI})


def tiny_config(vocab_size: int, tokenizer, *, tokens_side: int = 4, num_codes: int = 64, hidden: int = 64,
                layers: int = 2):
    from transformers import JanusConfig

    patch = 8
    text = dict(model_type="llama", vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    # num_image_tokens and image_size / patch_size fix the generated grid: tokens_side**2 tokens.
    vision = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=tokens_side * patch,
                  patch_size=patch, projection_dim=hidden, depth=2, num_image_tokens=tokens_side ** 2)
    vq = dict(embed_dim=8, num_embeddings=num_codes, latent_channels=32, base_channels=32,
              channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, projection_dim=hidden,
              image_token_embed_dim=hidden, num_hidden_layers=2)
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                       image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))


def write_tiny_janus_checkpoint(directory: str | Path, *, seed: int = 0, tokens_side: int = 4,
                                num_codes: int = 64, hidden: int = 64, layers: int = 2) -> Path:
    """Write the tiny random checkpoint into `directory` (created) and return it."""
    from transformers import GenerationConfig, JanusForConditionalGeneration, JanusImageProcessor, JanusProcessor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = tiny_config(len(tokenizer), tokenizer, tokens_side=tokens_side, num_codes=num_codes, hidden=hidden,
                         layers=layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = JanusForConditionalGeneration(config).eval()
        # transformers' init leaves the generation head near zero (std 0.02 over a 64-wide layer): the tiny
        # model would sample uniformly and every CFG branch would agree. Larger random head weights give
        # peaked, prompt-dependent distributions, so guidance and the parity tests have something to test.
        with torch.no_grad():
            for p in model.model.generation_head.parameters():
                p.normal_(0.0, 0.1)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=1.0, guidance_scale=5.0,
        generation_kwargs={"boi_token_id": tokenizer.convert_tokens_to_ids(BOI)})
    model.save_pretrained(directory)
    # The generation decoder outputs [-1, 1]: mean = std = 0.5 undo it in `postprocess` (the released values).
    image_processor = JanusImageProcessor(size={"height": tokens_side * 8, "width": tokens_side * 8},
                                          image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = JanusProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                               num_image_tokens=tokens_side ** 2)
    processor.save_pretrained(directory)
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokens-side", type=int, default=4, help="image tokens per side (tokens = side**2)")
    args = parser.parse_args(argv)
    out = write_tiny_janus_checkpoint(args.directory, seed=args.seed, tokens_side=args.tokens_side)
    files = sorted(p.name for p in out.iterdir())
    print(json.dumps({"directory": str(out), "files": files}))


if __name__ == "__main__":
    main()
