"""Caption → AR prompt ids: chat template, caption sentence, generation prompt, then `<im_start><S0>`.

BLIP3o-NEXT (blip3o_qwen_inference.py; trl grpo_trainer.py L1434–1456): system "You are a helpful assistant.",
user "Please generate image based on the following caption: {prompt}", add_generation_prompt=True, then the
literal `<im_start><S0>`, left padding, no extra special tokens. We append `<im_start><S0>` by id (not by string)
so the prompt always ends exactly on the first conditioning position, whatever the tokenizer.
"""

from __future__ import annotations

import torch

from rollouts.config import PromptTemplateConfig
from rollouts.vocab import ImageVocab


def prompt_text(prompt: str, template: PromptTemplateConfig, tokenizer) -> str:
    """The text part of the prompt (everything before `<im_start><S0>`)."""
    user = template.caption_template.format(prompt=prompt)
    if not template.use_chat_template:
        return user
    messages = []
    if template.system_message is not None:
        messages.append({"role": "system", "content": template.system_message})
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompts(prompts: list[str], tokenizer, vocab: ImageVocab, template: PromptTemplateConfig,
                   pad_token_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """→ (prompt_ids [B,P] long, prompt_mask [B,P] long), left-padded, each row ending `<im_start><S0>`."""
    if not prompts:
        raise ValueError("encode_prompts got no prompts")
    tail = [vocab.im_start_id, vocab.scale_ids[0]]
    rows = []
    for p in prompts:
        ids = tokenizer(prompt_text(p, template, tokenizer), add_special_tokens=False)["input_ids"]
        rows.append(list(ids) + tail)
    pad = pad_token_id if pad_token_id is not None else (tokenizer.pad_token_id or 0)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask
