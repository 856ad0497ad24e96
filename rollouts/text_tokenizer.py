"""Offline text tokenizers for randomly initialised presets (there is no model hub here).

Real checkpoints ship their own tokenizer (Qwen3's plus the image vocabulary) and are loaded with
`AutoTokenizer.from_pretrained(checkpoint_dir)`. For presets we build a `PreTrainedTokenizerFast` from the
`tokenizers` library:

- `build_byte_tokenizer(K)`: byte-level (256 byte symbols, no merges), any text encodes.
- `build_word_tokenizer(words, K)`: whole words from a closed vocabulary (the shapes world), short prompts.

Both carry a Qwen-style chat template (`<|im_start|>role\\n...<|im_end|>\\n`) and the image vocabulary
(`<im_start>`, `<im_end>`, `<S0>`..`<S2>`, `<I0>`..`<I{K-1}>`) as added special tokens, in BLIP3o-NEXT order, so
the image ids are contiguous and last. Adding 65,536 added tokens takes ~0.15 s in `tokenizers` (+0.3 s to wrap,
measured on the 2-core CPU); nothing in nativerl string-matches image tokens anyway (ids are arithmetic,
see `rollouts/vocab.py`), they exist so that `decode` and `AutoTokenizer` round-trips show them.
"""

from __future__ import annotations

import re

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rollouts.vocab import image_vocab_tokens

PAD = "<|endoftext|>"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"
UNK = "<unk>"

# Qwen2/Qwen3 chat layout (without tool-calling branches): one turn per message, then the assistant header.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Words the default prompt template and chat roles need, so a word tokenizer never maps them to <unk>.
TEMPLATE_WORDS = ["system", "user", "assistant", "You", "are", "a", "helpful", "assistant", ".", "Please",
                  "generate", "image", "based", "on", "the", "following", "caption", ":"]


def _wrap(tok: Tokenizer, num_image_tokens: int, has_unk: bool) -> PreTrainedTokenizerFast:
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (PAD, TURN_START, TURN_END)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in image_vocab_tokens(num_image_tokens)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=TURN_END,
        unk_token=UNK if has_unk else None,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_byte_tokenizer(num_image_tokens: int, text_vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: ids 0..255 are the byte symbols, then chat specials, then the image vocabulary.

    `text_vocab_size` pads the base vocabulary with never-produced filler entries, so a benchmark model has the
    real LM's vocabulary size (Qwen3: 151,669 before the image tokens) and the image ids sit where they would.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    if text_vocab_size is not None:
        for i in range(len(vocab), text_vocab_size - 3):  # 3 chat specials are added below
            vocab[f"<|filler_{i}|>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return _wrap(tok, num_image_tokens, has_unk=False)


def build_word_tokenizer(words: list[str], num_image_tokens: int) -> PreTrainedTokenizerFast:
    """Closed-vocabulary word tokenizer (split on words and punctuation); unknown words map to `<unk>`.

    The template words (system message, caption sentence, chat roles) are always included.
    """
    vocab: dict[str, int] = {UNK: 0}
    for w in list(words) + list(TEMPLATE_WORDS):
        for piece in re.findall(r"\w+|[^\w\s]+", w):
            vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return _wrap(tok, num_image_tokens, has_unk=True)
