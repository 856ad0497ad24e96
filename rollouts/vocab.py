"""The image vocabulary added to the text LM: `<im_start>`, `<im_end>`, `<S0>`..`<S2>`, `<I0>`..`<I{K-1}>`.

BLIP3o-NEXT adds these tokens after the Qwen3 vocabulary (blip3o_arch.py::initialize_vision_tokenizer), in this
order, so the K image tokens occupy one contiguous id range. Everything in nativerl maps image token k to the id
`image_token_offset + k` by arithmetic, never by string matching: that keeps prompt encoding and sampling fast even
with K = 65,536, and lets the sampler restrict logits to one slice of the lm_head.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

IM_START = "<im_start>"
IM_END = "<im_end>"
_IMAGE_TOKEN = re.compile(r"<I\d+>")
NUM_SCALE_TOKENS = 3  # <S0> <S1> <S2>: TA-Tok pool scales 1/2/3; BLIP3o-NEXT generates with <S0> only.


def scale_token(i: int) -> str:
    return f"<S{i}>"


def image_token(k: int) -> str:
    return f"<I{k}>"


def image_vocab_tokens(num_image_tokens: int) -> list[str]:
    """The added tokens in BLIP3o-NEXT order."""
    return ([IM_START, IM_END] + [scale_token(i) for i in range(NUM_SCALE_TOKENS)]
            + [image_token(k) for k in range(num_image_tokens)])


@dataclass(frozen=True)
class ImageVocab:
    im_start_id: int
    im_end_id: int
    scale_ids: tuple[int, ...]
    image_token_offset: int  # id of <I0>
    num_image_tokens: int  # K

    @property
    def image_id_range(self) -> tuple[int, int]:
        """[start, stop) of the image-token ids."""
        return self.image_token_offset, self.image_token_offset + self.num_image_tokens

    def to_ids(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Codebook indices [.., N] in [0, K) → vocabulary ids."""
        return image_tokens + self.image_token_offset

    def to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Vocabulary ids → codebook indices; raises if any id is not an image token."""
        codes = ids - self.image_token_offset
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.num_image_tokens):
            raise ValueError("ids outside the image-token range "
                             f"[{self.image_token_offset}, {self.image_token_offset + self.num_image_tokens})")
        return codes

    @staticmethod
    def from_tokenizer(tokenizer, num_image_tokens: int | None = None) -> ImageVocab:
        """Read the ids from a tokenizer and check that `<I0>`..`<I{K-1}>` are contiguous.

        K defaults to the number of `<I k>` tokens in the tokenizer's vocabulary (not `len(tokenizer) - offset`:
        tokens added after the image vocabulary must not count); pass it when known (the checkpoint's config).
        """

        def tid(tok: str) -> int:
            i = tokenizer.convert_tokens_to_ids(tok)
            if i is None or i == tokenizer.unk_token_id:
                raise ValueError(f"tokenizer has no {tok!r} token: it lacks the image vocabulary"
                                 + (f" of {num_image_tokens} tokens" if num_image_tokens is not None else ""))
            return int(i)

        offset = tid(image_token(0))
        if num_image_tokens is None:
            num_image_tokens = sum(1 for t in tokenizer.get_vocab() if _IMAGE_TOKEN.fullmatch(t))
        last = tid(image_token(num_image_tokens - 1))
        if last != offset + num_image_tokens - 1:
            raise ValueError(f"image tokens are not contiguous: <I0>={offset}, "
                             f"<I{num_image_tokens - 1}>={last}, expected {offset + num_image_tokens - 1}")
        return ImageVocab(
            im_start_id=tid(IM_START),
            im_end_id=tid(IM_END),
            scale_ids=tuple(tid(scale_token(i)) for i in range(NUM_SCALE_TOKENS)),
            image_token_offset=offset,
            num_image_tokens=num_image_tokens,
        )
